//! The agent's counters: relaxed atomics behind a cheap handle, read as a snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) gateways_connected: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) streams_open: AtomicU64,
    pub(crate) streams_total: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
    pub(crate) bytes_to_upstreams: AtomicU64,
    pub(crate) bytes_from_upstreams: AtomicU64,
}

/// A handle on a running agent's counters.
#[derive(Debug, Clone, Default)]
pub struct AgentStats(pub(crate) Arc<Counters>);

/// The agent's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentStatsSnapshot {
    /// Gateways with a connection up now.
    pub gateways_connected: u64,
    /// Connections established since start.
    pub connections_total: u64,
    /// Connections established again after an earlier one to the same gateway ended.
    pub reconnects: u64,
    /// Connection attempts that failed (unreachable, timeouts, protocol errors).
    pub connect_failures: u64,
    /// Attempts refused for the token, or gateways whose certificate did not verify.
    pub auth_failures: u64,
    /// Streams being spliced now.
    pub streams_open: u64,
    /// Streams the gateways opened since start.
    pub streams_total: u64,
    /// Streams refused: bad header, upstream not allowed or not reachable.
    pub streams_refused: u64,
    /// Bytes written to upstreams (counted when a stream ends).
    pub bytes_to_upstreams: u64,
    /// Bytes read from upstreams (counted when a stream ends).
    pub bytes_from_upstreams: u64,
}

impl AgentStats {
    pub fn snapshot(&self) -> AgentStatsSnapshot {
        let c = &self.0;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AgentStatsSnapshot {
            gateways_connected: get(&c.gateways_connected),
            connections_total: get(&c.connections_total),
            reconnects: get(&c.reconnects),
            connect_failures: get(&c.connect_failures),
            auth_failures: get(&c.auth_failures),
            streams_open: get(&c.streams_open),
            streams_total: get(&c.streams_total),
            streams_refused: get(&c.streams_refused),
            bytes_to_upstreams: get(&c.bytes_to_upstreams),
            bytes_from_upstreams: get(&c.bytes_from_upstreams),
        }
    }
}

pub(crate) fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Counts one while alive (a gauge held by a scope).
pub(crate) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub(crate) fn hold(a: &'a AtomicU64) -> Gauge<'a> {
        inc(a);
        Gauge(a)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
