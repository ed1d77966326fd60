//! Per-route policies of the kakuremichi gateway: CORS answered at the edge, API keys with
//! plans (rate and quota), bearer JWTs verified against a JWKS or a shared secret, and rate
//! limits kept in memory or in Redis.
//!
//! The gateway builds one [`RoutePolicies`] per route when it loads (or reloads) its
//! configuration, all sharing one [`PolicyEnv`], and calls [`RoutePolicies::check`] on each
//! request head after its IP rules and before its header edits. `check` runs, in order:
//!
//! 1. CORS preflight (answered with 204 or 403; other requests only collect CORS headers),
//! 2. API key (401), then JWT (401 invalid or missing, 403 roles or scopes),
//! 3. rate limits: the key's plan rate, the route's `rate_limit`, then the plan's quota (429,
//!    or 503 when the shared store is down and `on_store_error = "deny"`).
//!
//! Modules: `cors`, `api_keys`, `jwt` (token, claims, algorithms), `jwks`
//! (key sets and their cache), `fetch` (HTTPS client), `rate_limit` (GCRA, memory table,
//! quotas), `redis` (RESP client).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod api_keys;
mod cors;
mod decision;
mod env;
mod error;
mod fetch;
mod jwks;
mod jwt;
mod rate_limit;
mod redis;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderMap;
use http::request::Parts;
use kakuremichi_config::policy::StoreErrorMode;
use kakuremichi_config::policy::{ApiKeysPolicy, CorsPolicy, JwtPolicy, RateLimitPolicy};

pub use api_keys::{API_KEY_NAME_HEADER, key_sha256_hex};
pub use decision::{Answer, Decision, Outcome};
pub use env::{PolicyEnv, PolicyEnvOptions, PolicyStats};
pub use error::PolicyError;

use api_keys::ApiKeys;
use cors::{Cors, CorsStep};
use jwt::JwtVerifier;
use rate_limit::gcra::{Rate, Verdict};
use rate_limit::{Backend, Checked, KeySource, RouteRateLimit};

/// The policies of one route, built from its `[routes.*]` sections.
pub struct RoutePolicies {
    route: String,
    env: Arc<PolicyEnv>,
    cors: Option<Cors>,
    api_keys: Option<ApiKeys>,
    jwt: Option<JwtVerifier>,
    rate_limit: Option<RouteRateLimit>,
}

impl std::fmt::Debug for RoutePolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutePolicies")
            .field("route", &self.route)
            .field("cors", &self.cors.is_some())
            .field("api_keys", &self.api_keys.is_some())
            .field("jwt", &self.jwt.is_some())
            .field("rate_limit", &self.rate_limit.is_some())
            .finish()
    }
}

impl RoutePolicies {
    /// Builds a route's policies; reads `keys_file` and `secret_file` now. Errors name the
    /// route and the file or key at fault. Network resources (JWKS, Redis) are reached
    /// lazily, on first use (see [`RoutePolicies::warm`]).
    pub fn build(
        route_name: &str,
        jwt: Option<&JwtPolicy>,
        api_keys: Option<&ApiKeysPolicy>,
        rate_limit: Option<&RateLimitPolicy>,
        cors: Option<&CorsPolicy>,
        env: &Arc<PolicyEnv>,
    ) -> Result<Self, PolicyError> {
        let backend = Backend::build(route_name, rate_limit, env)?;
        let cors = cors.map(|c| Cors::build(route_name, c)).transpose()?;
        let api_keys = api_keys
            .map(|a| ApiKeys::build(route_name, a, &backend))
            .transpose()?;
        let jwt = jwt
            .map(|j| JwtVerifier::build(route_name, j, env))
            .transpose()?;
        let rate_limit = rate_limit
            .map(|r| {
                RouteRateLimit::build(
                    route_name,
                    r,
                    backend.clone(),
                    api_keys.is_some(),
                    jwt.is_some(),
                )
            })
            .transpose()?;
        Ok(RoutePolicies {
            route: route_name.to_string(),
            env: env.clone(),
            cors,
            api_keys,
            jwt,
            rate_limit,
        })
    }

    /// True when the route has none of these policies (then `check` always continues).
    pub fn is_empty(&self) -> bool {
        self.cors.is_none()
            && self.api_keys.is_none()
            && self.jwt.is_none()
            && self.rate_limit.is_none()
    }

    /// True when the route answers CORS preflights (`[routes.cors]`).
    pub fn has_cors(&self) -> bool {
        self.cors.is_some()
    }

    /// Fetches the route's JWKS now if no route fetched it yet, so that the first request
    /// does not wait for it. Optional; failures are logged and retried on demand.
    pub async fn warm(&self) {
        if let Some(jwt) = &self.jwt {
            jwt.warm().await;
        }
    }

