//! The Generic Cell Rate Algorithm, as pure arithmetic: one number per key (the
//! theoretical arrival time, TAT) decides each request. `requests` per `per` is the steady
//! rate; `burst` requests may arrive at once. The same step runs in memory (nanoseconds)
//! and in Redis (`gcra.lua`, microseconds).

use std::time::Duration;

use http::HeaderValue;

use crate::decision::ceil_secs;

/// A validated rate: `requests` per `per`, at most `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rate {
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
    /// Time one request "costs": `per / requests`, at least 1 ns.
    pub interval_ns: u64,
    /// `RateLimit-Policy`, made once (it goes on every response of the route).
    policy: HeaderValue,
}

impl Rate {
    pub fn new(requests: u64, per: Duration, burst: Option<u64>) -> Result<Rate, String> {
        if requests == 0 {
            return Err("requests must be at least 1".into());
        }
        if per.is_zero() {
            return Err("per must be longer than zero".into());
        }
        let burst = burst.unwrap_or(requests);
        if burst == 0 {
            return Err("burst must be at least 1".into());
        }
        let interval_ns = u64::try_from(per.as_nanos() / u128::from(requests))
            .unwrap_or(u64::MAX)
            .max(1);
        let policy = format!("{requests};w={}", ceil_secs(per).max(1));
        Ok(Rate {
            requests,
            per,
            burst,
            interval_ns,
            policy: HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| HeaderValue::from_static("0")),
        })
    }

    /// How far ahead of now the TAT may be after an allowed request.
    pub fn window_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(self.burst)
    }

    /// `RateLimit-Policy`: `requests;w=seconds` (IETF draft syntax).
    pub fn policy_header(&self) -> HeaderValue {
        self.policy.clone()
    }
}

/// What one GCRA step decided, in the units of the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub allowed: bool,
    /// `RateLimit-Limit`: the burst, i.e. what a fresh client may send at once.
    pub limit: u64,
    /// `RateLimit-Remaining`: requests that may still come at once.
    pub remaining: u64,
    /// `RateLimit-Reset`: time until the allowance is whole again.
    pub reset: Duration,
    /// When refused: time until one more request is allowed (`Retry-After`).
    pub retry_after: Duration,
}

impl Verdict {
    /// Builds a verdict from a step's results: `ahead` is TAT − now after the decision,
    /// `wait` the time until a retry would pass (0 when allowed). Shared by both backends.
    pub fn from_step(allowed: bool, ahead_ns: u64, wait_ns: u64, rate: &Rate) -> Verdict {
        let remaining = if allowed {
            rate.window_ns().saturating_sub(ahead_ns) / rate.interval_ns
        } else {
            0
        };
        Verdict {
            allowed,
            limit: rate.burst,
            remaining,
            reset: Duration::from_nanos(ahead_ns),
            retry_after: Duration::from_nanos(wait_ns),
        }
    }
}

/// One step: `tat` is the stored TAT (`None` for a key never seen or forgotten), `now` the
/// clock. Returns the verdict and, when allowed, the TAT to store.
pub(crate) fn step(tat: Option<u64>, now: u64, rate: &Rate) -> (Verdict, Option<u64>) {
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(rate.interval_ns);
    let ahead = new_tat - now;
    if ahead > rate.window_ns() {
        let wait = ahead - rate.window_ns();
        (Verdict::from_step(false, tat - now, wait, rate), None)
    } else {
        (Verdict::from_step(true, ahead, 0, rate), Some(new_tat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_steady_rate() {
        // 10 per second, burst 3.
        let rate = Rate::new(10, Duration::from_secs(1), Some(3)).unwrap();
        let mut tat = None;
        let now = 100 * SEC;
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (v, t) = step(tat, now, &rate);
            assert!(v.allowed);
            remaining.push(v.remaining);
            tat = t;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (v, t) = step(tat, now, &rate);
        assert!(!v.allowed && t.is_none());
        assert_eq!(v.retry_after, Duration::from_millis(100));
        assert_eq!(v.reset, Duration::from_millis(300));
        // 100 ms later one more fits.
        let (v, _) = step(tat, now + SEC / 10, &rate);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        // After a long pause the whole burst is back.
        let (v, _) = step(tat, now + 10 * SEC, &rate);
        assert_eq!(v.remaining, 2);
    }

    #[test]
    fn validation_and_headers() {
        assert!(Rate::new(0, Duration::from_secs(1), None).is_err());
        assert!(Rate::new(1, Duration::ZERO, None).is_err());
        assert!(Rate::new(1, Duration::from_secs(1), Some(0)).is_err());
        let r = Rate::new(100, Duration::from_secs(60), None).unwrap();
        assert_eq!(r.burst, 100);
        assert_eq!(r.interval_ns, 600_000_000);
        assert_eq!(r.policy_header(), "100;w=60");
    }
}
