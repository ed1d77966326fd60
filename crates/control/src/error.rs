//! Errors that stop the control plane from starting or running.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::store::StoreError;

/// Why [`crate::bind`] or [`crate::Control::run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("admin token file {}: {source}", path.display())]
    AdminToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token file {} is empty; delete it to have a new token created", path.display())]
    EmptyAdminToken { path: PathBuf },
    #[error("accepting connections: {0}")]
    Accept(#[source] std::io::Error),
}
