//! How an agent authenticates a gateway: exactly one pinned public key (handshake
//! signatures still verified), a CA from a PEM file, or the system's trust roots.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::pin::SpkiPin;
use crate::tls::provider;

/// How the agent recognises a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayVerification {
    /// `gateway_pin`: the gateway's key must have this pin; names and dates are not checked.
    Pin(SpkiPin),
    /// `gateway_ca`: the certificate must chain to a CA of this PEM file and name the
    /// gateway's host.
    CaFile(PathBuf),
    /// Neither: the system's trust roots, with the usual name check.
    SystemRoots,
}

/// Why TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read CA certificates from {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("no usable trust roots on this system")]
    NoSystemRoots,
    #[error("TLS set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS set-up failed: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error("QUIC TLS set-up failed: {0}")]
    Quic(String),
}

impl GatewayVerification {
    pub(crate) fn verifier(&self) -> Result<Arc<dyn ServerCertVerifier>, TlsSetupError> {
        let provider = provider();
        match self {
            GatewayVerification::Pin(pin) => Ok(Arc::new(PinVerifier {
                pin: *pin,
                provider,
            })),
            GatewayVerification::CaFile(path) => {
                let ca_err = |reason: String| TlsSetupError::CaFile {
                    path: path.clone(),
                    reason,
                };
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| ca_err(e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ca_err(e.to_string()))?;
                if certs.is_empty() {
                    return Err(ca_err("the file holds no certificate".into()));
                }
                let mut roots = RootCertStore::empty();
                for cert in certs {
                    roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
                }
                web_pki(roots, provider)
            }
            GatewayVerification::SystemRoots => {
                let mut roots = RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(TlsSetupError::NoSystemRoots);
                }
                web_pki(roots, provider)
            }
        }
    }
}

fn web_pki(
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsSetupError> {
    Ok(WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?)
}

/// The presented key does not have the configured pin. (`Debug` reads like `Display`:
/// rustls shows this error with `{:?}`.)
pub(crate) struct PinMismatch {
    presented: String,
}

impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the gateway's key does not match gateway_pin (it presented {})",
            self.presented
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Accepts exactly the pinned public key and checks that the peer holds its private key.
#[derive(Debug)]
struct PinVerifier {
    pin: SpkiPin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = SpkiPin::of_certificate(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if presented.matches(&self.pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch {
                    presented: presented.to_string(),
                })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
