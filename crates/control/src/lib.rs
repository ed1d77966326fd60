//! The control plane of kakuremichi: a REST API and web UI over a database of agents,
//! gateways and routes, and a push WebSocket that keeps every managed gateway and agent on
//! the current state.
//!
//! ```text
//!  operator ──HTTP──▶ api/ ──▶ store/ (SQLite | PostgreSQL) ◀── push::Hub (polls the version)
//!                      │                                          │ watch channel
//!                      └─ after each change: hub.refresh() ───────┤
//!  gateway / agent ◀──────────── /api/v1/connect (WebSocket) ◀────┘ snapshots, heartbeats
//! ```
//!
//! Entry points: [`bind`] then [`Control::run`], or [`run`] for both. Gateways and agents use
//! [`client::connect_and_follow`] to receive [`client::Snapshot`]s.
//!
//! Every change bumps one global version stored in the database, so several control
//! instances on one PostgreSQL database push the same versions: each instance polls the
//! version once a second and pushes what another instance changed.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod api;
pub mod client;
mod clock;
mod error;
mod openapi;
pub mod protocol;
mod push;
mod server;
mod status;
pub mod store;
mod tokens;
mod toml_text;
mod ui;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use error::ControlError;
pub use server::Control;
use tokio_util::sync::CancellationToken;
pub use toml_text::RenderError;

/// What the control plane needs to start: the `[control]` section of `control.toml` with
/// relative paths resolved (see [`ControlSettings::from_file`]).
#[derive(Clone)]
pub struct ControlSettings {
    /// Address of the API, web UI and push WebSocket (plain HTTP; put TLS in front of it).
    pub listen: SocketAddr,
    /// `sqlite://path/to/file.db` (relative to the working directory) or
    /// `postgres://user[:password]@host[:port]/db`.
    pub database: String,
    /// How gateways and agents reach this control plane; used in the config snippets the API
    /// and the UI hand out. `None`: taken from the request's `Host` header.
    pub public_url: Option<String>,
    /// Holds the admin token. Created with a new random token (printed once) when missing.
    pub admin_token_file: PathBuf,
}

impl ControlSettings {
    /// Settings from a parsed `control.toml` at `config_path`: a relative SQLite path and a
    /// relative `admin_token_file` are taken relative to the file's folder;
    /// `admin_token_file` defaults to `admin.token` there.
    pub fn from_file(file: &kakuremichi_config::control::ControlFile, config_path: &Path) -> Self {
        let base = match config_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let c = &file.control;
        let database = match store::sqlite_path(&c.database) {
            Some(path) if path.is_relative() => {
                format!("sqlite://{}", base.join(path).display())
            }
            _ => c.database.clone(),
        };
        ControlSettings {
            listen: c.listen.0,
            database,
            public_url: c.public_url.clone(),
            admin_token_file: base.join(
                c.admin_token_file
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("admin.token")),
            ),
        }
    }
}

impl fmt::Debug for ControlSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlSettings")
            .field("listen", &self.listen)
            .field("database", &store::redact_url(&self.database))
            .field("public_url", &self.public_url)
            .field("admin_token_file", &self.admin_token_file)
            .finish()
    }
}

/// Opens the database (applying migrations), loads or creates the admin token and binds
/// the listener. Serve with [`Control::run`].
pub async fn bind(settings: ControlSettings) -> Result<Control, ControlError> {
    Control::bind(settings).await
}

/// [`bind`] then [`Control::run`] until `shutdown` is cancelled.
pub async fn run(
    settings: ControlSettings,
    shutdown: CancellationToken,
) -> Result<(), ControlError> {
    bind(settings).await?.run(shutdown).await
}
