//! TLS for the https listener: the rustls server settings built from `[tls]`.

use kakuremichi_config::GatewayConfig;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("{file}: `https` needs certificates: add [tls] certificates or [tls.acme]")]
    NoCertificates { file: String },
}

/// The acceptor for the https listener.
pub fn acceptor(config: &GatewayConfig) -> Result<TlsAcceptor, ServerTlsError> {
    Err(ServerTlsError::NoCertificates {
        file: config.file.display().to_string(),
    })
}
