//! Every bound the tunnel enforces, in one value with defaults, shared by gateway and agent.

use std::time::Duration;

/// Limits and timeouts of tunnel connections.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Streams one agent connection carries at once. The agent announces it (QUIC stream
    /// credit, HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS); the gateway waits for a free slot.
    pub max_streams: u32,
    /// Bytes a stream may have in flight unread, per direction.
    pub stream_window: u32,
    /// Bytes all streams of one connection may have in flight unread, per direction.
    pub connection_window: u32,
    /// How often an idle connection is probed.
    pub keep_alive: Duration,
    /// A QUIC connection that hears nothing from its peer this long is closed.
    pub idle_timeout: Duration,
    /// A TLS+TCP connection whose peer does not answer a ping this long is closed. Longer
    /// than `idle_timeout`: a ping may queue behind megabytes in a slow link's TCP buffers,
    /// and a crashed peer's kernel resets TCP connections anyway.
    pub tcp_ping_timeout: Duration,
    /// TLS handshake plus the agent's hello and the gateway's answer.
    pub handshake_timeout: Duration,
    /// How long the agent waits for a stream header.
    pub header_timeout: Duration,
    /// How long the gateway waits for an agent to answer a stream header (it dials the
    /// upstream first, so this must exceed the agent's connect timeout).
    pub open_timeout: Duration,
    /// TCP connections of the tunnel port still in their handshake; more are closed at once.
    pub max_pending_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_streams: 1024,
            stream_window: 2 * 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(6),
            tcp_ping_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            open_timeout: Duration::from_secs(10),
            max_pending_handshakes: 256,
        }
    }
}
