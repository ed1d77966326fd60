//! One client connection: the header-read deadline (408 and close), the gateway's own
//! answer in place of the HTTP parser's bare one for an unreadable head, and what an open
//! connection holds until it closes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::StatusCode;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::head_reject::{self, HeadRejects};

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
    /// Counts the responses finished: a new request head is awaited after each.
    generation: AtomicU64,
    /// The head just read had both Content-Length and Transfer-Encoding. hyper keeps only
    /// one of the two, so the handler learns it from here.
    framing_conflict: AtomicBool,
}

impl ConnPhase {
    pub fn new() -> Arc<Self> {
        Arc::new(ConnPhase {
            opened: Instant::now(),
            phase: AtomicU8::new(AWAITING_HEAD),
            awaiting_since_ms: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            framing_conflict: AtomicBool::new(false),
        })
    }

    /// Whether the request head just read was framed both by Content-Length and by
    /// Transfer-Encoding (a request smuggling attempt); clears the flag.
    pub fn take_framing_conflict(&self) -> bool {
        self.framing_conflict.swap(false, Ordering::AcqRel)
    }

    /// A request head was read.
    pub fn request_started(&self) {
        self.phase.store(IN_REQUEST, Ordering::Release);
    }

    /// The response was written (or abandoned) at `now`: the next head is awaited from then.
    pub fn response_finished(&self, now: Instant) {
        if self.phase.load(Ordering::Acquire) == UPGRADED {
            return;
        }
        let ms = (now.saturating_duration_since(self.opened).as_millis() as u64).max(1);
        self.awaiting_since_ms.store(ms, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.phase.store(AWAITING_HEAD, Ordering::Release);
    }

    /// When the request head now awaited must have arrived: `timeout` after the connection
    /// opened or the last response finished.
    pub fn head_deadline(&self, timeout: Duration) -> Instant {
        let since = self.awaiting_since_ms.load(Ordering::Acquire);
        self.opened + Duration::from_millis(since) + timeout
    }

    /// The connection was handed over to an upgrade (WebSocket): no more header deadline.
    pub fn upgraded(&self) {
        self.phase.store(UPGRADED, Ordering::Release);
    }
}

/// How much of the request line is kept for the access line of a rejected head.
const REQUEST_LINE_KEPT: usize = 256;

/// Watches the bytes of a request head as they are read, for the one thing hyper does not
/// pass on: a head with both `Content-Length` and `Transfer-Encoding` (hyper drops one of
/// them and goes on). Keeps the start of the request line, for the access line of a head
/// that is rejected, and counts the head's bytes for `max_header_size`. Stops at the blank
/// line that ends the head.
struct HeadScan {
    done: bool,
    request_line: [u8; REQUEST_LINE_KEPT],
    request_line_len: usize,
    /// Non-empty lines so far (the request line is the first).
    lines: u32,
    line_len: usize,
    in_name: bool,
    name: [u8; 17],
    name_len: usize,
    content_length: bool,
    transfer_encoding: bool,
    /// Bytes of the head seen so far (all of it once `done`).
    len: usize,
}

impl Default for HeadScan {
    fn default() -> Self {
        HeadScan {
            done: false,
            request_line: [0; REQUEST_LINE_KEPT],
            request_line_len: 0,
            lines: 0,
            line_len: 0,
            in_name: false,
            name: [0; 17],
            name_len: 0,
            content_length: false,
            transfer_encoding: false,
            len: 0,
        }
    }
}

impl HeadScan {
    fn request_line(&self) -> &[u8] {
        &self.request_line[..self.request_line_len]
    }

