//! The control plane file (`control.toml`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::net::ListenAddr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlFile {
    pub control: ControlSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    pub listen: ListenAddr,
    #[serde(default = "default_database")]
    pub database: String,
    pub public_url: Option<String>,
    pub admin_token_file: Option<PathBuf>,
}

fn default_database() -> String {
    "sqlite://kakuremichi.db".into()
}
