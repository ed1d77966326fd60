//! Errors raised while building policies from configuration (at start and on reload).
//! Request-time failures are not errors of this kind: they become a [`crate::Decision`].

use std::path::{Path, PathBuf};

/// Why a route's policies (or the shared [`crate::PolicyEnv`]) could not be built. Each
/// variant names the route and the file or key at fault; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy setting is invalid (unknown algorithm, bad header name, missing key source...).
    #[error("route \"{route}\": {message}")]
    Invalid { route: String, message: String },

    /// A file named by a policy (`keys_file`, `secret_file`) could not be read.
    #[error("route \"{route}\": cannot read {key} {}: {source}", path.display())]
    ReadFile {
        route: String,
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The API keys file was read but its content is wrong.
    #[error("route \"{route}\": keys_file {}: {message}", path.display())]
    KeysFile {
        route: String,
        path: PathBuf,
        message: String,
    },

    /// The extra trust roots (`ca_roots`) could not be loaded.
    #[error(
        "cannot read trust roots from {}: {reason}; ca_roots must name a PEM file of CA certificates",
        path.display()
    )]
    Roots { path: PathBuf, reason: String },

    /// The TLS client for JWKS fetches could not be set up.
    #[error("TLS set-up for JWKS fetches failed: {0}")]
    Tls(#[from] rustls::Error),
}

impl PolicyError {
    pub(crate) fn invalid(route: &str, message: impl Into<String>) -> Self {
        PolicyError::Invalid {
            route: route.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn read_file(
        route: &str,
        key: &'static str,
        path: &Path,
        source: std::io::Error,
    ) -> Self {
        PolicyError::ReadFile {
            route: route.to_string(),
            key,
            path: path.to_path_buf(),
            source,
        }
    }
}
