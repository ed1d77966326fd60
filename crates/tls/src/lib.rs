//! Certificates for kakuremichi's https listener.
//!
//! - [`CertStore`]: static certificates from files and ACME-obtained ones, chosen by SNI on
//!   every handshake (it is the listener's [`rustls::server::ResolvesServerCert`]);
//!   [`CertStore::server_config`] gives the listener its rustls settings.
//! - [`AcmeManager`]: obtains and renews a certificate for every host it is given (RFC 8555,
//!   HTTP-01, TLS-ALPN-01 or DNS-01), keeps keys and certificates in `state_dir`, and never
//!   orders for a host it was not given.
//! - [`dns`]: the DNS providers DNS-01 publishes TXT records through (Cloudflare).
//!
//! ```no_run
//! # async fn demo() -> Result<(), kakuremichi_tls::TlsError> {
//! use kakuremichi_tls::{AcmeManager, AcmeSettings, CertStore, StaticCert};
//! let store = CertStore::new();
//! store.load_static(&[StaticCert { cert: "site.pem".into(), key: "site.key".into() }])?;
//! let acme = AcmeManager::new(
//!     AcmeSettings::new(kakuremichi_tls::LETS_ENCRYPT_DIRECTORY, "/var/lib/kakuremichi"),
//!     store.clone(),
//! )?;
//! acme.set_hosts(vec!["cloud.example.tech".into()]);
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(acme.clone().run(shutdown.clone()));
//! let acceptor = tokio_rustls::TlsAcceptor::from(store.server_config());
//! # let _ = acceptor; Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod accept_any;
mod acme;
mod certs;
mod der;
pub mod dns;
mod error;
mod http_client;
mod log_budget;
mod store;

pub use accept_any::AcceptAnyCertificate;
pub use acme::{AcmeManager, AcmeSettings, Challenge, DnsSettings, LETS_ENCRYPT_DIRECTORY};
pub use error::TlsError;
pub use http_client::HttpError;
pub use log_budget::LogBudget;
pub use store::{ACME_TLS_ALPN, CertSource, CertStatus, CertStore, StaticCert};
