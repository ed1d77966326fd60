//! `[routes.api_keys]`: a key in a per-route header, checked against SHA-256 hashes from
//! `keys_file`, each key with an optional plan (a rate and a quota). The comparison runs
//! over every stored hash in constant time; the key itself is never stored or logged, only
//! its name. The key header is removed before forwarding and `x-api-key-name` is set.
//!
//! `keys_file` format:
//!
//! ```toml
//! [plans.gold]                 # optional named plans
//! requests = 100               # rate: requests per `per`, at most `burst` at once
//! per = "1m"
//! burst = 20
//! quota = 100000               # quota: requests per `quota_per` (default "1d")
//! quota_per = "1d"
//!
//! [[keys]]
//! name = "mobile-app"
//! key_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! plan = "gold"                # or the plan's fields inline: requests, per, burst, ...
//! ```

use std::collections::{BTreeMap, HashSet};

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use kakuremichi_config::policy::ApiKeysPolicy;
use kakuremichi_config::units::ConfigDuration;
use serde::Deserialize;

use crate::decision::Answer;
use crate::error::PolicyError;
use crate::rate_limit::gcra::Rate;
use crate::rate_limit::quota::Quota;
use crate::rate_limit::{Backend, Limiter, QuotaLimiter};

/// Set on forwarded requests to the name of the key that was presented.
pub const API_KEY_NAME_HEADER: HeaderName = HeaderName::from_static("x-api-key-name");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    plans: BTreeMap<String, PlanFields>,
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct PlanFields {
    requests: Option<u64>,
    per: Option<ConfigDuration>,
    burst: Option<u64>,
    quota: Option<u64>,
    quota_per: Option<ConfigDuration>,
}

impl PlanFields {
    fn is_empty(&self) -> bool {
        self.requests.is_none()
            && self.per.is_none()
            && self.burst.is_none()
            && self.quota.is_none()
            && self.quota_per.is_none()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    key_sha256: String,
    plan: Option<String>,
    requests: Option<u64>,
    per: Option<ConfigDuration>,
    burst: Option<u64>,
    quota: Option<u64>,
    quota_per: Option<ConfigDuration>,
}

impl KeyEntry {
    fn inline_plan(&self) -> PlanFields {
        PlanFields {
            requests: self.requests,
            per: self.per,
            burst: self.burst,
            quota: self.quota,
            quota_per: self.quota_per,
        }
    }
}

/// One accepted key.
pub(crate) struct ApiKey {
    pub name: String,
    name_value: HeaderValue,
    hash: [u8; 32],
    pub rate: Option<Limiter>,
    pub quota: Option<QuotaLimiter>,
}

pub(crate) struct ApiKeys {
    header: HeaderName,
    keys: Vec<ApiKey>,
}

/// Why a request's key was refused (401).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiKeyError {
    #[error("an API key is required in the {0} header")]
    Missing(HeaderName),
    #[error("the API key is not valid")]
    Invalid,
}

impl ApiKeyError {
    pub fn into_answer(self) -> Answer {
        let code = match self {
            ApiKeyError::Missing(_) => "missing_api_key",
            ApiKeyError::Invalid => "invalid_api_key",
        };
        Answer::new(StatusCode::UNAUTHORIZED, code, self.to_string())
    }
}

