//! The gateway's tunnel identity: a key pair and certificate. Either self-signed, created
//! once in `state_dir` (`tunnel.key`, `tunnel.crt`, mode 0600, plus `tunnel.pin`) and stable
//! across restarts, or loaded from PEM files issued by a CA.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::pin::{SpkiPin, spki_of};

const KEY_FILE: &str = "tunnel.key";
const CERT_FILE: &str = "tunnel.crt";
const PIN_FILE: &str = "tunnel.pin";
const SUBJECT: &str = "kakuremichi-tunnel";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot create the tunnel key pair: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The certificate chain and private key the gateway presents to agents.
pub struct TunnelIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pin: SpkiPin,
    reset_seed: [u8; 32],
}

impl fmt::Debug for TunnelIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelIdentity")
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

impl Clone for TunnelIdentity {
    fn clone(&self) -> Self {
        TunnelIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            pin: self.pin,
            reset_seed: self.reset_seed,
        }
    }
}

impl TunnelIdentity {
    /// Loads `tunnel.key` and `tunnel.crt` from `state_dir`, creating what is missing: a new
    /// key pair only when there is no key (so the pin stays the same across restarts), a new
    /// self-signed certificate when there is none or it does not match the key. Writes
    /// `tunnel.pin` every time.
    pub fn load_or_create(state_dir: &Path) -> Result<TunnelIdentity, IdentityError> {
        fs::create_dir_all(state_dir).map_err(|source| IdentityError::Io {
            path: state_dir.to_path_buf(),
            source,
        })?;
        let key_path = state_dir.join(KEY_FILE);
        let cert_path = state_dir.join(CERT_FILE);
        let key_pair = match read_optional(&key_path)? {
            Some(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| IdentityError::Invalid {
                path: key_path.clone(),
                reason: format!("not a usable private key: {e}"),
            })?,
            None => {
                let key_pair = rcgen::KeyPair::generate()?;
                write_private(&key_path, key_pair.serialize_pem().as_bytes())?;
                tracing::info!(path = %key_path.display(), "created the tunnel key pair");
                key_pair
            }
        };
        let spki = key_pair.public_key_der();
        let existing = read_optional(&cert_path)?
            .and_then(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).ok())
            .filter(|cert| spki_of(cert).is_ok_and(|s| s == spki));
        let cert = match existing {
            Some(cert) => cert,
            None => {
                let mut params = rcgen::CertificateParams::new(vec![SUBJECT.to_string()])?;
                params
                    .distinguished_name
                    .push(rcgen::DnType::CommonName, SUBJECT);
                let cert = params.self_signed(&key_pair)?;
                write_private(&cert_path, cert.pem().as_bytes())?;
                tracing::info!(path = %cert_path.display(), "created the tunnel certificate");
                cert.der().clone()
            }
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let identity =
            TunnelIdentity::from_der(vec![cert], key).map_err(|reason| IdentityError::Invalid {
                path: cert_path.clone(),
                reason,
            })?;
        let pin_path = state_dir.join(PIN_FILE);
        fs::write(&pin_path, format!("{}\n", identity.pin)).map_err(|source| {
            IdentityError::Io {
                path: pin_path,
                source,
            }
        })?;
        Ok(identity)
    }

    /// Loads a certificate chain and its key from PEM files (for agents that verify the
    /// gateway against a CA).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TunnelIdentity, IdentityError> {
        let invalid = |path: &Path, reason: String| IdentityError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| invalid(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(cert, e.to_string()))?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, e.to_string()))?;
        TunnelIdentity::from_der(chain, key_der).map_err(|reason| invalid(cert, reason))
    }

    /// Builds an identity from DER: the end-entity certificate first.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TunnelIdentity, String> {
        let leaf = chain.first().ok_or("no certificate")?;
        let pin = SpkiPin::of_certificate(leaf).map_err(|e| e.to_string())?;
        crate::tls::provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| format!("unsupported private key: {e}"))?;
        let mut h = Sha256::new();
        h.update(b"kakuremichi tunnel stateless reset v1");
        h.update(key.secret_der());
        Ok(TunnelIdentity {
            chain,
            key,
            pin,
            reset_seed: h.finalize().into(),
        })
    }

    /// The pin agents use to recognise this gateway.
    pub fn pin(&self) -> SpkiPin {
        self.pin
    }

    /// The DER certificate chain, end-entity first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The DER private key.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// A secret derived from the key: keys QUIC stateless resets, so that a restarted
    /// gateway can tell agents at once that their old connection is gone.
    pub(crate) fn reset_seed(&self) -> &[u8; 32] {
        &self.reset_seed
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, IdentityError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a file readable by its owner only, atomically (temporary file, then rename).
fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    let io_err = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!(
            "kakuremichi-tunnel-{tag}-{}-{n}",
            std::process::id()
        ))
    }

    #[test]
    fn created_once_and_stable_across_restarts() {
        let dir = temp_dir("identity");
        let _ = fs::remove_dir_all(&dir);
        let first = TunnelIdentity::load_or_create(&dir).unwrap();
        let second = TunnelIdentity::load_or_create(&dir).unwrap();
        assert_eq!(first.pin(), second.pin());
        assert_eq!(first.cert_chain(), second.cert_chain());
        let pin_file = fs::read_to_string(dir.join(PIN_FILE)).unwrap();
        assert_eq!(pin_file.trim(), first.pin().to_string());
        assert!(pin_file.starts_with("sha256:") && pin_file.trim().len() == 7 + 64);
        #[cfg(unix)]
        for f in [KEY_FILE, CERT_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // The pin is the SHA-256 of the certificate's SPKI, which is the key's SPKI.
        let key_pem = fs::read_to_string(dir.join(KEY_FILE)).unwrap();
        let spki = rcgen::KeyPair::from_pem(&key_pem).unwrap().public_key_der();
        assert_eq!(first.pin(), SpkiPin::of_spki(&spki));

        // A lost certificate is re-issued for the same key: the pin does not change.
        fs::remove_file(dir.join(CERT_FILE)).unwrap();
        let third = TunnelIdentity::load_or_create(&dir).unwrap();
        assert_eq!(third.pin(), first.pin());
        assert_eq!(third.reset_seed(), first.reset_seed());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_key_is_an_error_not_a_new_identity() {
        let dir = temp_dir("corrupt");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(KEY_FILE), "garbage").unwrap();
        assert!(matches!(
            TunnelIdentity::load_or_create(&dir),
            Err(IdentityError::Invalid { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
