//! Cloudflare's DNS API (v4) as a [`DnsProvider`]: the zone is found by name (the longest
//! parent of the record that is a zone of the account), TXT records are created and deleted
//! with a bearer API token that needs the `Zone:DNS:Edit` permission.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;
use http::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{DnsError, DnsFuture, DnsProvider};
use crate::error::TlsError;
use crate::http_client::HttpClient;

/// Cloudflare's API root.
pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4";

/// The Cloudflare DNS API client.
pub struct Cloudflare {
    http: HttpClient,
    api_url: String,
    token: String,
    /// Record name → zone id.
    zones: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Cloudflare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloudflare")
            .field("api_url", &self.api_url)
            .field("token", &"***")
            .finish()
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    #[serde(default)]
    result: Value,
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Item {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    content: String,
}

impl Cloudflare {
    /// A client for `api_url` (default [`DEFAULT_API_URL`]) with a bearer `api_token`;
    /// `ca_roots` adds trust roots for the API's certificate.
    pub fn new(
        api_token: String,
        api_url: Option<String>,
        ca_roots: Option<&Path>,
    ) -> Result<Self, TlsError> {
        let api_url = api_url
            .unwrap_or_else(|| DEFAULT_API_URL.to_string())
            .trim_end_matches('/')
            .to_string();
        Ok(Self {
            http: HttpClient::new(ca_roots)?,
            api_url,
            token: api_token,
            zones: Mutex::default(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, DnsError> {
        let url = format!("{}{path}", self.api_url);
        let mut headers = vec![("authorization", format!("Bearer {}", self.token))];
        let body = match body {
            Some(v) => {
                headers.push(("content-type", "application/json".to_string()));
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let resp = self.http.send(method, &url, &headers, body).await?;
        let envelope: Envelope = serde_json::from_slice(&resp.body).map_err(|_| {
            DnsError::Protocol(format!(
                "{} answered {} without a JSON envelope",
                url, resp.status
            ))
        })?;
        if !resp.status.is_success() || !envelope.success {
            let message = envelope
                .errors
                .iter()
                .map(|e| format!("{} (code {})", e.message, e.code))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(DnsError::Api {
                status: resp.status.as_u16(),
                message: if message.is_empty() {
                    "no error message".into()
                } else {
                    message
                },
            });
        }
        Ok(envelope.result)
    }

    /// The id of the zone holding `record`: its parents are tried from the longest.
    async fn zone_id(&self, record: &str) -> Result<String, DnsError> {
        if let Some(id) = self.lock_zones().get(record) {
            return Ok(id.clone());
        }
        let mut candidate = record;
        while let Some((_, parent)) = candidate.split_once('.') {
            if !parent.contains('.') {
                break;
            }
            let found = self
                .call(Method::GET, &format!("/zones?name={parent}"), None)
                .await?;
            let zones: Vec<Item> = serde_json::from_value(found)
                .map_err(|e| DnsError::Protocol(format!("zone list: {e}")))?;
            if let Some(zone) = zones
                .into_iter()
                .find(|z| z.name.eq_ignore_ascii_case(parent))
            {
                self.lock_zones()
                    .insert(record.to_string(), zone.id.clone());
                return Ok(zone.id);
            }
            candidate = parent;
        }
        Err(DnsError::NoZone(record.to_string()))
    }

    fn lock_zones(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.zones.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn set(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let zone = self.zone_id(name).await?;
        self.call(
            Method::POST,
            &format!("/zones/{zone}/dns_records"),
            Some(json!({ "type": "TXT", "name": name, "content": value, "ttl": 60 })),
        )
        .await?;
        tracing::debug!(record = name, "TXT record created at Cloudflare");
        Ok(())
    }

    async fn remove(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let zone = self.zone_id(name).await?;
        let found = self
            .call(
                Method::GET,
                &format!("/zones/{zone}/dns_records?type=TXT&name={name}"),
                None,
            )
            .await?;
        let records: Vec<Item> = serde_json::from_value(found)
            .map_err(|e| DnsError::Protocol(format!("record list: {e}")))?;
        for record in records {
            // Cloudflare may return the content quoted.
            if record.content.trim_matches('"') == value {
                self.call(
                    Method::DELETE,
                    &format!("/zones/{zone}/dns_records/{}", record.id),
                    None,
                )
                .await?;
                tracing::debug!(record = name, "TXT record deleted at Cloudflare");
            }
        }
        Ok(())
    }
}

impl DnsProvider for Cloudflare {
    fn set_txt<'a>(&'a self, name: &'a str, value: &'a str) -> DnsFuture<'a> {
        Box::pin(self.set(name, value))
    }

    fn remove_txt<'a>(&'a self, name: &'a str, value: &'a str) -> DnsFuture<'a> {
        Box::pin(self.remove(name, value))
    }
}
