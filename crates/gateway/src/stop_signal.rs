//! A one-way stop signal (shutdown, the drain deadline) that a connection watches for the
//! cost of an atomic load per poll. A `CancellationToken` takes a mutex for every check,
//! and its `cancelled()` future two per poll; a connection task is polled a few times per
//! request, for the whole life of the connection, only to learn that nothing changed.
//! Here a watching future registers its task once and afterwards only reads a flag.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct StopSignal {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    fired: AtomicBool,
    notify: Notify,
    /// The same signal for code that takes a token (tunnel listener, upgraded connections).
    token: CancellationToken,
}

impl StopSignal {
    pub fn fire(&self) {
        self.inner.fired.store(true, Ordering::Release);
        self.inner.notify.notify_waiters();
        self.inner.token.cancel();
    }

    pub fn is_fired(&self) -> bool {
        self.inner.fired.load(Ordering::Acquire)
    }

    /// A token cancelled when the signal fires.
    pub fn token(&self) -> &CancellationToken {
        &self.inner.token
    }

    /// Ready once the signal has fired (also when it fired before this was polled).
    pub fn fired(&self) -> Fired<'_> {
        Fired {
            fired: &self.inner.fired,
            // Made now: `notify_waiters` wakes every `Notified` made before it, polled or not.
            notified: self.inner.notify.notified(),
            registered: None,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Fired<'a> {
        fired: &'a AtomicBool,
        #[pin]
        notified: Notified<'a>,
        // The waker the `Notified` holds, once polled.
        registered: Option<Waker>,
    }
}

impl Future for Fired<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if let Some(waker) = this.registered
            && waker.will_wake(cx.waker())
        {
            // The same task is registered and will be woken: nothing else to do.
            return Poll::Pending;
        }
        if this.notified.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        *this.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiting_task_is_woken_once_fired() {
        let signal = StopSignal::default();
        let watcher = {
            let signal = signal.clone();
            tokio::spawn(async move {
                let mut fired = std::pin::pin!(signal.fired());
                // Polled more than once by the same task before the signal fires.
                for _ in 0..3 {
                    assert!(
                        tokio::time::timeout(Duration::from_millis(5), fired.as_mut())
                            .await
                            .is_err()
                    );
                }
                fired.await;
                signal.is_fired()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!signal.is_fired());
        signal.fire();
        let seen = tokio::time::timeout(Duration::from_secs(5), watcher).await;
        assert!(matches!(seen, Ok(Ok(true))), "{seen:?}");
        assert!(signal.token().is_cancelled());
    }

    #[tokio::test]
    async fn firing_before_the_first_poll_is_not_missed() {
        let signal = StopSignal::default();
        let fired = signal.fired();
        signal.fire();
        tokio::time::timeout(Duration::from_secs(5), fired)
            .await
            .expect("the signal fired before the future was polled");
        tokio::time::timeout(Duration::from_secs(5), signal.fired())
            .await
            .expect("a future made after the signal fired is ready at once");
    }
}
