//! `[routes.jwt]`: bearer tokens from `Authorization` (never the query string), verified
//! against a JWKS (RS*, PS*, ES256/384, EdDSA) or a shared secret (HS*), then `exp`/`nbf`
//! (60 s leeway), `iss`, `aud` or `client_id`, roles (any of) and scopes (all of).
//! Failures before the roles check are 401 with `WWW-Authenticate: Bearer
//! error="invalid_token"`; missing roles or scopes are 403.

pub(crate) mod alg;
pub(crate) mod cache;
pub(crate) mod claims;
pub(crate) mod token;

use std::sync::Arc;

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use kakuremichi_config::policy::JwtPolicy;
use serde_json::{Map, Value};

use crate::decision::Answer;
use crate::env::PolicyEnv;
use crate::error::PolicyError;
use crate::jwks::JwksCache;
use alg::{Algorithm, KeyKind};
use token::{MAX_TOKEN_LEN, Token};

/// Why a token was refused. Display texts go to clients; they never quote the token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwtError {
    #[error("a bearer token is required in the Authorization header")]
    Missing,
    #[error("the bearer token is larger than 16 KiB")]
    TooLarge,
    #[error("the bearer token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm is not accepted on this route")]
    AlgorithmNotAllowed,
    #[error("the token's key does not fit its algorithm")]
    KeyMismatch,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the signing keys are unavailable; try again later")]
    KeysUnavailable,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's claims are invalid: {0}")]
    Claims(&'static str),
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token was issued for another audience")]
    WrongAudience,
    #[error("the token lacks a role required on this route")]
    MissingRole,
    #[error("the token lacks a scope required on this route")]
    MissingScope,
}

impl JwtError {
    pub fn into_answer(self) -> Answer {
        let (status, code, www) = match self {
            JwtError::MissingRole => (
                StatusCode::FORBIDDEN,
                "insufficient_role",
                r#"Bearer error="insufficient_scope""#,
            ),
            JwtError::MissingScope => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                r#"Bearer error="insufficient_scope""#,
            ),
            JwtError::Missing => (
                StatusCode::UNAUTHORIZED,
                "missing_token",
                r#"Bearer error="invalid_token""#,
            ),
            _ => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                r#"Bearer error="invalid_token""#,
            ),
        };
        Answer::new(status, code, self.to_string())
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static(www))
    }
}

/// The claims of a token that passed every check.
pub(crate) struct Verified {
    pub claims: Arc<Map<String, Value>>,
}