    /// Feeds bytes; true once the head ended with both framing headers in it.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.done {
                return false;
            }
            self.len += 1;
            match b {
                b'\n' => {
                    if self.line_len > 0 {
                        self.lines += 1;
                    } else if self.lines > 0 {
                        self.done = true;
                        return self.content_length && self.transfer_encoding;
                    }
                    self.line_len = 0;
                    self.name_len = 0;
                    self.in_name = false;
                }
                b'\r' => {}
                _ => {
                    if self.line_len == 0 {
                        self.in_name = self.lines > 0;
                    }
                    self.line_len += 1;
                    if self.lines == 0 && self.request_line_len < REQUEST_LINE_KEPT {
                        self.request_line[self.request_line_len] = b;
                        self.request_line_len += 1;
                    }
                    if !self.in_name {
                        continue;
                    }
                    if b == b':' {
                        self.in_name = false;
                        let name = &self.name[..self.name_len];
                        self.content_length |= name.eq_ignore_ascii_case(b"content-length");
                        self.transfer_encoding |= name.eq_ignore_ascii_case(b"transfer-encoding");
                    } else if self.name_len < self.name.len() {
                        self.name[self.name_len] = b;
                        self.name_len += 1;
                    } else {
                        // Longer than any name looked for.
                        self.in_name = false;
                    }
                }
            }
        }
        false
    }
}

pin_project_lite::pin_project! {
    /// The client socket as hyper sees it. While a request head is awaited, reading is
    /// bounded by `header_timeout`: when it passes, a 408 is written (unless an idle
    /// kept-alive connection had not started a new request) and the read side reports EOF;
    /// a head still unfinished past `max_header_size` bytes gets a 431 the same way.
    /// When hyper answers a head it cannot parse (400, 414, 431), the gateway's own answer
    /// is written instead of hyper's.
    pub struct ConnIo<S> {
        #[pin]
        inner: S,
        phase: Arc<ConnPhase>,
        timeout: Duration,
        // `max_header_size`: hyper's own limit cannot go below 8 KiB.
        max_head: u64,
        sleep: Pin<Box<Sleep>>,
        armed_for: Option<u64>,
        head_bytes: usize,
        scan: HeadScan,
        ended: bool,
        rejects: HeadRejects,
        // hyper's answer was replaced: what it writes after it goes nowhere.
        replaced: bool,
    }
}

impl<S> ConnIo<S> {
    pub fn new(
        inner: S,
        phase: Arc<ConnPhase>,
        timeout: Duration,
        max_head: u64,
        rejects: HeadRejects,
    ) -> Self {
        let deadline = phase.opened + timeout;
        ConnIo {
            inner,
            phase,
            timeout,
            max_head,
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
            armed_for: None,
            head_bytes: 0,
            scan: HeadScan::default(),
            ended: false,
            rejects,
            replaced: false,
        }
    }
}

