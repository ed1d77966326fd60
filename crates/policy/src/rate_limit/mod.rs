//! Rate limits: `[routes.rate_limit]` and the rates and quotas of API key plans.
//!
//! A [`Limiter`] is a GCRA rate under a namespace (the route, and whether it is the route's
//! limit or a plan's), checked in memory or in a Redis store shared by several gateways.
//! Keys come from the client address, the API key's name, a JWT claim or a request header;
//! a request without the claim or header is limited by its address instead. When the store
//! cannot answer, `on_store_error = "allow"` (the default) lets the request through and
//! counts it; `"deny"` answers 503 `rate_limit_store_unavailable` with `Retry-After: 1`
//! (the client did nothing wrong, so not 429).

pub(crate) mod gcra;
pub(crate) mod memory;
pub(crate) mod quota;

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use kakuremichi_config::policy::{RateLimitPolicy, StoreErrorMode};

use crate::decision::{Answer, ceil_secs};
use crate::env::PolicyEnv;
use crate::error::PolicyError;
use crate::redis::{GCRA_SCRIPT, QUOTA_SCRIPT, RedisClient, RedisUrl};
use gcra::{Rate, Verdict};
use quota::{Quota, QuotaVerdict};

pub(crate) const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub(crate) const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub(crate) const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Where counters live.
#[derive(Clone)]
pub(crate) enum Backend {
    Memory,
    Store {
        client: Arc<RedisClient>,
        on_error: StoreErrorMode,
    },
}

impl Backend {
    /// The backend named by a route's `rate_limit.store` (memory when absent).
    pub fn build(
        route: &str,
        policy: Option<&RateLimitPolicy>,
        env: &PolicyEnv,
    ) -> Result<Backend, PolicyError> {
        match policy.and_then(|p| p.store.as_deref()) {
            None => Ok(Backend::Memory),
            Some(url) => {
                let url = RedisUrl::parse(url)
                    .map_err(|m| PolicyError::invalid(route, format!("[routes.rate_limit] {m}")))?;
                Ok(Backend::Store {
                    client: env.store(url),
                    on_error: policy.map(|p| p.on_store_error).unwrap_or_default(),
                })
            }
        }
    }
}

/// The outcome of one limiter or quota check.
pub(crate) enum Checked<V> {
    Decided(V),
    /// The store did not answer; `on_store_error` decides.
    StoreFailed(StoreErrorMode),
}

/// A rate under a namespace, with its backend.
pub(crate) struct Limiter {
    namespace: String,
    pub rate: Rate,
    backend: Backend,
}

impl Limiter {
    pub fn new(namespace: String, rate: Rate, backend: Backend) -> Limiter {
        Limiter {
            namespace,
            rate,
            backend,
        }
    }

    pub async fn check(&self, env: &PolicyEnv, key: &str) -> Checked<Verdict> {
        match &self.backend {
            Backend::Memory => {
                let hash = env.hasher.hash_one((&self.namespace, key));
                Checked::Decided(env.memory.check(hash, &self.rate))
            }
            Backend::Store { client, on_error } => {
                let redis_key = store_key("rl", &self.namespace, key, None);
                let interval_us = (self.rate.interval_ns / 1000).max(1).to_string();
                let burst = self.rate.burst.to_string();
                let reply = client
                    .eval(
                        &GCRA_SCRIPT,
                        &[redis_key.as_bytes()],
                        &[interval_us.as_bytes(), burst.as_bytes()],
                    )
                    .await;
                let step =
                    reply
                        .map_err(|e| e.to_string())
                        .and_then(|r| match r.ints().as_deref() {
                            Some(&[allowed, ahead, wait]) => Ok((allowed == 1, ahead, wait)),
                            _ => Err("unexpected reply to the GCRA script".to_string()),
                        });
                match step {
                    Ok((allowed, ahead_us, wait_us)) => {
                        let ns = |us: i64| u64::try_from(us).unwrap_or(0).saturating_mul(1000);
                        Checked::Decided(Verdict::from_step(
                            allowed,
                            ns(ahead_us),
                            ns(wait_us),
                            &self.rate,
                        ))
                    }
                    Err(why) => {
                        store_failed(env, client, &why);
                        Checked::StoreFailed(*on_error)
                    }
                }
            }
        }
    }
}

/// A plan's quota under a namespace, with its backend.
pub(crate) struct QuotaLimiter {
    namespace: String,
    pub quota: Quota,
    backend: Backend,
}

impl QuotaLimiter {
    pub fn new(namespace: String, quota: Quota, backend: Backend) -> QuotaLimiter {
        QuotaLimiter {
            namespace,
            quota,
            backend,
        }
    }

    pub async fn check(&self, env: &PolicyEnv, key: &str) -> Checked<QuotaVerdict> {
        let now = quota::unix_now();
        match &self.backend {
            Backend::Memory => {
                let hash = env.hasher.hash_one((&self.namespace, key));
                Checked::Decided(env.quotas.check(hash, &self.quota, now))
            }
            Backend::Store { client, on_error } => {
                let (start, left) = self.quota.window(now);
                let redis_key = store_key("quota", &self.namespace, key, Some(start));
                let limit = self.quota.limit.to_string();
                let ttl_ms = (left.as_millis() + 60_000).to_string();
                let reply = client
                    .eval(
                        &QUOTA_SCRIPT,
                        &[redis_key.as_bytes()],
                        &[limit.as_bytes(), ttl_ms.as_bytes()],
                    )
                    .await;
                let step =
                    reply
                        .map_err(|e| e.to_string())
                        .and_then(|r| match r.ints().as_deref() {
                            Some(&[allowed, used]) => Ok((allowed == 1, used)),
                            _ => Err("unexpected reply to the quota script".to_string()),
                        });
                match step {
                    Ok((allowed, used)) => Checked::Decided(QuotaVerdict {
                        allowed,
                        remaining: self
                            .quota
                            .limit
                            .saturating_sub(u64::try_from(used).unwrap_or(0)),
                        reset: left,
                    }),
                    Err(why) => {
                        store_failed(env, client, &why);
                        Checked::StoreFailed(*on_error)
                    }
                }
            }
        }
    }
}