impl Verified {
    pub fn subject(&self) -> Option<String> {
        self.claims
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

pub(crate) struct JwtVerifier {
    algorithms: Vec<Algorithm>,
    secrets: Vec<(Algorithm, ring::hmac::Key)>,
    jwks: Option<Arc<JwksCache>>,
    issuer: Option<String>,
    audiences: Vec<String>,
    roles_claim: Option<String>,
    require_roles: Vec<String>,
    scopes_claim: String,
    require_scopes: Vec<String>,
    forward_claims: Vec<(HeaderName, String)>,
    /// Tokens that passed [`JwtVerifier::verify`] on this route.
    verified: cache::VerifiedCache,
}

/// Headers a claim may never be forwarded as.
const RESERVED_HEADERS: [&str; 7] = [
    "host",
    "authorization",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "te",
];

impl JwtVerifier {
    pub fn build(route: &str, p: &JwtPolicy, env: &Arc<PolicyEnv>) -> Result<Self, PolicyError> {
        let invalid = |m: String| PolicyError::invalid(route, m);
        if p.algorithms.is_empty() {
            return Err(invalid("[routes.jwt] algorithms must not be empty".into()));
        }
        let mut algorithms = Vec::new();
        for name in &p.algorithms {
            let alg = Algorithm::parse(name).ok_or_else(|| {
                if name.eq_ignore_ascii_case("none") {
                    invalid("[routes.jwt] algorithm \"none\" is never accepted".into())
                } else {
                    let known: Vec<_> = Algorithm::ALL.iter().map(|a| a.name()).collect();
                    invalid(format!(
                        "[routes.jwt] unknown algorithm \"{name}\"; supported: {}",
                        known.join(", ")
                    ))
                }
            })?;
            if alg.key_kind() == KeyKind::Secret && p.secret_file.is_none() {
                return Err(invalid(format!(
                    "[routes.jwt] algorithm {alg} needs secret_file"
                )));
            }
            if alg.key_kind() != KeyKind::Secret && p.jwks_uri.is_none() {
                return Err(invalid(format!(
                    "[routes.jwt] algorithm {alg} needs jwks_uri (with only secret_file, set algorithms = [\"HS256\"])"
                )));
            }
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }

        let mut secrets = Vec::new();
        if let Some(path) = &p.secret_file {
            let hs: Vec<Algorithm> = algorithms
                .iter()
                .copied()
                .filter(|a| a.key_kind() == KeyKind::Secret)
                .collect();
            if hs.is_empty() {
                return Err(invalid(
                    "[routes.jwt] secret_file is set but algorithms lists no HS256, HS384 or HS512"
                        .into(),
                ));
            }
            let raw = std::fs::read(path)
                .map_err(|e| PolicyError::read_file(route, "secret_file", path, e))?;
            let secret = trim_trailing_whitespace(&raw);
            for alg in hs {
                let Some(hmac) = alg.hmac() else { continue };
                let min = hmac.digest_algorithm().output_len();
                if secret.len() < min {
                    return Err(invalid(format!(
                        "[routes.jwt] secret_file {} holds {} bytes; {alg} needs at least {min}",
                        path.display(),
                        secret.len()
                    )));
                }
                secrets.push((alg, ring::hmac::Key::new(hmac, secret)));
            }
        }

        let jwks = match &p.jwks_uri {
            Some(uri) => {
                let uri = crate::fetch::check_jwks_uri(uri).map_err(&invalid)?;
                Some(env.jwks_cache(uri))
            }
            None => None,
        };

        if !p.require_roles.is_empty() && p.roles_claim.is_none() {
            return Err(invalid(
                "[routes.jwt] require_roles needs roles_claim (for Cognito: \"cognito:groups\")"
                    .into(),
            ));
        }

        let mut forward_claims = Vec::new();
        for (name, claim) in &p.forward_claims {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                invalid(format!(
                    "[routes.jwt] forward_claims: \"{name}\" is not a valid header name"
                ))
            })?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(invalid(format!(
                    "[routes.jwt] forward_claims: a claim cannot be forwarded as \"{name}\""
                )));
            }
            if claim.is_empty() {
                return Err(invalid(format!(
                    "[routes.jwt] forward_claims: the claim for \"{name}\" is empty"
                )));
            }
            forward_claims.push((header, claim.clone()));
        }

