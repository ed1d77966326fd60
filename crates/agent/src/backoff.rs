//! Reconnect delays: exponential, capped, with ±jitter so that agents cut off together do
//! not come back together. Refusals (wrong token, wrong pin) back off to a longer cap.

use std::time::Duration;

/// How reconnect delays grow.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffPolicy {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay while the gateway is unreachable.
    pub max: Duration,
    /// The largest delay after the gateway refused the agent or the agent refused the
    /// gateway's certificate (a configuration problem: no point in hurrying).
    pub max_after_refusal: Duration,
    /// Each delay is multiplied by a random factor in `1 ± jitter`.
    pub jitter: f64,
    /// A connection that stayed up this long resets the delay to `initial`.
    pub healthy_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_after_refusal: Duration::from_secs(30),
            jitter: 0.2,
            healthy_after: Duration::from_secs(3),
        }
    }
}

/// The delay state of one gateway connection.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(policy: BackoffPolicy) -> Backoff {
        Backoff { policy, attempt: 0 }
    }

    /// The next delay; `refused` selects the longer cap.
    pub(crate) fn next(&mut self, refused: bool) -> Duration {
        self.next_with(refused, random_unit())
    }

    fn next_with(&mut self, refused: bool, unit: f64) -> Duration {
        let cap = if refused {
            self.policy.max_after_refusal
        } else {
            self.policy.max
        };
        let factor = 2f64.powi(self.attempt.min(30) as i32);
        self.attempt = self.attempt.saturating_add(1);
        let base = self.policy.initial.as_secs_f64() * factor;
        let base = base.min(cap.as_secs_f64());
        let jitter = self.policy.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(base * (1.0 + jitter * (2.0 * unit - 1.0)))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random number in [0, 1).
fn random_unit() -> f64 {
    match getrandom::u64() {
        Ok(x) => (x >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_then_resets() {
        let mut b = Backoff::new(BackoffPolicy::default());
        let delays: Vec<u128> = (0..8)
            .map(|_| b.next_with(false, 0.5).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next_with(false, 0.5), Duration::from_millis(100));
        for _ in 0..20 {
            b.next_with(true, 0.5);
        }
        assert_eq!(b.next_with(true, 0.5), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut b = Backoff::new(BackoffPolicy::default());
        assert_eq!(b.next_with(false, 0.0), Duration::from_millis(80));
        assert_eq!(b.next_with(false, 1.0), Duration::from_millis(240));
        for _ in 0..10 {
            b.next_with(false, 0.5);
        }
        for _ in 0..100 {
            let d = b.next(false);
            assert!(d >= Duration::from_millis(1600) && d <= Duration::from_millis(2400));
        }
    }
}