fn store_failed(env: &PolicyEnv, client: &RedisClient, why: &str) {
    env.stats.store_errors.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(
        target: "kakuremichi::policy",
        store = %client.redacted_url(),
        "rate-limit store error: {why}"
    );
}

/// `kakuremichi:{kind}:{namespace}:{sha256(key)}[:{window}]`. Keys are hashed so that a
/// long header value cannot bloat the store, identically on every gateway.
fn store_key(kind: &str, namespace: &str, key: &str, window: Option<u64>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match window {
        Some(w) => format!("kakuremichi:{kind}:{namespace}:{hex}:{w}"),
        None => format!("kakuremichi:{kind}:{namespace}:{hex}"),
    }
}

/// Which part of a request a route's limit is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    Ip,
    ApiKey,
    Claim(String),
    Header(HeaderName),
}

/// `[routes.rate_limit]` of one route.
pub(crate) struct RouteRateLimit {
    pub source: KeySource,
    pub limiter: Limiter,
}

impl RouteRateLimit {
    pub fn build(
        route: &str,
        p: &RateLimitPolicy,
        backend: Backend,
        has_api_keys: bool,
        has_jwt: bool,
    ) -> Result<RouteRateLimit, PolicyError> {
        let invalid = |m: String| PolicyError::invalid(route, format!("[routes.rate_limit] {m}"));
        let source = match p.key.as_str() {
            "ip" => KeySource::Ip,
            "api_key" if has_api_keys => KeySource::ApiKey,
            "api_key" => return Err(invalid("key = \"api_key\" needs [routes.api_keys]".into())),
            other => {
                if let Some(claim) = other.strip_prefix("claim:").filter(|c| !c.is_empty()) {
                    if !has_jwt {
                        return Err(invalid(format!("key = \"{other}\" needs [routes.jwt]")));
                    }
                    KeySource::Claim(claim.to_string())
                } else if let Some(h) = other.strip_prefix("header:").filter(|h| !h.is_empty()) {
                    let name = HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| invalid(format!("\"{h}\" is not a valid header name")))?;
                    KeySource::Header(name)
                } else {
                    return Err(invalid(format!(
                        "key \"{other}\" must be \"ip\", \"api_key\", \"claim:NAME\" or \"header:NAME\""
                    )));
                }
            }
        };
        let rate = Rate::new(p.requests, p.per.get(), p.burst).map_err(invalid)?;
        Ok(RouteRateLimit {
            source,
            limiter: Limiter::new(format!("{route}/route"), rate, backend),
        })
    }
}

/// The key of an IP address: its canonical text, prefixed so it cannot collide with a
/// header or claim value.
pub(crate) fn ip_key(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        // Written by hand: this runs per request, and the formatter is slow for it.
        IpAddr::V4(v4) => {
            let mut key = String::with_capacity(18);
            key.push_str("ip:");
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    key.push('.');
                }
                if octet >= 100 {
                    key.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    key.push(char::from(b'0' + octet / 10 % 10));
                }
                key.push(char::from(b'0' + octet % 10));
            }
            key
        }
        v6 => format!("ip:{v6}"),
    }
}

/// `RateLimit-*` headers for a verdict.
pub(crate) fn rate_headers(v: &Verdict, rate: &Rate, headers: &mut HeaderMap) {
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(v.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(v.remaining));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(ceil_secs(v.reset)));
    headers.insert(RATELIMIT_POLICY, rate.policy_header());
}

/// 429 for a refused rate.
pub(crate) fn rate_limited(v: &Verdict, rate: &Rate) -> Answer {
    let mut answer = Answer::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; retry after the time in Retry-After",
    );
    rate_headers(v, rate, &mut answer.headers);
    answer
        .headers
        .insert(RETRY_AFTER, retry_after(v.retry_after));
    answer
}

/// 429 for a used-up quota, with `Retry-After` until the window resets.
pub(crate) fn quota_exceeded(v: &QuotaVerdict) -> Answer {
    Answer::new(
        StatusCode::TOO_MANY_REQUESTS,
        "quota_exceeded",
        "the quota of this API key's plan is used up until the window resets",
    )
    .with_header(RETRY_AFTER, retry_after(v.reset))
}

/// 503 for `on_store_error = "deny"`.
pub(crate) fn store_unavailable() -> Answer {
    Answer::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "rate_limit_store_unavailable",
        "the rate-limit store is unavailable",
    )
    .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
}

fn retry_after(d: Duration) -> HeaderValue {
    HeaderValue::from(ceil_secs(d).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_keys_fold_mapped_v4() {
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(mapped), ip_key(v4));
    }

    #[test]
    fn ip_keys_match_the_address_text() {
        for text in [
            "0.0.0.0",
            "9.10.99.100",
            "192.0.2.1",
            "255.255.255.255",
            "2001:db8::1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_key(ip), format!("ip:{text}"));
        }
    }

    #[test]
    fn store_keys_are_hashed() {
        let k = store_key("rl", "r/route", &"x".repeat(10_000), None);
        assert!(k.len() < 80);
        assert!(k.starts_with("kakuremichi:rl:r/route:"));
        assert!(store_key("quota", "n", "k", Some(86_400)).ends_with(":86400"));
    }
}
