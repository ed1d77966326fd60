//! TLS settings shared by both transports: TLS 1.3 only, the ring provider, and the
//! tunnel's ALPN name on both sides.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

use crate::identity::TunnelIdentity;
use crate::proto::ALPN;
use crate::verify::{GatewayVerification, TlsSetupError};

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The gateway's side: presents the tunnel identity, speaks only `kakuremichi/1`.
pub(crate) fn server_config(
    identity: &TunnelIdentity,
) -> Result<rustls::ServerConfig, TlsSetupError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.cert_chain().to_vec(), identity.key_der())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The agent's side: verifies the gateway as `verification` says.
pub(crate) fn client_config(
    verification: &GatewayVerification,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let verifier = verification.verifier()?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}
