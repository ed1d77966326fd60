//! The agent file (`agent.toml`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::client::ControlClient;
use crate::net::ListenAddr;
use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub agent: Option<AgentSection>,
    pub control: Option<ControlClient>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TransportMode {
    #[default]
    Auto,
    Quic,
    Tcp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    pub name: Option<String>,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub gateways: Vec<String>,
    pub gateway_pin: Option<String>,
    pub gateway_ca: Option<PathBuf>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub transport: TransportMode,
    pub admin: Option<ListenAddr>,
}