impl<S: AsyncWrite> ConnIo<S> {
    /// When `first` starts hyper's own answer to a head it could not parse, writes the
    /// gateway's answer instead (best effort, like the 408) and returns true.
    fn replace_parser_answer(self: Pin<&mut Self>, cx: &mut Context<'_>, first: &[u8]) -> bool {
        let this = self.project();
        if *this.replaced {
            return true;
        }
        let phase = &this.phase;
        let head_pending = *this.head_bytes > 0
            && phase.phase.load(Ordering::Acquire) == AWAITING_HEAD
            && *this.armed_for == Some(phase.generation.load(Ordering::Acquire));
        if !head_pending {
            return false;
        }
        let Some(status) = head_reject::parser_answer(first, &this.rejects.request_id_header)
        else {
            return false;
        };
        *this.replaced = true;
        let answer = this
            .rejects
            .answer(status, this.scan.request_line(), *this.head_bytes as u64);
        let mut inner = this.inner;
        let _ = inner.as_mut().poll_write(cx, &answer);
        let _ = inner.as_mut().poll_flush(cx);
        true
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for ConnIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(Ok(()));
        }
        let awaiting = this.phase.phase.load(Ordering::Acquire) == AWAITING_HEAD;
        if awaiting {
            let generation = this.phase.generation.load(Ordering::Acquire);
            let since = this.phase.awaiting_since_ms.load(Ordering::Acquire);
            if *this.armed_for != Some(generation) {
                let deadline = this.phase.head_deadline(*this.timeout);
                this.sleep.as_mut().reset(deadline.into());
                *this.armed_for = Some(generation);
                *this.head_bytes = 0;
                *this.scan = HeadScan::default();
            }
            if this.sleep.as_mut().poll(cx).is_ready() {
                *this.ended = true;
                if since == 0 || *this.head_bytes > 0 {
                    let answer = this.rejects.answer(
                        StatusCode::REQUEST_TIMEOUT,
                        this.scan.request_line(),
                        *this.head_bytes as u64,
                    );
                    // Best effort: the socket is idle on our side, so a small write goes
                    // straight into the kernel buffer.
                    let _ = this.inner.as_mut().poll_write(cx, &answer);
                    let _ = this.inner.as_mut().poll_flush(cx);
                }
                tracing::debug!("closing a connection whose request head did not arrive in time");
                return Poll::Ready(Ok(()));
            }
        }
        let before = buf.filled().len();
        let result = this.inner.as_mut().poll_read(cx, buf);
        if awaiting && matches!(result, Poll::Ready(Ok(()))) {
            *this.head_bytes += buf.filled().len() - before;
            if this.scan.feed(&buf.filled()[before..]) {
                this.phase.framing_conflict.store(true, Ordering::Release);
            }
            if this.scan.len as u64 > *this.max_head {
                // A head over the limit, whole or not: 431, and hyper reads the end of the
                // stream (anything it writes after goes nowhere).
                let answer = this.rejects.answer(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    this.scan.request_line(),
                    *this.head_bytes as u64,
                );
                let _ = this.inner.as_mut().poll_write(cx, &answer);
                let _ = this.inner.as_mut().poll_flush(cx);
                *this.ended = true;
                *this.replaced = true;
                buf.set_filled(before);
                tracing::debug!("closing a connection whose request head is over max_header_size");
                return Poll::Ready(Ok(()));
            }
        }
        result
    }
}

impl<S: AsyncWrite> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.as_mut().replace_parser_answer(cx, buf) {
            return Poll::Ready(Ok(buf.len()));
        }
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        if self.as_mut().replace_parser_answer(cx, first) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
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

/// What an open client connection holds until it is closed: its slot under
/// `max_connections`, its place in the drain, and its count in `open_connections`. An
/// upgraded connection (WebSocket) keeps holding them after hyper hands it over.
pub struct ConnHold {
    _slot: OwnedSemaphorePermit,
    _drain: TaskTrackerToken,
    open: Gauge,
}

impl ConnHold {
    pub fn new(slot: OwnedSemaphorePermit, drain: TaskTrackerToken, open: Gauge) -> Arc<Self> {
        open.inc();
        Arc::new(ConnHold {
            _slot: slot,
            _drain: drain,
            open,
        })
    }
}

impl Drop for ConnHold {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Facts about the connection a request arrived on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as the forwarding headers carry it, made once.
    pub peer_text: http::HeaderValue,
    /// The local port as `X-Forwarded-Port` carries it, made once.
    pub port_text: http::HeaderValue,
    pub https: bool,
    pub phase: Arc<ConnPhase>,
    pub hold: Arc<ConnHold>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        local: SocketAddr,
        https: bool,
        phase: Arc<ConnPhase>,
        hold: Arc<ConnHold>,
    ) -> Self {
        ConnInfo {
            peer,
            peer_text: crate::forward::ip_text(peer.ip()),
            port_text: local.port().into(),
            https,
            phase,
            hold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScan;

    fn conflict(head: &[u8], step: usize) -> bool {
        let mut scan = HeadScan::default();
        head.chunks(step).any(|c| scan.feed(c))
    }

    #[test]
    fn both_framing_headers_are_seen_in_any_order_and_split() {
        for step in [1, 3, 1000] {
            assert!(conflict(
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                step
            ));
            assert!(conflict(
                b"\r\nPOST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nHost: a\r\nCONTENT-LENGTH: 5\r\n\r\n",
                step
            ));
            assert!(!conflict(
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nTransfer-Encoding: x\r\n\r\n",
                step
            ));
            assert!(!conflict(
                b"POST / HTTP/1.1\r\nX-Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                step
            ));
            assert!(!conflict(
                b"POST /Content-Length: HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                step
            ));
        }
    }
}
