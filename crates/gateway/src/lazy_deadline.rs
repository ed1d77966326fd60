//! A deadline kept by one timer that is moved only when it must. Setting a tokio timer is
//! a lock and a timer-wheel insert, and cancelling it another; a kept-alive connection that
//! sets a fresh deadline per request would pay both per request. Here a later deadline
//! costs nothing when it is set: the timer stays where it is, and when it fires before the
//! deadline it is moved on to it. Only an earlier deadline moves the timer at once.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// The deadline passed before the work was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed;

pub struct LazyDeadline {
    timer: Pin<Box<Sleep>>,
    /// Where the timer is set (at or before `due`).
    armed: Instant,
    due: Instant,
}

impl LazyDeadline {
    pub fn new(due: Instant) -> Self {
        LazyDeadline {
            timer: Box::pin(tokio::time::sleep_until(due)),
            armed: due,
            due,
        }
    }

    /// Makes `due` the deadline.
    pub fn set(&mut self, due: Instant) {
        if due < self.armed {
            self.timer.as_mut().reset(due);
            self.armed = due;
        }
        self.due = due;
    }

    /// Ready once the deadline has passed; otherwise the task is woken when it may have.
    pub fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<Passed> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.armed >= self.due {
                return Poll::Ready(Passed);
            }
            self.armed = self.due;
            self.timer.as_mut().reset(self.due);
        }
        Poll::Pending
    }

    /// Runs `work` until it finishes or the deadline passes.
    pub async fn bound<F: Future>(&mut self, work: F) -> Result<F::Output, Passed> {
        let mut work = pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(done));
            }
            self.poll_passed(cx).map(Err)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_is_kept_although_the_timer_fires_early() {
        let start = Instant::now();
        let mut deadline = LazyDeadline::new(start + Duration::from_secs(1));
        deadline.set(start + Duration::from_secs(3));
        let waited = deadline.bound(std::future::pending::<()>()).await;
        assert_eq!(waited, Err(Passed));
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_moves_the_timer_at_once() {
        let start = Instant::now();
        let mut deadline = LazyDeadline::new(start + Duration::from_secs(5));
        deadline.set(start + Duration::from_secs(2));
        assert_eq!(
            deadline.bound(std::future::pending::<()>()).await,
            Err(Passed)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn work_done_in_time_is_returned_and_the_deadline_is_reusable() {
        let start = Instant::now();
        let mut deadline = LazyDeadline::new(start + Duration::from_secs(2));
        let quick = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(
            deadline
                .bound(async {
                    quick.await;
                    7
                })
                .await,
            Ok(7)
        );
        // A second use, after the first timer fired unobserved.
        tokio::time::sleep(Duration::from_secs(5)).await;
        deadline.set(Instant::now() + Duration::from_secs(4));
        let slow = tokio::time::sleep(Duration::from_secs(3));
        assert_eq!(deadline.bound(slow).await, Ok(()));
        assert_eq!(
            deadline.bound(std::future::pending::<()>()).await,
            Err(Passed)
        );
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }
}
