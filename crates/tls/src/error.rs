//! Errors of this crate. [`TlsError`] is what set-up and loading return: each names the
//! file or setting at fault and says what to do. `AcmeError` is why one certificate order
//! failed; the manager records it, retries, and shows it in [`crate::CertStatus`].

use std::path::PathBuf;
use std::time::Duration;

use crate::dns::DnsError;
use crate::http_client::HttpError;

/// Set-up and loading errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {}: {source}; check that the path is right and readable", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: no PEM certificate found; `cert` must name a PEM file with the server certificate first, then its intermediates",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error("{}: not valid PEM ({reason}); the file must hold PEM blocks (-----BEGIN ...-----)", path.display())]
    InvalidPem { path: PathBuf, reason: String },
    #[error(
        "{}: no private key found; `key` must name a PEM file with a PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{}: unsupported private key: {source}; use an RSA, ECDSA P-256/P-384 or Ed25519 key", path.display())]
    UnsupportedKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "the key in {} does not belong to the certificate in {}; pair each certificate with the key it was issued for",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: the first certificate cannot be parsed ({reason}); is it an X.509 certificate in PEM?", path.display())]
    BadCertificate { path: PathBuf, reason: &'static str },
    #[error("trust roots {}: {reason}; ca_roots must name a PEM file of CA certificates", path.display())]
    Roots { path: PathBuf, reason: String },
    #[error("state directory {}: {source}; state_dir must be a writable directory", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: {reason}; delete the file to let kakuremichi create a new one",
        path.display()
    )]
    BadStateFile { path: PathBuf, reason: String },
    #[error("invalid ACME settings: {0}")]
    Settings(String),
    #[error("TLS set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Why an ACME order (or one of its steps) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    #[error("ACME server unreachable: {0}")]
    Http(#[from] HttpError),
    #[error("ACME server answered {status}: {kind}: {detail}")]
    Problem {
        status: u16,
        kind: String,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("unexpected answer from the ACME server: {0}")]
    Protocol(String),
    #[error("validation of {host} failed: {detail}")]
    Validation { host: String, detail: String },
    #[error("the ACME server offers no {challenge} challenge for {host}")]
    NoChallenge {
        host: String,
        challenge: &'static str,
    },
    #[error("gave up waiting for {0}")]
    Timeout(&'static str),
    #[error("DNS provider: {0}")]
    Dns(#[from] DnsError),
    #[error("issued certificate unusable: {0}")]
    Certificate(String),
    #[error(transparent)]
    Setup(#[from] TlsError),
}

impl AcmeError {
    /// How long the server asked us to wait before trying again, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AcmeError::Problem { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl From<rcgen::Error> for AcmeError {
    fn from(e: rcgen::Error) -> Self {
        AcmeError::Setup(TlsError::Generate(e))
    }
}

impl From<rustls::Error> for AcmeError {
    fn from(e: rustls::Error) -> Self {
        AcmeError::Setup(TlsError::Rustls(e))
    }
}
