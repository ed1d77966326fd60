//! Turning PEM (files on disk or an ACME server's answer) into certificates ready to serve:
//! a rustls [`CertifiedKey`] whose key is checked against the certificate, plus what the
//! store needs to index and report it ([`CertInfo`]).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::der::{CertInfo, parse_certificate};
use crate::error::TlsError;

/// The crypto provider every config of this crate uses (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A certificate chain with its key, ready to serve.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
}

impl Loaded {
    /// Whether `host` (lowercase, no trailing dot) is one of the certificate's names, a
    /// wildcard name covering it, or, for a wildcard `host`, the same wildcard.
    pub fn covers(&self, host: &str) -> bool {
        self.info.dns_names.iter().any(|name| {
            name == host || wildcard_parent(name).is_some_and(|p| parent(host) == Some(p))
        })
    }
}

/// `*.example.com` → `example.com`.
pub(crate) fn wildcard_parent(name: &str) -> Option<&str> {
    name.strip_prefix("*.")
}

/// `a.example.com` → `example.com`; `*.example.com` never matches a wildcard's parent so a
/// wildcard name is only covered by the same wildcard (handled by equality).
pub(crate) fn parent(host: &str) -> Option<&str> {
    if host.starts_with("*.") {
        return None;
    }
    host.split_once('.')
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
}

/// Why a chain and key do not make a usable certificate.
#[derive(Debug)]
pub(crate) enum BuildError {
    NoCertificate,
    UnsupportedKey(rustls::Error),
    KeyMismatch,
    BadCertificate(&'static str),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::NoCertificate => f.write_str("no certificate"),
            BuildError::UnsupportedKey(e) => write!(f, "unsupported private key: {e}"),
            BuildError::KeyMismatch => f.write_str("the key does not match the certificate"),
            BuildError::BadCertificate(reason) => write!(f, "unreadable certificate: {reason}"),
        }
    }
}

/// Checks and assembles a chain and its key.
pub(crate) fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Loaded, BuildError> {
    let leaf = chain.first().ok_or(BuildError::NoCertificate)?;
    let info = parse_certificate(leaf).map_err(BuildError::BadCertificate)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(BuildError::UnsupportedKey)?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => return Err(BuildError::KeyMismatch),
        // The provider could not tell (unusual key types): let the handshake decide.
        Err(_) => {}
    }
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

/// Parses a PEM chain and PEM key held in memory.
pub(crate) fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, BuildError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| BuildError::NoCertificate)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| BuildError::UnsupportedKey(rustls::Error::General(e.to_string())))?;
    build(chain, key)
}

/// Loads a certificate chain and key from PEM files, with errors that name the file.
pub(crate) fn load_files(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let cert_pem = read(cert, "certificate")?;
    let key_pem = read(key, "private key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidPem {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_path_buf(),
        },
        other => TlsError::InvalidPem {
            path: key.to_path_buf(),
            reason: other.to_string(),
        },
    })?;
    build(chain, private).map_err(|e| match e {
        BuildError::NoCertificate => TlsError::NoCertificate {
            path: cert.to_path_buf(),
        },
        BuildError::UnsupportedKey(source) => TlsError::UnsupportedKey {
            path: key.to_path_buf(),
            source,
        },
        BuildError::KeyMismatch => TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        BuildError::BadCertificate(reason) => TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason,
        },
    })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn covers_exact_and_wildcard_names() {
        let (cert, key) = make(&["a.example.com", "*.w.example.com"]);
        let loaded = from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert!(loaded.covers("a.example.com"));
        assert!(loaded.covers("x.w.example.com"));
        assert!(loaded.covers("*.w.example.com"));
        assert!(!loaded.covers("w.example.com"));
        assert!(!loaded.covers("y.x.w.example.com"));
        assert!(!loaded.covers("b.example.com"));
    }

    #[test]
    fn detects_a_key_of_another_certificate() {
        let (cert, _) = make(&["a.example.com"]);
        let (_, other_key) = make(&["a.example.com"]);
        assert!(matches!(
            from_pem(cert.as_bytes(), other_key.as_bytes()),
            Err(BuildError::KeyMismatch)
        ));
    }
}
