//! One certificate order for one host, start to finish: new order, solve each pending
//! authorization with the configured challenge (and always withdraw it afterwards),
//! finalize with a fresh ECDSA P-256 key, download the chain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio::time::Instant;

use super::Challenge;
use super::client::Account;
use super::jws::{b64, sha256};
use super::persist::issued;
use crate::certs::{Loaded, provider};
use crate::dns::DnsProvider;
use crate::error::AcmeError;
use crate::store::CertStore;

/// How long to wait for a validation or for the server to issue.
const POLL_LIMIT: Duration = Duration::from_secs(180);

/// What answers challenges.
pub(crate) struct Solver {
    pub challenge: Challenge,
    pub store: CertStore,
    /// token → key authorization, read by the http listener.
    pub http01: Arc<Mutex<HashMap<String, String>>>,
    pub dns: Option<Arc<dyn DnsProvider>>,
    pub propagation: Duration,
}

/// A certificate just issued, with the PEM to persist.
pub(crate) struct Issued {
    pub loaded: Loaded,
    pub chain_pem: Bytes,
    pub key_pem: String,
}

pub(crate) async fn issue(
    account: &Account,
    host: &str,
    solver: &Solver,
) -> Result<Issued, AcmeError> {
    let (order_url, order) = account.new_order(host).await?;
    tracing::info!(host = %host, challenge = solver.challenge.acme_name(), "ACME order created");
    let mut order = order;
    if order.status == "pending" {
        for authz_url in &order.authorizations {
            authorize(account, host, authz_url, solver).await?;
        }
        order = wait_order(account, &order_url, "pending").await?;
    }
    if order.status == "ready" {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order = account.finalize(&order.finalize, csr.der()).await?;
        if order.status != "valid" {
            order = wait_order(account, &order_url, "processing").await?;
        }
        return download(account, host, order, key.serialize_pem()).await;
    }
    Err(order_failed(host, &order))
}

async fn download(
    account: &Account,
    host: &str,
    order: super::client::Order,
    key_pem: String,
) -> Result<Issued, AcmeError> {
    if order.status != "valid" {
        return Err(order_failed(host, &order));
    }
    let url = order
        .certificate
        .ok_or_else(|| AcmeError::Protocol("valid order without a certificate URL".into()))?;
    let chain_pem = account.certificate(&url).await?;
    let loaded = issued(&chain_pem, key_pem.as_bytes()).map_err(AcmeError::Certificate)?;
    if !loaded.covers(host) {
        return Err(AcmeError::Certificate(format!(
            "the issued certificate does not name {host}"
        )));
    }
    Ok(Issued {
        loaded,
        chain_pem,
        key_pem,
    })
}

fn order_failed(host: &str, order: &super::client::Order) -> AcmeError {
    AcmeError::Validation {
        host: host.to_string(),
        detail: match &order.error {
            Some(problem) => format!("order {}: {problem}", order.status),
            None => format!("order is {}", order.status),
        },
    }
}

/// Solves one authorization unless it is already valid.
async fn authorize(
    account: &Account,
    host: &str,
    url: &str,
    solver: &Solver,
) -> Result<(), AcmeError> {
    let (authz, _) = account.authorization(url).await?;
    match authz.status.as_str() {
        "valid" => return Ok(()),
        "pending" => {}
        other => {
            return Err(AcmeError::Validation {
                host: host.to_string(),
                detail: format!("authorization is {other}"),
            });
        }
    }
    let kind = solver.challenge.acme_name();
    let challenge = authz
        .challenges
        .iter()
        .find(|c| c.kind == kind)
        .ok_or_else(|| AcmeError::NoChallenge {
            host: host.to_string(),
            challenge: kind,
        })?;
    let key_auth = account.key_authorization(&challenge.token);
    // For a wildcard the identifier is the parent domain.
    let domain = authz.identifier.value.to_ascii_lowercase();
    let armed = solver.arm(&domain, &challenge.token, &key_auth).await;
    let result = match armed {
        Ok(()) => {
            async {
                account.respond(&challenge.url).await?;
                wait_authorization(account, host, url).await
            }
            .await
        }
        Err(e) => Err(e),
    };
    solver.disarm(&domain, &challenge.token, &key_auth).await;
    result
}

