//! A budget for log lines that clients can cause at will (failed handshakes, unknown server
//! names): a few lines per window are written, the rest are counted and the count is
//! reported with the next line that is written, so a scanner cannot flood the log.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::certs::unix_now;

/// At most `per_window` lines every `window_secs` seconds.
#[derive(Debug)]
pub struct LogBudget {
    per_window: u32,
    window_secs: u64,
    window_start: AtomicU64,
    used: AtomicU32,
    suppressed: AtomicU64,
}

impl LogBudget {
    pub const fn new(per_window: u32, window_secs: u64) -> Self {
        Self {
            per_window,
            window_secs,
            window_start: AtomicU64::new(0),
            used: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were left out since the
    /// last one written; `None` when this one must be left out (it is counted).
    pub fn take(&self) -> Option<u64> {
        let now = unix_now().max(0) as u64;
        let start = self.window_start.load(Ordering::Relaxed);
        if now >= start.saturating_add(self.window_secs)
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_window {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_few_then_counts_the_rest() {
        let budget = LogBudget::new(3, 3600);
        assert_eq!(budget.take(), Some(0));
        assert_eq!(budget.take(), Some(0));
        assert_eq!(budget.take(), Some(0));
        assert_eq!(budget.take(), None);
        assert_eq!(budget.take(), None);
        assert_eq!(budget.suppressed.load(Ordering::Relaxed), 2);
        // A new window: the next line reports what was left out.
        budget.window_start.store(0, Ordering::Relaxed);
        assert_eq!(budget.take(), Some(2));
        assert_eq!(budget.take(), Some(0));
    }
}
