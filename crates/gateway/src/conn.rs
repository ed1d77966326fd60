//! One client connection: the header-read deadline (408 and close), HTTP/1.1 serving with
//! upgrades, and graceful shutdown on drain.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

const AWAITING_HEAD: u8 = 0;
const IN_REQUEST: u8 = 1;
const UPGRADED: u8 = 2;

/// Where a connection is in its request/response cycle; drives the header deadline.
pub struct ConnPhase {
    opened: Instant,
    phase: AtomicU8,
    /// Milliseconds after `opened` when the connection started waiting for a request head;
    /// 0 for the first request.
    awaiting_since_ms: AtomicU64,
}

impl ConnPhase {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnPhase {
            opened: Instant::now(),
            phase: AtomicU8::new(AWAITING_HEAD),
            awaiting_since_ms: AtomicU64::new(0),
        })
    }

    /// A request head was read.
    pub fn request_started(&self) {
        self.phase.store(IN_REQUEST, Ordering::Release);
    }

    /// The response was written (or abandoned): the next head is awaited from now on.
    pub fn response_finished(&self) {
        if self.phase.load(Ordering::Acquire) == UPGRADED {
            return;
        }
        let ms = (self.opened.elapsed().as_millis() as u64).max(1);
        self.awaiting_since_ms.store(ms, Ordering::Release);
        self.phase.store(AWAITING_HEAD, Ordering::Release);
    }

    /// The connection was handed over to an upgrade (WebSocket): no more header deadline.
    pub fn upgraded(&self) {
        self.phase.store(UPGRADED, Ordering::Release);
    }
}

const TIMEOUT_BODY: &str = "{\"error\":\"request_timeout\",\"message\":\"the request head was not received in time\",\"request_id\":\"\"}\n";

fn timeout_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{TIMEOUT_BODY}",
        TIMEOUT_BODY.len()
    )
    .into_bytes()
}

pin_project_lite::pin_project! {
    /// The client socket as hyper sees it. While a request head is awaited, reading is
    /// bounded by `header_timeout`: when it passes, a 408 is written (unless an idle
    /// kept-alive connection had not started a new request) and the read side reports EOF.
    pub struct ConnIo<S> {
        #[pin]
        inner: S,
        phase: Arc<ConnPhase>,
        timeout: Duration,
        sleep: Pin<Box<Sleep>>,
        armed_for: Option<u64>,
        head_bytes: usize,
        timed_out: bool,
    }
}

impl<S> ConnIo<S> {
    pub fn new(inner: S, phase: Arc<ConnPhase>, timeout: Duration) -> Self {
        let deadline = phase.opened + timeout;
        ConnIo {
            inner,
            phase,
            timeout,
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
            armed_for: None,
            head_bytes: 0,
            timed_out: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for ConnIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if *this.timed_out {
            return Poll::Ready(Ok(()));
        }
        let awaiting = this.phase.phase.load(Ordering::Acquire) == AWAITING_HEAD;
        if awaiting {
            let since = this.phase.awaiting_since_ms.load(Ordering::Acquire);
            if *this.armed_for != Some(since) {
                let deadline = this.phase.opened + Duration::from_millis(since) + *this.timeout;
                this.sleep.as_mut().reset(deadline.into());
                *this.armed_for = Some(since);
                *this.head_bytes = 0;
            }
            if this.sleep.as_mut().poll(cx).is_ready() {
                *this.timed_out = true;
                if since == 0 || *this.head_bytes > 0 {
                    // Best effort: the socket is idle on our side, so a small write goes
                    // straight into the kernel buffer.
                    let _ = this.inner.as_mut().poll_write(cx, &timeout_response());
                    let _ = this.inner.as_mut().poll_flush(cx);
                }
                tracing::debug!("closing a connection whose request head did not arrive in time");
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if awaiting && matches!(result, Poll::Ready(Ok(()))) {
            *this.head_bytes += buf.filled().len() - before;
        }
        result
    }
}

impl<S: AsyncWrite> AsyncWrite for ConnIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Facts about the connection a request arrived on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub https: bool,
    pub phase: Arc<ConnPhase>,
}
