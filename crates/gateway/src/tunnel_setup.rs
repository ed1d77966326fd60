//! The tunnel listener of a gateway: its identity (key pair and pin in `state_dir`), the
//! agents allowed by `[[agents]]`, and the tunnel figures in `/metrics`.

use std::net::SocketAddr;

use kakuremichi_config::GatewayConfig;
use kakuremichi_tunnel::{AgentAuth, AgentRegistry, TokenHash, TunnelIdentity, TunnelServer};

use crate::metrics::{AgentLabel, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum TunnelSetupError {
    #[error(
        "{file}: cannot create or read the tunnel key pair in state_dir {dir}: {source}; check that the folder is writable"
    )]
    Identity {
        file: String,
        dir: String,
        #[source]
        source: kakuremichi_tunnel::IdentityError,
    },
    #[error(
        "cannot listen for agents on {addr} (UDP and TCP): {source}; is another process using the port?"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: kakuremichi_tunnel::BindError,
    },
    #[error("{file}: agent \"{name}\": token_sha256 is not 64 hex digits")]
    TokenHash { file: String, name: String },
}

/// The agents of `[[agents]]`, by name and token hash.
pub fn agent_auth(config: &GatewayConfig) -> Result<AgentAuth, TunnelSetupError> {
    let mut auth = AgentAuth::new();
    for agent in &config.agents {
        let name = agent.name.get_ref().clone();
        let hash = match (&agent.token, &agent.token_sha256) {
            (Some(token), _) => TokenHash::of_token(token.expose()),
            (None, Some(hex)) => {
                TokenHash::from_hex(hex).map_err(|_| TunnelSetupError::TokenHash {
                    file: config.file.display().to_string(),
                    name: name.clone(),
                })?
            }
            (None, None) => continue,
        };
        auth = auth.allow(name, hash);
    }
    Ok(auth)
}

/// Creates (or loads) the identity and binds the tunnel listener.
pub async fn bind(
    config: &GatewayConfig,
    addr: SocketAddr,
) -> Result<TunnelServer, TunnelSetupError> {
    let dir = &config.settings.state_dir;
    let identity =
        TunnelIdentity::load_or_create(dir).map_err(|source| TunnelSetupError::Identity {
            file: config.file.display().to_string(),
            dir: dir.display().to_string(),
            source,
        })?;
    tracing::info!(pin = %identity.pin(), pin_file = %dir.join("tunnel.pin").display(), "tunnel identity; agents pin this value (gateway_pin)");
    TunnelServer::bind(addr, &identity, agent_auth(config)?)
        .await
        .map_err(|source| TunnelSetupError::Bind { addr, source })
}

/// Copies the registry's figures into `/metrics` at every scrape.
pub fn export_metrics(metrics: &Metrics, registry: AgentRegistry) {
    metrics.add_refresher(move |m| {
        for group in registry.groups() {
            let label = AgentLabel {
                agent: group.name.clone(),
            };
            m.tunnel_agents_connected
                .get_or_create(&label)
                .set(group.connected as i64);
            m.tunnel_streams_open
                .get_or_create(&label)
                .set(group.open_streams as i64);
            m.tunnel_agent_connections
                .get_or_create(&label)
                .set(group.connections_total as i64);
        }
        let stats = registry.stats();
        m.tunnel_bytes_to_agents.set(stats.bytes_to_agents as i64);
        m.tunnel_bytes_from_agents
            .set(stats.bytes_from_agents as i64);
        m.tunnel_handshakes_refused
            .set(stats.handshakes_refused as i64);
    });
}
