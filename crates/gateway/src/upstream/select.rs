//! The members of a route's upstream set, their health, and the choice of one per request
//! (`round_robin` or `least_requests`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kakuremichi_config::LoadBalance;
use kakuremichi_config::net::UpstreamUrl;
use prometheus_client::metrics::gauge::Gauge;

/// How long a member that refused a connection is skipped (passive health).
pub const PASSIVE_DOWN_FOR: Duration = Duration::from_secs(10);

/// One upstream URL of a route.
pub struct Member {
    pub url: UpstreamUrl,
    /// `scheme://authority`, the start of every request URI sent to this member.
    pub origin: Arc<str>,
    /// The URL as configured, for logs and labels.
    pub label: Arc<str>,
    in_flight: AtomicUsize,
    /// Milliseconds after the set's epoch until which the member is skipped; 0 = not down.
    down_until_ms: AtomicU64,
    active_healthy: AtomicBool,
    gauge: Gauge,
}

impl Member {
    pub fn is_actively_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }
}

/// Decrements the member's in-flight count when the request is done.
pub struct InFlight(Arc<Member>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct UpstreamSet {
    members: Vec<Arc<Member>>,
    policy: LoadBalance,
    next: AtomicUsize,
    epoch: Instant,
}

impl UpstreamSet {
    pub fn new(
        urls: &[UpstreamUrl],
        policy: LoadBalance,
        gauges: impl Fn(&UpstreamUrl) -> Gauge,
    ) -> Self {
        let members = urls
            .iter()
            .map(|u| {
                let gauge = gauges(u);
                gauge.set(1);
                Arc::new(Member {
                    origin: Arc::from(format!("{}://{}", u.scheme.as_str(), u.authority())),
                    label: Arc::from(u.original.as_str()),
                    url: u.clone(),
                    in_flight: AtomicUsize::new(0),
                    down_until_ms: AtomicU64::new(0),
                    active_healthy: AtomicBool::new(true),
                    gauge,
                })
            })
            .collect();
        UpstreamSet {
            members,
            policy,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn passively_down(&self, m: &Member, now: u64) -> bool {
        m.down_until_ms.load(Ordering::Relaxed) > now
    }

    /// A connection to `member` failed: skip it for a while. A set of one is never skipped
    /// (like nginx, there is nothing better to try).
    pub fn mark_failed(&self, index: usize) {
        if self.members.len() < 2 {
            return;
        }
        if let Some(m) = self.members.get(index) {
            let until = self.now_ms() + PASSIVE_DOWN_FOR.as_millis() as u64;
            m.down_until_ms.store(until, Ordering::Relaxed);
            tracing::warn!(upstream = %m.label, "upstream failed; skipping it for {}s", PASSIVE_DOWN_FOR.as_secs());
            self.update_gauge(m);
        }
    }

    /// Result of an active health check.
    pub fn set_active_health(&self, index: usize, healthy: bool) {
        if let Some(m) = self.members.get(index) {
            let was = m.active_healthy.swap(healthy, Ordering::Relaxed);
            if was != healthy {
                if healthy {
                    tracing::info!(upstream = %m.label, "upstream passed its health check again");
                } else {
                    tracing::warn!(upstream = %m.label, "upstream failed its health check; taking it out");
                }
            }
            self.update_gauge(m);
        }
    }

    fn update_gauge(&self, m: &Member) {
        let up = m.is_actively_healthy() && !self.passively_down(m, self.now_ms());
        m.gauge.set(i64::from(up));
    }

    /// Picks a member that is not in `tried`. Members failing their active check are never
    /// picked; members down after a failure are picked only when nothing else is left.
    pub fn pick(&self, tried: &[usize]) -> Option<(usize, Arc<Member>, InFlight)> {
        // The clock is read only when some member was ever marked down.
        let ever_down = self
            .members
            .iter()
            .any(|m| m.down_until_ms.load(Ordering::Relaxed) != 0);
        let now = if ever_down { self.now_ms() } else { 0 };
        let candidates = |allow_down: bool| {
            self.members.iter().enumerate().filter(move |(i, m)| {
                !tried.contains(i)
                    && m.is_actively_healthy()
                    && (allow_down || !self.passively_down(m, now))
            })
        };
        let choose = |allow_down: bool| -> Option<usize> {
            let count = candidates(allow_down).count();
            if count == 0 {
                return None;
            }
            match self.policy {
                LoadBalance::RoundRobin => {
                    let n = self.next.fetch_add(1, Ordering::Relaxed) % count;
                    candidates(allow_down).nth(n).map(|(i, _)| i)
                }
                LoadBalance::LeastRequests => {
                    let start = self.next.fetch_add(1, Ordering::Relaxed) % count;
                    candidates(allow_down)
                        .cycle()
                        .skip(start)
                        .take(count)
                        .min_by_key(|(_, m)| m.in_flight.load(Ordering::Relaxed))
                        .map(|(i, _)| i)
                }
            }
        };
        let index = choose(false).or_else(|| choose(true))?;
        let member = self.members[index].clone();
        member.in_flight.fetch_add(1, Ordering::Relaxed);
        Some((index, member.clone(), InFlight(member)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakuremichi_config::net::parse_upstream_url;

    fn set(policy: LoadBalance, n: usize) -> UpstreamSet {
        let urls: Vec<_> = (0..n)
            .map(|i| parse_upstream_url(&format!("http://127.0.0.1:{}", 9000 + i)).unwrap())
            .collect();
        UpstreamSet::new(&urls, policy, |_| Gauge::default())
    }

    #[test]
    fn round_robin_spreads() {
        let s = set(LoadBalance::RoundRobin, 3);
        let picks: Vec<usize> = (0..6).map(|_| s.pick(&[]).unwrap().0).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_requests_prefers_idle_members() {
        let s = set(LoadBalance::LeastRequests, 2);
        let (first, _, _held) = s.pick(&[]).unwrap();
        for _ in 0..4 {
            let (i, _, _) = s.pick(&[]).unwrap();
            assert_ne!(i, first, "the busy member must not be chosen");
        }
    }

    #[test]
    fn failed_members_are_skipped_until_nothing_else_is_left() {
        let s = set(LoadBalance::RoundRobin, 2);
        s.mark_failed(0);
        for _ in 0..4 {
            assert_eq!(s.pick(&[]).unwrap().0, 1);
        }
        // Only the failed one remains untried: it is tried rather than giving up.
        assert_eq!(s.pick(&[1]).unwrap().0, 0);
    }

    #[test]
    fn unhealthy_members_are_never_picked() {
        let s = set(LoadBalance::RoundRobin, 2);
        s.set_active_health(0, false);
        s.set_active_health(1, false);
        assert!(s.pick(&[]).is_none());
        s.set_active_health(1, true);
        assert_eq!(s.pick(&[]).unwrap().0, 1);
    }

    #[test]
    fn a_single_member_is_never_marked_down() {
        let s = set(LoadBalance::RoundRobin, 1);
        s.mark_failed(0);
        assert_eq!(s.pick(&[]).unwrap().0, 0);
    }
}
