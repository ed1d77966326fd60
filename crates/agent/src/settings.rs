//! What an agent needs to run, as plain values (the binary maps `agent.toml` onto them):
//! who it is, which gateways to dial and how to check them, which upstreams it may reach,
//! the transport, and its timeouts.

use std::fmt;
use std::time::Duration;

use kakuremichi_tunnel::{GatewayVerification, Limits};

use crate::allow::AllowList;
use crate::backoff::BackoffPolicy;

/// The agent's token. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentToken(String);

impl AgentToken {
    pub fn new(token: impl Into<String>) -> AgentToken {
        AgentToken(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentToken(***)")
    }
}

/// `transport` in `agent.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// QUIC, falling back to TLS over TCP when the QUIC handshake does not complete in
    /// [`AgentSettings::quic_fallback_after`].
    #[default]
    Auto,
    Quic,
    Tcp,
}

/// Everything [`run`](crate::run) needs.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The agent's name: its group on the gateways.
    pub name: String,
    pub token: AgentToken,
    /// `host:port` of every gateway; the agent keeps a connection to each.
    pub gateways: Vec<String>,
    pub verification: GatewayVerification,
    /// Upstreams the agent may dial; empty: any.
    pub allow: AllowList,
    pub transport: TransportMode,
    /// Deadline for connecting to an upstream.
    pub connect_timeout: Duration,
    /// `auto`: how long QUIC may take to connect before TCP is tried.
    pub quic_fallback_after: Duration,
    pub backoff: BackoffPolicy,
    pub limits: Limits,
}

impl AgentSettings {
    /// Settings with defaults for everything but identity, gateways and verification.
    pub fn new(
        name: impl Into<String>,
        token: AgentToken,
        gateways: Vec<String>,
        verification: GatewayVerification,
    ) -> AgentSettings {
        AgentSettings {
            name: name.into(),
            token,
            gateways,
            verification,
            allow: AllowList::default(),
            transport: TransportMode::Auto,
            connect_timeout: Duration::from_secs(5),
            quic_fallback_after: Duration::from_millis(1500),
            backoff: BackoffPolicy::default(),
            limits: Limits::default(),
        }
    }
}
