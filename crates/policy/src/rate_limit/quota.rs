//! Quotas of API key plans: `quota` requests per `quota_per`, counted in fixed windows
//! that start at the Unix epoch, so windows of a day (or any divisor of a day) begin at UTC
//! midnight; longer periods (`"7d"`, `"30d"`) are multiples of days counted from
//! 1970-01-01. Counters live in memory, or in the route's Redis store when it has one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A validated quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Quota {
    pub limit: u64,
    /// Window length in whole seconds (at least 1).
    pub period_secs: u64,
}

impl Quota {
    pub fn new(limit: u64, period: Duration) -> Result<Quota, String> {
        if limit == 0 {
            return Err("quota must be at least 1".into());
        }
        if period.as_secs() == 0 || period.subsec_nanos() != 0 {
            return Err("quota_per must be a whole number of seconds, like \"1d\"".into());
        }
        Ok(Quota {
            limit,
            period_secs: period.as_secs(),
        })
    }

    /// The window `now` (Unix seconds) falls in: its start, and the time left until its end.
    pub fn window(&self, now: Duration) -> (u64, Duration) {
        let secs = now.as_secs();
        let start = secs - secs % self.period_secs;
        let end = Duration::from_secs(start + self.period_secs);
        (start, end.saturating_sub(now))
    }
}

/// Time since the Unix epoch on this host's clock.
pub(crate) fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// What a quota check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaVerdict {
    pub allowed: bool,
    pub remaining: u64,
    /// Time until the window resets.
    pub reset: Duration,
}

/// In-memory counters: `key hash → (window start, used)`. Their number is bounded by the
/// API keys of the loaded keys files; windows that ended are swept as the map grows.
#[derive(Default)]
pub(crate) struct MemoryQuotas {
    map: Mutex<HashMap<u64, Counter>>,
}

struct Counter {
    window_start: u64,
    window_end: u64,
    used: u64,
}

impl MemoryQuotas {
    pub fn check(&self, key: u64, quota: &Quota, now: Duration) -> QuotaVerdict {
        let (start, reset) = quota.window(now);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= 4096 && !map.contains_key(&key) {
            let secs = now.as_secs();
            map.retain(|_, c| c.window_end > secs);
        }
        let counter = map.entry(key).or_insert(Counter {
            window_start: start,
            window_end: start + quota.period_secs,
            used: 0,
        });
        if counter.window_start != start {
            *counter = Counter {
                window_start: start,
                window_end: start + quota.period_secs,
                used: 0,
            };
        }
        if counter.used >= quota.limit {
            return QuotaVerdict {
                allowed: false,
                remaining: 0,
                reset,
            };
        }
        counter.used += 1;
        QuotaVerdict {
            allowed: true,
            remaining: quota.limit - counter.used,
            reset,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn daily_windows_start_at_utc_midnight() {
        let q = Quota::new(2, Duration::from_secs(DAY)).unwrap();
        // 2024-01-02T23:00:00Z
        let now = Duration::from_secs(19_724 * DAY + 23 * 3600);
        let (start, left) = q.window(now);
        assert_eq!(start, 19_724 * DAY);
        assert_eq!(left, Duration::from_secs(3600));
    }

    #[test]
    fn counts_and_resets() {
        let q = Quota::new(2, Duration::from_secs(DAY)).unwrap();
        let m = MemoryQuotas::default();
        let t = Duration::from_secs(10 * DAY + 5);
        assert_eq!(m.check(1, &q, t).remaining, 1);
        assert_eq!(m.check(1, &q, t).remaining, 0);
        let denied = m.check(1, &q, t);
        assert!(!denied.allowed);
        assert_eq!(denied.reset, Duration::from_secs(DAY - 5));
        assert!(m.check(2, &q, t).allowed, "other keys count apart");
        assert!(m.check(1, &q, t + Duration::from_secs(DAY)).allowed);
    }

    #[test]
    fn ended_windows_are_swept() {
        let q = Quota::new(1, Duration::from_secs(60)).unwrap();
        let m = MemoryQuotas::default();
        for k in 0..5000 {
            m.check(k, &q, Duration::from_secs(0));
        }
        m.check(99_999, &q, Duration::from_secs(120));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn validation() {
        assert!(Quota::new(0, Duration::from_secs(1)).is_err());
        assert!(Quota::new(1, Duration::from_millis(1500)).is_err());
    }
}
