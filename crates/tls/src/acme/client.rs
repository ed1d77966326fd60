//! The RFC 8555 protocol: the directory, nonces, signed POSTs (retrying `badNonce`), the
//! account, and the order, authorization, challenge, finalize and certificate resources.
//! No scheduling and no state on disk: that is [`super::manager`]'s job.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::jws::{AccountKey, b64};
use crate::error::AcmeError;
use crate::http_client::{HttpClient, Response};

const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

/// An RFC 7807 problem document.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct Problem {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind.trim_start_matches("urn:ietf:params:acme:error:");
        write!(f, "{kind}: {}", self.detail)
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct Order {
    pub status: String,
    #[serde(default)]
    pub authorizations: Vec<String>,
    pub finalize: String,
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub error: Option<Problem>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Identifier {
    pub value: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Authorization {
    pub status: String,
    pub identifier: Identifier,
    #[serde(default)]
    pub challenges: Vec<Challenge>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Challenge {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub error: Option<Problem>,
}

/// A registered ACME account: signs every request with its key id.
pub(crate) struct Account {
    http: HttpClient,
    directory: Directory,
    key: AccountKey,
    kid: String,
    nonce: Mutex<Option<String>>,
}

impl Account {
    /// Fetches the directory and registers `key` (or finds its existing account).
    pub async fn register(
        http: HttpClient,
        directory_url: &str,
        key: AccountKey,
        email: Option<&str>,
    ) -> Result<Self, AcmeError> {
        let resp = http
            .send(Method::GET, directory_url, &[], Bytes::new())
            .await?;
        if !resp.status.is_success() {
            return Err(AcmeError::Protocol(format!(
                "directory {directory_url} answered {}",
                resp.status
            )));
        }
        let directory: Directory = parse(&resp, "directory")?;
        let mut account = Self {
            http,
            directory,
            key,
            kid: String::new(),
            nonce: Mutex::new(None),
        };
        let mut payload = json!({ "termsOfServiceAgreed": true });
        if let Some(email) = email {
            payload["contact"] = json!([format!("mailto:{email}")]);
        }
        let url = account.directory.new_account.clone();
        let resp = account.post(&url, Some(&payload), None).await?;
        account.kid = location(&resp)?;
        Ok(account)
    }

    pub fn key_authorization(&self, token: &str) -> String {
        self.key.key_authorization(token)
    }

    /// Creates an order for one identifier; returns its URL and body.
    pub async fn new_order(&self, host: &str) -> Result<(String, Order), AcmeError> {
        let payload = json!({ "identifiers": [{ "type": "dns", "value": host }] });
        let url = self.directory.new_order.clone();
        let resp = self.post(&url, Some(&payload), None).await?;
        let order_url = location(&resp)?;
        Ok((order_url, parse(&resp, "order")?))
    }

    pub async fn authorization(
        &self,
        url: &str,
    ) -> Result<(Authorization, Option<Duration>), AcmeError> {
        let resp = self.post(url, None, None).await?;
        Ok((parse(&resp, "authorization")?, retry_after(&resp)))
    }

    /// Tells the server the challenge is ready to be validated.
    pub async fn respond(&self, challenge_url: &str) -> Result<(), AcmeError> {
        self.post(challenge_url, Some(&json!({})), None).await?;
        Ok(())
    }

    pub async fn order(&self, url: &str) -> Result<(Order, Option<Duration>), AcmeError> {
        let resp = self.post(url, None, None).await?;
        Ok((parse(&resp, "order")?, retry_after(&resp)))
    }

    pub async fn finalize(&self, url: &str, csr_der: &[u8]) -> Result<Order, AcmeError> {
        let resp = self
            .post(url, Some(&json!({ "csr": b64(csr_der) })), None)
            .await?;
        parse(&resp, "order")
    }

    /// Downloads the PEM chain.
    pub async fn certificate(&self, url: &str) -> Result<Bytes, AcmeError> {
        let resp = self
            .post(url, None, Some("application/pem-certificate-chain"))
            .await?;
        Ok(resp.body)
    }

    async fn fresh_nonce(&self) -> Result<String, AcmeError> {
        if let Some(nonce) = self.lock_nonce().take() {
            return Ok(nonce);
        }
        let resp = self
            .http
            .send(Method::HEAD, &self.directory.new_nonce, &[], Bytes::new())
            .await?;
        replay_nonce(&resp)
            .ok_or_else(|| AcmeError::Protocol("newNonce answered without Replay-Nonce".into()))
    }

    fn lock_nonce(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.nonce.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A signed POST (`payload` `None`: POST-as-GET), retried on `badNonce`.
    async fn post(
        &self,
        url: &str,
        payload: Option<&Value>,
        accept: Option<&str>,
    ) -> Result<Response, AcmeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let nonce = self.fresh_nonce().await?;
            let mut protected = json!({ "alg": "ES256", "nonce": nonce, "url": url });
            if self.kid.is_empty() {
                protected["jwk"] = self.key.jwk();
            } else {
                protected["kid"] = json!(self.kid);
            }
            let body = self
                .key
                .sign(&protected, payload)
                .map_err(|e| AcmeError::Protocol(e.to_string()))?;
            let mut headers = vec![("content-type", "application/jose+json".to_string())];
            if let Some(accept) = accept {
                headers.push(("accept", accept.to_string()));
            }
            let resp = self
                .http
                .send(Method::POST, url, &headers, Bytes::from(body.to_string()))
                .await?;
            if let Some(nonce) = replay_nonce(&resp) {
                *self.lock_nonce() = Some(nonce);
            }
            if resp.status.is_success() {
                return Ok(resp);
            }
            let problem: Problem = serde_json::from_slice(&resp.body).unwrap_or_default();
            if problem.kind == BAD_NONCE && attempt < 5 {
                continue;
            }
            return Err(AcmeError::Problem {
                status: resp.status.as_u16(),
                kind: problem.kind,
                detail: problem.detail,
                retry_after: retry_after(&resp),
            });
        }
    }
}

fn parse<T: DeserializeOwned>(resp: &Response, what: &str) -> Result<T, AcmeError> {
    serde_json::from_slice(&resp.body)
        .map_err(|e| AcmeError::Protocol(format!("cannot read the {what}: {e}")))
}

fn location(resp: &Response) -> Result<String, AcmeError> {
    resp.headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| AcmeError::Protocol("answer without Location".into()))
}

fn replay_nonce(resp: &Response) -> Option<String> {
    resp.headers
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
fn retry_after(resp: &Response) -> Option<Duration> {
    resp.headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