async fn wait_authorization(account: &Account, host: &str, url: &str) -> Result<(), AcmeError> {
    let deadline = Instant::now() + POLL_LIMIT;
    let mut step = Duration::from_millis(250);
    loop {
        let (authz, retry_after) = account.authorization(url).await?;
        match authz.status.as_str() {
            "valid" => return Ok(()),
            "pending" | "processing" => {}
            other => {
                let detail = authz
                    .challenges
                    .iter()
                    .find_map(|c| c.error.as_ref())
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| format!("authorization is {other}"));
                return Err(AcmeError::Validation {
                    host: host.to_string(),
                    detail,
                });
            }
        }
        step = pause(deadline, retry_after, step, "the validation").await?;
    }
}

/// Polls the order while its status is `while_status`.
async fn wait_order(
    account: &Account,
    url: &str,
    while_status: &str,
) -> Result<super::client::Order, AcmeError> {
    let deadline = Instant::now() + POLL_LIMIT;
    let mut step = Duration::from_millis(250);
    loop {
        let (order, retry_after) = account.order(url).await?;
        if order.status != while_status {
            return Ok(order);
        }
        step = pause(deadline, retry_after, step, "the ACME order").await?;
    }
}

async fn pause(
    deadline: Instant,
    retry_after: Option<Duration>,
    step: Duration,
    what: &'static str,
) -> Result<Duration, AcmeError> {
    let wait = retry_after
        .unwrap_or(step)
        .clamp(Duration::from_millis(100), Duration::from_secs(10));
    if Instant::now() + wait > deadline {
        return Err(AcmeError::Timeout(what));
    }
    tokio::time::sleep(wait).await;
    Ok((step * 2).min(Duration::from_secs(2)))
}

impl Solver {
    /// Puts the challenge answer where the validator will look.
    async fn arm(&self, domain: &str, token: &str, key_auth: &str) -> Result<(), AcmeError> {
        match self.challenge {
            Challenge::Http01 => {
                lock(&self.http01).insert(token.to_string(), key_auth.to_string());
            }
            Challenge::TlsAlpn01 => {
                let cert = alpn_challenge_cert(domain, key_auth)?;
                self.store.set_challenge(domain, cert);
            }
            Challenge::Dns01 => {
                let dns = self
                    .dns
                    .as_ref()
                    .ok_or_else(|| AcmeError::Protocol("dns-01 without a DNS provider".into()))?;
                let name = format!("_acme-challenge.{domain}");
                dns.set_txt(&name, &b64(sha256(key_auth))).await?;
                if !self.propagation.is_zero() {
                    tokio::time::sleep(self.propagation).await;
                }
            }
        }
        Ok(())
    }

    /// Withdraws the answer; failures are logged, never fatal.
    async fn disarm(&self, domain: &str, token: &str, key_auth: &str) {
        match self.challenge {
            Challenge::Http01 => {
                lock(&self.http01).remove(token);
            }
            Challenge::TlsAlpn01 => self.store.clear_challenge(domain),
            Challenge::Dns01 => {
                if let Some(dns) = &self.dns {
                    let name = format!("_acme-challenge.{domain}");
                    if let Err(e) = dns.remove_txt(&name, &b64(sha256(key_auth))).await {
                        tracing::warn!(record = %name, error = %e, "cannot remove the DNS-01 TXT record; remove it by hand");
                    }
                }
            }
        }
    }
}

/// The self-signed certificate of TLS-ALPN-01 (RFC 8737): the domain as its only name and
/// the critical acmeIdentifier extension holding SHA-256 of the key authorization.
fn alpn_challenge_cert(domain: &str, key_auth: &str) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&sha256(
        key_auth,
    ))];
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = provider().key_provider.load_private_key(der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert.der().to_vec())],
        signing,
    )))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
