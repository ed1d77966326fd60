//! `[control]` in a gateway or agent file: where a managed gateway or agent finds control.

use std::path::PathBuf;

use serde::Deserialize;

use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlClient {
    pub url: String,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
}
