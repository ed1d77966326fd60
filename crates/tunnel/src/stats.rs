//! Gateway-side counters of the tunnel, updated with relaxed atomics on the hot path and
//! read as a [`StatsSnapshot`] (the gateway exports them as Prometheus metrics).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters; see [`StatsSnapshot`] for what each means.
#[derive(Debug, Default)]
pub(crate) struct TunnelStats {
    pub(crate) agents_connected: AtomicU64,
    pub(crate) agent_connections_total: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) streams_open: AtomicU64,
    pub(crate) streams_opened_total: AtomicU64,
    pub(crate) stream_open_failures: AtomicU64,
    pub(crate) bytes_to_agents: AtomicU64,
    pub(crate) bytes_from_agents: AtomicU64,
}

/// The tunnel's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Agent connections up now (all names).
    pub agents_connected: u64,
    /// Agent connections accepted since start (first connects and reconnects).
    pub agent_connections_total: u64,
    /// Agents refused for their token.
    pub handshakes_refused: u64,
    /// Connections on the tunnel port that failed before the hello (TLS errors, wrong ALPN,
    /// garbage, timeouts; an agent rejecting the gateway's pin shows up here).
    pub handshakes_failed: u64,
    /// Proxied streams open now.
    pub streams_open: u64,
    /// Proxied streams opened since start.
    pub streams_opened_total: u64,
    /// Attempts to open a stream on one agent that failed (each retry counts).
    pub stream_open_failures: u64,
    /// Bytes sent into the tunnel (towards upstreams).
    pub bytes_to_agents: u64,
    /// Bytes received from the tunnel (from upstreams).
    pub bytes_from_agents: u64,
}

impl TunnelStats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            agents_connected: get(&self.agents_connected),
            agent_connections_total: get(&self.agent_connections_total),
            handshakes_refused: get(&self.handshakes_refused),
            handshakes_failed: get(&self.handshakes_failed),
            streams_open: get(&self.streams_open),
            streams_opened_total: get(&self.streams_opened_total),
            stream_open_failures: get(&self.stream_open_failures),
            bytes_to_agents: get(&self.bytes_to_agents),
            bytes_from_agents: get(&self.bytes_from_agents),
        }
    }
}

pub(crate) fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn dec(a: &AtomicU64) {
    a.fetch_sub(1, Ordering::Relaxed);
}
