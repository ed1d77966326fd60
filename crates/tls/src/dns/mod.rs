//! DNS providers for DNS-01: something that can publish and withdraw a TXT record. Each
//! provider talks to its DNS host's API; [`cloudflare`] is the first.

pub mod cloudflare;

use std::future::Future;
use std::pin::Pin;

use crate::http_client::HttpError;

/// A boxed future, so that providers can sit behind `Arc<dyn DnsProvider>`.
pub type DnsFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DnsError>> + Send + 'a>>;

/// Publishes and withdraws the TXT records of DNS-01 challenges.
pub trait DnsProvider: Send + Sync + 'static {
    /// Adds a TXT record `name` (fully qualified, no trailing dot, e.g.
    /// `_acme-challenge.example.com`) with `value`, next to any records already there.
    fn set_txt<'a>(&'a self, name: &'a str, value: &'a str) -> DnsFuture<'a>;
    /// Removes the TXT record `name` with `value`; records with other values stay.
    fn remove_txt<'a>(&'a self, name: &'a str, value: &'a str) -> DnsFuture<'a>;
}

/// Why a DNS provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("{0}")]
    Http(#[from] HttpError),
    #[error("no zone in the account contains {0}; check the name and the token's zone permissions")]
    NoZone(String),
    #[error("the DNS API refused the request ({status}): {message}")]
    Api { status: u16, message: String },
    #[error("unexpected answer from the DNS API: {0}")]
    Protocol(String),
}