        Ok(JwtVerifier {
            algorithms,
            secrets,
            jwks,
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            roles_claim: p.roles_claim.clone(),
            require_roles: p.require_roles.clone(),
            scopes_claim: p.scopes_claim.clone().unwrap_or_else(|| "scope".into()),
            require_scopes: p.require_scopes.clone(),
            forward_claims,
            verified: cache::VerifiedCache::new(cache::CAPACITY),
        })
    }

    /// Fetches the JWKS now if it was never fetched.
    pub async fn warm(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.warm().await;
        }
    }

    /// Removes client-sent headers that `forward_claims` will set (and their spellings
    /// with `_` for `-`), so that a client can never pose as a claim.
    pub fn strip_forwarded(&self, headers: &mut HeaderMap) {
        for (name, _) in &self.forward_claims {
            crate::decision::remove_with_aliases(headers, name);
        }
    }

    /// Sets the `forward_claims` headers from verified claims. A claim that is absent, or
    /// that cannot be a header value, is not forwarded.
    pub fn forward(&self, verified: &Verified, headers: &mut HeaderMap) {
        for (name, claim) in &self.forward_claims {
            let value = claims::lookup(&verified.claims, claim)
                .and_then(claims::render)
                .and_then(|s| HeaderValue::from_str(&s).ok());
            if let Some(value) = value {
                headers.insert(name.clone(), value);
            }
        }
    }

    /// Verifies the bearer token of a request head: signature, times, issuer, audience.
    /// A token that passed before on this route, with the same key set, skips the
    /// signature (the costly part: tens of µs for RS256) but not the time checks.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Verified, JwtError> {
        let raw = bearer_token(headers)?;
        let now = claims::now_unix();
        let cacheable = cache::cacheable(raw);
        if cacheable {
            let generation = self.jwks.as_ref().and_then(|j| j.generation());
            if let Some(claims) = self.verified.get(raw, generation) {
                claims::check_times(&claims, now)?;
                return Ok(Verified { claims });
            }
        }
        let token = Token::parse(raw)?;
        let alg = Algorithm::parse(&token.alg).ok_or(JwtError::AlgorithmNotAllowed)?;
        if !self.algorithms.contains(&alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let (valid, generation) = if alg.key_kind() == KeyKind::Secret {
            let valid = self.secrets.iter().any(|(a, key)| {
                *a == alg && ring::hmac::verify(key, token.signing_input, &token.signature).is_ok()
            });
            (valid, None)
        } else {
            let jwks = self.jwks.as_ref().ok_or(JwtError::AlgorithmNotAllowed)?;
            let (keys, generation) = jwks.candidates(token.kid.as_deref(), alg).await?;
            let valid = keys
                .iter()
                .any(|k| k.verify(alg, token.signing_input, &token.signature));
            (valid, Some(generation))
        };
        if !valid {
            return Err(JwtError::BadSignature);
        }
        let claims = token.claims;
        claims::check_times(&claims, now)?;
        if let Some(issuer) = &self.issuer {
            claims::check_issuer(&claims, issuer)?;
        }
        if !self.audiences.is_empty() {
            claims::check_audience(&claims, &self.audiences)?;
        }
        let claims = Arc::new(claims);
        if cacheable {
            self.verified.insert(raw, claims.clone(), generation, now);
        }
        Ok(Verified { claims })
    }

    /// Checks roles (any of `require_roles`) and scopes (all of `require_scopes`) of a
    /// verified token: 403 material.
    pub fn authorize(&self, verified: &Verified) -> Result<(), JwtError> {
        let claims = &verified.claims;
        if let Some(path) = &self.roles_claim
            && !self.require_roles.is_empty()
        {
            let roles = claims::lookup(claims, path)
                .map(|v| claims::string_list(v, true))
                .unwrap_or_default();
            if !self
                .require_roles
                .iter()
                .any(|r| roles.contains(&r.as_str()))
            {
                return Err(JwtError::MissingRole);
            }
        }
        if !self.require_scopes.is_empty() {
            let scopes = claims::lookup(claims, &self.scopes_claim)
                .map(|v| claims::string_list(v, false))
                .unwrap_or_default();
            if !self
                .require_scopes
                .iter()
                .all(|s| scopes.contains(&s.as_str()))
            {
                return Err(JwtError::MissingScope);
            }
        }
        Ok(())
    }
}

/// The token of `Authorization: Bearer <token>`: exactly one such header, scheme matched
/// case-insensitively. Tokens anywhere else (query string, cookies) are ignored.
fn bearer_token(headers: &HeaderMap) -> Result<&str, JwtError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(JwtError::Missing)?;
    if values.next().is_some() {
        return Err(JwtError::Malformed("more than one Authorization header"));
    }
    if value.len() > MAX_TOKEN_LEN + 7 {
        return Err(JwtError::TooLarge);
    }
    let value = value
        .to_str()
        .map_err(|_| JwtError::Malformed("the Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(JwtError::Malformed("expected \"Bearer <token>\""))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(JwtError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(JwtError::Missing);
    }
    Ok(token)
}

fn trim_trailing_whitespace(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert!(matches!(bearer_token(&h), Err(JwtError::Missing)));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(matches!(bearer_token(&h), Err(JwtError::Missing)));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer a.b.c"),
        );
        assert_eq!(bearer_token(&h).unwrap(), "a.b.c");
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x.y.z"),
        );
        assert!(bearer_token(&h).is_err());
    }

    #[test]
    fn trims_secret_file_newline() {
        assert_eq!(trim_trailing_whitespace(b"secret\r\n"), b"secret");
        assert_eq!(trim_trailing_whitespace(b"\n"), b"");
    }
}