    /// Runs the route's policies on a request head. May edit request headers: removes the
    /// API key header and sets `x-api-key-name`; removes client-sent `forward_claims`
    /// headers and sets them from the verified claims.
    pub async fn check(&self, head: &mut Parts, client_ip: IpAddr) -> Decision {
        let mut cors_headers = HeaderMap::new();
        if let Some(cors) = &self.cors {
            match cors.evaluate(head) {
                CorsStep::Preflight(answer) => return Decision::Respond(answer),
                CorsStep::Actual(headers) => cors_headers = headers,
            }
        }
        let mut outcome = Outcome::default();
        let refuse = |answer: Answer, outcome: &Outcome| {
            tracing::debug!(
                target: "kakuremichi::policy",
                route = %self.route,
                code = answer.code,
                api_key = outcome.api_key_name.as_deref().unwrap_or(""),
                "request refused: {}",
                answer.message
            );
            let mut answer = answer.merge(&cors_headers);
            answer.api_key_name = outcome.api_key_name.clone();
            answer.subject = outcome.subject.clone();
            Decision::Respond(answer)
        };

        let mut key = None;
        if let Some(keys) = &self.api_keys {
            match keys.authenticate(&mut head.headers) {
                Ok(k) => {
                    outcome.api_key_name = Some(k.name.clone());
                    key = Some(k);
                }
                Err(e) => return refuse(e.into_answer(), &outcome),
            }
        }

        let mut verified = None;
        if let Some(jwt) = &self.jwt {
            let result = jwt.verify(&head.headers).await;
            jwt.strip_forwarded(&mut head.headers);
            let v = match result {
                Ok(v) => v,
                Err(e) => return refuse(e.into_answer(), &outcome),
            };
            outcome.subject = v.subject();
            if let Err(e) = jwt.authorize(&v) {
                return refuse(e.into_answer(), &outcome);
            }
            jwt.forward(&v, &mut head.headers);
            verified = Some(v);
        }

        // The most restrictive verdict among the allowed ones goes into the headers.
        let mut shown: Option<(Verdict, &Rate)> = None;
        let mut show = |v: Verdict, rate| {
            let tighter = shown.as_ref().is_none_or(|(s, _)| {
                (v.remaining, std::cmp::Reverse(v.reset))
                    < (s.remaining, std::cmp::Reverse(s.reset))
            });
            if tighter {
                shown = Some((v, rate));
            }
        };

        if let Some(limiter) = key.and_then(|k| k.rate.as_ref()) {
            let name = key.map_or("", |k| k.name.as_str());
            match limiter.check(&self.env, name).await {
                Checked::Decided(v) if !v.allowed => {
                    return refuse(rate_limit::rate_limited(&v, &limiter.rate), &outcome);
                }
                Checked::Decided(v) => show(v, &limiter.rate),
                Checked::StoreFailed(StoreErrorMode::Deny) => {
                    return refuse(rate_limit::store_unavailable(), &outcome);
                }
                Checked::StoreFailed(StoreErrorMode::Allow) => {}
            }
        }

        if let Some(rl) = &self.rate_limit {
            let limit_key = match &rl.source {
                KeySource::Ip => rate_limit::ip_key(client_ip),
                KeySource::ApiKey => match &outcome.api_key_name {
                    Some(name) => format!("key:{name}"),
                    None => rate_limit::ip_key(client_ip),
                },
                KeySource::Claim(claim) => verified
                    .as_ref()
                    .and_then(|v| jwt::claims::lookup(&v.claims, claim))
                    .and_then(jwt::claims::render)
                    .map_or_else(|| rate_limit::ip_key(client_ip), |v| format!("claim:{v}")),
                KeySource::Header(name) => head.headers.get(name).map_or_else(
                    || rate_limit::ip_key(client_ip),
                    |v| format!("header:{}", String::from_utf8_lossy(v.as_bytes())),
                ),
            };
            match rl.limiter.check(&self.env, &limit_key).await {
                Checked::Decided(v) if !v.allowed => {
                    return refuse(rate_limit::rate_limited(&v, &rl.limiter.rate), &outcome);
                }
                Checked::Decided(v) => show(v, &rl.limiter.rate),
                Checked::StoreFailed(StoreErrorMode::Deny) => {
                    return refuse(rate_limit::store_unavailable(), &outcome);
                }
                Checked::StoreFailed(StoreErrorMode::Allow) => {}
            }
        }

        if let Some(quota) = key.and_then(|k| k.quota.as_ref()) {
            let name = key.map_or("", |k| k.name.as_str());
            match quota.check(&self.env, name).await {
                Checked::Decided(v) if !v.allowed => {
                    return refuse(rate_limit::quota_exceeded(&v), &outcome);
                }
                Checked::Decided(_) | Checked::StoreFailed(StoreErrorMode::Allow) => {}
                Checked::StoreFailed(StoreErrorMode::Deny) => {
                    return refuse(rate_limit::store_unavailable(), &outcome);
                }
            }
        }

        outcome.response_headers = cors_headers;
        if let Some((v, rate)) = shown {
            rate_limit::rate_headers(&v, rate, &mut outcome.response_headers);
        }
        Decision::Continue(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}

    /// The gateway keeps policies in an `Arc` and awaits `check` inside hyper services,
    /// which need `Send` futures.
    #[test]
    fn policies_are_shareable_and_check_is_send() {
        let env = PolicyEnv::new(None).unwrap();
        let policies = RoutePolicies::build("r", None, None, None, None, &env).unwrap();
        assert_send_sync(&policies);
        assert_send_sync(&*env);
        let mut head = http::Request::new(()).into_parts().0;
        let fut = policies.check(&mut head, IpAddr::from([127, 0, 0, 1]));
        assert_send(&fut);
    }
}