impl ApiKeys {
    /// Reads and checks `keys_file`. Plans use `backend` (the route's store, if any).
    pub fn build(route: &str, p: &ApiKeysPolicy, backend: &Backend) -> Result<Self, PolicyError> {
        let header = HeaderName::from_bytes(p.header.as_bytes()).map_err(|_| {
            PolicyError::invalid(
                route,
                format!(
                    "[routes.api_keys] header \"{}\" is not a valid header name",
                    p.header
                ),
            )
        })?;
        let path = &p.keys_file;
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::read_file(route, "keys_file", path, e))?;
        let file_err = |message: String| PolicyError::KeysFile {
            route: route.to_string(),
            path: path.clone(),
            message,
        };
        let file: KeysFile =
            toml::from_str(&text).map_err(|e| file_err(toml_message(&e, &text)))?;
        if file.keys.is_empty() {
            return Err(file_err("no [[keys]] entry".into()));
        }

        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut keys = Vec::with_capacity(file.keys.len());
        for (index, entry) in file.keys.into_iter().enumerate() {
            let at = |m: String| file_err(format!("keys[{index}] (\"{}\"): {m}", entry.name));
            if entry.name.is_empty() {
                return Err(file_err(format!("keys[{index}]: name is empty")));
            }
            let name_value = HeaderValue::from_str(&entry.name)
                .map_err(|_| at("the name must be printable ASCII".into()))?;
            if !names.insert(entry.name.clone()) {
                return Err(at("the name is used twice".into()));
            }
            let hash = parse_sha256(&entry.key_sha256)
                .ok_or_else(|| at("key_sha256 must be 64 hex digits".into()))?;
            if !hashes.insert(hash) {
                return Err(at("the same key_sha256 appears twice".into()));
            }
            let inline = entry.inline_plan();
            let plan = match (&entry.plan, inline.is_empty()) {
                (Some(_), false) => {
                    return Err(at(
                        "give either plan = \"NAME\" or the plan's fields inline, not both".into(),
                    ));
                }
                (Some(name), true) => file
                    .plans
                    .get(name)
                    .cloned()
                    .ok_or_else(|| at(format!("plan \"{name}\" is not defined in [plans]")))?,
                (None, _) => inline,
            };
            let (rate, quota) = plan_limits(&plan).map_err(at)?;
            let namespace = format!("{route}/plan/{}", entry.name);
            keys.push(ApiKey {
                rate: rate.map(|r| Limiter::new(namespace.clone(), r, backend.clone())),
                quota: quota.map(|q| QuotaLimiter::new(namespace, q, backend.clone())),
                name: entry.name,
                name_value,
                hash,
            });
        }
        Ok(ApiKeys { header, keys })
    }

    /// Finds the key of a request, removes the key header, and sets `x-api-key-name`
    /// (dropping any client-sent one first, `x_api_key_name` included).
    pub fn authenticate(&self, headers: &mut HeaderMap) -> Result<&ApiKey, ApiKeyError> {
        crate::decision::remove_with_aliases(headers, &API_KEY_NAME_HEADER);
        let presented = {
            let mut values = headers.get_all(&self.header).iter();
            match (values.next(), values.next()) {
                (Some(v), None) if !v.is_empty() => Some(digest(v.as_bytes())),
                (Some(_), _) => None,
                (None, _) => return Err(ApiKeyError::Missing(self.header.clone())),
            }
        };
        headers.remove(&self.header);
        let presented = presented.ok_or(ApiKeyError::Invalid)?;
        // Compare against every key, without stopping at a match.
        let mut found: Option<&ApiKey> = None;
        for key in &self.keys {
            if constant_time_eq(&key.hash, &presented) {
                found = Some(key);
            }
        }
        let key = found.ok_or(ApiKeyError::Invalid)?;
        headers.insert(API_KEY_NAME_HEADER, key.name_value.clone());
        Ok(key)
    }
}

fn plan_limits(p: &PlanFields) -> Result<(Option<Rate>, Option<Quota>), String> {
    let rate = match (p.requests, p.per) {
        (Some(requests), Some(per)) => Some(Rate::new(requests, per.get(), p.burst)?),
        (None, None) if p.burst.is_none() => None,
        _ => return Err("a plan rate needs both requests and per (burst is optional)".into()),
    };
    let quota = match (p.quota, p.quota_per) {
        (Some(q), per) => Some(Quota::new(
            q,
            per.map_or(std::time::Duration::from_secs(86_400), ConfigDuration::get),
        )?),
        (None, None) => None,
        (None, Some(_)) => return Err("quota_per is set without quota".into()),
    };
    Ok((rate, quota))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A TOML error as "line L, column C: message" (the file path is added by the caller).
fn toml_message(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

/// Hex SHA-256 of a key, as `key_sha256` wants it (for tools and tests).
pub fn key_sha256_hex(key: &str) -> String {
    digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_hashes() {
        let h = key_sha256_hex("test");
        assert_eq!(
            h,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert_eq!(parse_sha256(&h), Some(digest(b"test")));
        assert_eq!(parse_sha256(&h.to_uppercase()), Some(digest(b"test")));
        assert_eq!(parse_sha256(&h[..62]), None);
        assert_eq!(parse_sha256(&format!("{}zz", &h[..62])), None);
    }

    #[test]
    fn constant_time_compare() {
        let a = digest(b"a");
        let b = digest(b"b");
        assert!(constant_time_eq(&a, &a));
        assert!(!constant_time_eq(&a, &b));
    }

    #[test]
    fn plan_rules() {
        let mut p = PlanFields::default();
        assert_eq!(plan_limits(&p).unwrap(), (None, None));
        p.requests = Some(10);
        assert!(plan_limits(&p).is_err());
        p.per = Some(ConfigDuration(std::time::Duration::from_secs(1)));
        p.quota = Some(5);
        let (rate, quota) = plan_limits(&p).unwrap();
        assert_eq!(rate.unwrap().burst, 10);
        assert_eq!(quota.unwrap().period_secs, 86_400);
    }
}
