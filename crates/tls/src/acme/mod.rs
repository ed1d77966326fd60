//! ACME (RFC 8555): settings, the protocol client, the order flow, state on disk, and the
//! [`AcmeManager`] that keeps a certificate for every configured host.

mod client;
mod issue;
mod jws;
mod manager;
mod persist;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use manager::AcmeManager;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How the ACME server is shown that we control a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A file under `/.well-known/acme-challenge/` on the http listener (port 80).
    Http01,
    /// A special certificate on the https listener (port 443), ALPN `acme-tls/1`.
    TlsAlpn01,
    /// A TXT record through a DNS provider; the only one that can prove `*.wildcards`.
    Dns01,
}

impl Challenge {
    /// The challenge's name in ACME and in the configuration (`http-01`, ...).
    pub fn acme_name(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Dns01 => "dns-01",
        }
    }
}

impl FromStr for Challenge {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http-01" => Ok(Challenge::Http01),
            "tls-alpn-01" => Ok(Challenge::TlsAlpn01),
            "dns-01" => Ok(Challenge::Dns01),
            other => Err(format!(
                "unknown ACME challenge {other:?}; use \"http-01\", \"tls-alpn-01\" or \"dns-01\""
            )),
        }
    }
}

/// The DNS provider for DNS-01.
#[derive(Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// `"cloudflare"`.
    pub provider: String,
    pub api_token: String,
    /// API root; `None`: the provider's public API.
    pub api_url: Option<String>,
    /// How long to wait after publishing a TXT record before asking for validation, so that
    /// every authoritative server has it.
    pub propagation_delay: Duration,
}

impl DnsSettings {
    /// Cloudflare with an API token that may edit DNS of the zones involved.
    pub fn cloudflare(api_token: impl Into<String>) -> Self {
        Self {
            provider: "cloudflare".into(),
            api_token: api_token.into(),
            api_url: None,
            propagation_delay: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for DnsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsSettings")
            .field("provider", &self.provider)
            .field("api_token", &"***")
            .field("api_url", &self.api_url)
            .field("propagation_delay", &self.propagation_delay)
            .finish()
    }
}

/// `[tls.acme]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// Contact for the account (expiry notices).
    pub email: Option<String>,
    /// The ACME directory URL.
    pub directory: String,
    /// Extra trust roots (PEM) for the ACME server's and the DNS API's certificates.
    pub ca_roots: Option<PathBuf>,
    pub challenge: Challenge,
    /// Renew when a certificate expires sooner than this.
    pub renew_before: Duration,
    /// Required for [`Challenge::Dns01`].
    pub dns: Option<DnsSettings>,
    /// The gateway's `state_dir`; ACME state lives in its `acme/` folder.
    pub state_dir: PathBuf,
    /// First wait after a failed attempt; doubles with every further failure...
    pub retry_min: Duration,
    /// ...up to this (or longer when the server says `Retry-After`).
    pub retry_max: Duration,
}

impl AcmeSettings {
    /// Defaults: no email, HTTP-01, renew 30 days before expiry, retry after 2 minutes
    /// doubling up to 4 hours.
    pub fn new(directory: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            email: None,
            directory: directory.into(),
            ca_roots: None,
            challenge: Challenge::Http01,
            renew_before: Duration::from_secs(30 * 86_400),
            dns: None,
            state_dir: state_dir.into(),
            retry_min: Duration::from_secs(120),
            retry_max: Duration::from_secs(4 * 3600),
        }
    }
}
