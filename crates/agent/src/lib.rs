//! The agent role of kakuremichi: dials out to every gateway it is told of (QUIC, or TLS
//! over TCP), keeps those connections up, and splices each stream a gateway opens to an
//! upstream in its own network, within its allow list. It listens on nothing.
//!
//! Entry point: [`run`] (or [`Agent::new`], [`Agent::stats`], [`Agent::run`]).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod allow;
mod backoff;
mod dial;
mod link;
mod serve;
mod settings;
mod stats;

use std::sync::Arc;

use kakuremichi_tunnel::proto::{Hello, ProtoError};
use kakuremichi_tunnel::{Connector, TlsSetupError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use allow::{AllowError, AllowList};
pub use backoff::BackoffPolicy;
pub use kakuremichi_tunnel::{GatewayVerification, Limits, SpkiPin};
pub use settings::{AgentSettings, AgentToken, TransportMode};
pub use stats::{AgentStats, AgentStatsSnapshot};

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent has no gateway to connect to")]
    NoGateways,
    #[error("invalid agent name or token: {0}")]
    Identity(#[source] ProtoError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// What every gateway connection of the agent shares.
pub(crate) struct Shared {
    pub(crate) settings: AgentSettings,
    pub(crate) connector: Connector,
    pub(crate) hello: Hello,
    pub(crate) stats: AgentStats,
}

/// A configured agent, ready to run.
pub struct Agent {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("settings", &self.shared.settings)
            .finish()
    }
}

impl Agent {
    /// Checks the settings and builds the TLS configuration (reads `gateway_ca`).
    pub fn new(settings: AgentSettings) -> Result<Agent, AgentError> {
        if settings.gateways.is_empty() {
            return Err(AgentError::NoGateways);
        }
        let hello =
            Hello::new(&settings.name, settings.token.expose()).map_err(AgentError::Identity)?;
        let connector = Connector::new(&settings.verification, settings.limits.clone())?;
        Ok(Agent {
            shared: Arc::new(Shared {
                settings,
                connector,
                hello,
                stats: AgentStats::default(),
            }),
        })
    }

    /// The agent's counters.
    pub fn stats(&self) -> AgentStats {
        self.shared.stats.clone()
    }

    /// Keeps a connection to every gateway until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut tasks = JoinSet::new();
        for gateway in &self.shared.settings.gateways {
            tasks.spawn(link::maintain(
                Arc::from(gateway.as_str()),
                self.shared.clone(),
                shutdown.clone(),
            ));
        }
        while tasks.join_next().await.is_some() {}
        tracing::info!("agent stopped");
        Ok(())
    }
}

/// Runs an agent until `shutdown`.
pub async fn run(settings: AgentSettings, shutdown: CancellationToken) -> Result<(), AgentError> {
    Agent::new(settings)?.run(shutdown).await
}
