//! Upgraded connections (WebSocket and other `Upgrade` protocols): bytes are spliced both
//! ways until either side closes, the route's idle timeout passes with no byte moving, or the
//! gateway's drain deadline ends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::conn::ConnHold;
use crate::metrics::Metrics;

pin_project_lite::pin_project! {
    /// Records the time of the last byte read, for the idle timeout.
    struct Activity<S> {
        #[pin]
        inner: S,
        last: Arc<AtomicU64>,
        epoch: Instant,
    }
}

impl<S: AsyncRead> AsyncRead for Activity<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last
                .store(this.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for Activity<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

async fn idle_expired(last: Arc<AtomicU64>, epoch: Instant, idle: Duration) {
    loop {
        let last_ms = last.load(Ordering::Relaxed);
        let deadline = epoch + Duration::from_millis(last_ms) + idle;
        tokio::time::sleep_until(deadline.into()).await;
        if last.load(Ordering::Relaxed) == last_ms {
            return;
        }
    }
}

/// Waits for both sides to finish their upgrade, then splices them. `hold` (the client
/// connection's slot and drain token) is kept until the splice ends.
pub fn spawn_splice(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    route: Arc<str>,
    hold: Arc<ConnHold>,
) {
    tokio::spawn(async move {
        let _hold = hold;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(%route, error = %e, "upgrade did not complete");
                return;
            }
        };
        metrics.open_websockets.inc();
        let epoch = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut a = Activity {
            inner: TokioIo::new(client),
            last: last.clone(),
            epoch,
        };
        let mut b = Activity {
            inner: TokioIo::new(upstream),
            last: last.clone(),
            epoch,
        };
        tokio::select! {
            r = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 << 10, 64 << 10) => {
                if let Err(e) = r {
                    tracing::debug!(%route, error = %e, "upgraded connection ended with an error");
                }
            }
            _ = idle_expired(last, epoch, idle) => {
                tracing::info!(%route, idle_secs = idle.as_secs(), "closing an upgraded connection that was idle for the route's idle timeout");
            }
            _ = stop.cancelled() => {
                tracing::info!(%route, "closing an upgraded connection at the end of the drain deadline");
            }
        }
        metrics.open_websockets.dec();
    });
}
