//! What the ACME manager keeps in `state_dir`, one folder per ACME directory URL (so that a
//! staging account or certificate is never used against production):
//!
//! ```text
//! <state_dir>/acme/                     0700
//!   <server-host>-<hash of URL>/        0700
//!     account.key                       0600  PKCS#8 PEM, the account key
//!     certs/<host>.crt                  0644  PEM chain as issued
//!     certs/<host>.key                  0600  PKCS#8 PEM, the certificate's key
//! ```
//!
//! Wildcard hosts are stored as `_wildcard.<parent>`. Files are written to a temporary name
//! and renamed, so a crash never leaves half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;

use super::jws::{AccountKey, sha256};
use crate::certs::{Loaded, from_pem};
use crate::error::TlsError;

pub(crate) struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) the folder for `directory_url` under `state_dir/acme`.
    pub fn open(state_dir: &Path, directory_url: &str) -> Result<Self, TlsError> {
        let acme = state_dir.join("acme");
        let root = acme.join(folder_name(directory_url));
        for dir in [&acme, &root, &root.join("certs")] {
            create_private_dir(dir)?;
        }
        Ok(Self { root })
    }

    pub fn account_key_path(&self) -> PathBuf {
        self.root.join("account.key")
    }

    /// The account key, created (and saved) on first use.
    pub fn account_key(&self) -> Result<AccountKey, TlsError> {
        let path = self.account_key_path();
        match std::fs::read(&path) {
            Ok(pem) => {
                let bad = |reason: String| TlsError::BadStateFile {
                    path: path.clone(),
                    reason,
                };
                let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
                    .map_err(|e| bad(format!("not a PKCS#8 PEM key: {e}")))?;
                AccountKey::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| bad(e.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, pkcs8) = AccountKey::generate().map_err(|e| TlsError::BadStateFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                write_file(&path, pem("PRIVATE KEY", &pkcs8).as_bytes(), 0o600)?;
                tracing::info!(file = %path.display(), "created a new ACME account key");
                Ok(key)
            }
            Err(source) => Err(TlsError::Read {
                what: "ACME account key",
                path,
                source,
            }),
        }
    }

    fn cert_paths(&self, host: &str) -> (PathBuf, PathBuf) {
        let stem = match host.strip_prefix("*.") {
            Some(parent) => format!("_wildcard.{parent}"),
            None => host.to_string(),
        };
        let certs = self.root.join("certs");
        (
            certs.join(format!("{stem}.crt")),
            certs.join(format!("{stem}.key")),
        )
    }

    /// The stored certificate of `host`: `None` when there is none (or it is unusable, which
    /// is logged: a new one will be ordered).
    pub fn load_cert(&self, host: &str) -> Option<Loaded> {
        let (cert, key) = self.cert_paths(host);
        if !cert.exists() {
            return None;
        }
        match crate::certs::load_files(&cert, &key) {
            Ok(loaded) if loaded.covers(host) => Some(loaded),
            Ok(_) => {
                tracing::warn!(file = %cert.display(), host = %host, "stored certificate does not name its host; ordering a new one");
                None
            }
            Err(e) => {
                tracing::warn!(host = %host, error = %e, "stored certificate unusable; ordering a new one");
                None
            }
        }
    }

    /// Stores a freshly issued chain and key (key first, so a crash leaves a mismatch that
    /// `load_cert` refuses rather than a certificate without its key).
    pub fn save_cert(&self, host: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let (cert, key) = self.cert_paths(host);
        write_file(&key, key_pem, 0o600)?;
        write_file(&cert, chain_pem, 0o644)
    }
}

/// Builds a served certificate from PEM just issued (no file involved).
pub(crate) fn issued(chain_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, String> {
    from_pem(chain_pem, key_pem).map_err(|e| e.to_string())
}

fn folder_name(directory_url: &str) -> String {
    let host = directory_url
        .split_once("://")
        .map_or(directory_url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let hash = sha256(directory_url);
    let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{hex}")
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let state_err = |source| TlsError::State {
        path: dir.to_path_buf(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(state_err)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let state_err = |source| TlsError::State {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(state_err)?;
    file.write_all(data).map_err(state_err)?;
    file.sync_all().map_err(state_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(state_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_are_safe_and_distinct() {
        let a = folder_name("https://acme-v02.api.letsencrypt.org/directory");
        let b = folder_name("https://acme-staging-v02.api.letsencrypt.org/directory");
        assert!(a.starts_with("acme-v02.api.letsencrypt.org-"));
        assert_ne!(a, b);
        assert!(folder_name("https://127.0.0.1:14000/dir").starts_with("127.0.0.1_14000-"));
        assert!(!folder_name("https://../x").contains('/'));
    }

    #[test]
    fn pem_round_trips() {
        let (_, pkcs8) = AccountKey::generate().unwrap();
        let text = pem("PRIVATE KEY", &pkcs8);
        let der = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).unwrap();
        assert_eq!(der.secret_pkcs8_der(), &pkcs8[..]);
    }
}
