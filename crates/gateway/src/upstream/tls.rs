//! TLS client settings for `https` upstreams: the system's trust roots plus `ca_roots`, and
//! the explicit `tls_verify = false` mode, which accepts any certificate and says so in logs.

use std::path::Path;
use std::sync::Arc;

use kakuremichi_tls::AcceptAnyCertificate;
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "cannot read trust roots from {path}: {reason}; ca_roots must name a PEM file of CA certificates"
    )]
    Roots { path: String, reason: String },
    #[error("TLS set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the system roots and, when given, the extra roots of `ca_roots`.
pub fn root_store(extra: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsSetupError::Roots {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsSetupError::Roots {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsSetupError::Roots {
                path: path.display().to_string(),
                reason: "the file holds no certificate".into(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| TlsSetupError::Roots {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}

/// Client settings that verify upstream certificates against `roots`.
pub fn verifying(roots: RootCertStore) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Client settings for `tls_verify = false`: encryption without authentication.
pub fn unverified() -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        // Accepts every certificate, still checks handshake signatures.
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
