//! What [`crate::RoutePolicies::check`] decides: go on to the upstream (with response
//! headers to add and identities for the access log), or answer the client at once.

use std::time::Duration;

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The result of running a route's policies on a request head.
#[derive(Debug)]
#[must_use]
pub enum Decision {
    /// Forward the request; apply [`Outcome::apply_to_response`] to the upstream's response.
    Continue(Outcome),
    /// Do not forward; answer with this status (and a JSON error body, except for 204).
    Respond(Answer),
}

/// The request may go on.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Headers for the response to the client: CORS (`Access-Control-Allow-Origin`,
    /// `Access-Control-Allow-Credentials`, `Access-Control-Expose-Headers`, `Vary: Origin`)
    /// and rate-limit state (`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`,
    /// `RateLimit-Policy`).
    pub response_headers: HeaderMap,
    /// Name of the API key the request presented (never the key itself), for the access log.
    pub api_key_name: Option<String>,
    /// `sub` of the verified JWT, for the access log.
    pub subject: Option<String>,
}

impl Outcome {
    /// Adds [`Outcome::response_headers`] to an upstream response: `Vary` is appended to
    /// what the upstream sent, every other header replaces the upstream's value (so the
    /// gateway's CORS answer wins over an upstream's own).
    pub fn apply_to_response(&self, headers: &mut HeaderMap) {
        apply_headers(&self.response_headers, headers);
    }
}

/// An answer the gateway gives itself.
#[derive(Debug, Clone)]
pub struct Answer {
    /// 204 (CORS preflight, no body), 401, 403, 429 or 503.
    pub status: StatusCode,
    /// The machine-readable `error` field of the JSON body (`"cors_preflight"` for 204).
    pub code: &'static str,
    /// A human-readable sentence for the `message` field; never holds a token or key.
    pub message: String,
    /// Headers to send: `WWW-Authenticate`, `Retry-After`, `RateLimit-*`, CORS headers.
    pub headers: HeaderMap,
    /// Name of the API key, when one was recognised before the request was refused.
    pub api_key_name: Option<String>,
    /// `sub` of the JWT, when one was verified before the request was refused.
    pub subject: Option<String>,
}

impl Answer {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Answer {
            status,
            code,
            message: message.into(),
            headers: HeaderMap::new(),
            api_key_name: None,
            subject: None,
        }
    }

    /// False for the 204 of a CORS preflight: send no body and no content type.
    pub fn has_body(&self) -> bool {
        self.status != StatusCode::NO_CONTENT
    }

    /// Seconds from the `Retry-After` header, when the answer carries one.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    pub(crate) fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Merges headers computed earlier (CORS on a refused actual request), so that a
    /// browser can read the 401/403/429.
    pub(crate) fn merge(mut self, extra: &HeaderMap) -> Self {
        apply_headers(extra, &mut self.headers);
        self
    }
}

fn apply_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let mut last: Option<&HeaderName> = None;
    for (name, value) in from {
        if name == header::VARY || last == Some(name) {
            to.append(name.clone(), value.clone());
        } else {
            to.insert(name.clone(), value.clone());
        }
        last = Some(name);
    }
}

/// Removes `name` and every header spelled like it with `_` for `-` (`x_user_sub` for
/// `x-user-sub`). CGI-style servers (PHP, WSGI, Rack) map both spellings to one variable
/// (`HTTP_X_USER_SUB`), so a client could otherwise pose as an identity the gateway sets.
pub(crate) fn remove_with_aliases(headers: &mut HeaderMap, name: &HeaderName) {
    headers.remove(name);
    let wanted = name.as_str().as_bytes();
    let aliases: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str().as_bytes();
            k.len() == wanted.len()
                && k.contains(&b'_')
                && k.iter()
                    .zip(wanted)
                    .all(|(a, b)| a == b || (matches!(a, b'_' | b'-') && matches!(b, b'_' | b'-')))
        })
        .cloned()
        .collect();
    for alias in aliases {
        headers.remove(alias);
    }
}

/// Whole seconds, rounded up (`Retry-After: 0` would invite an immediate retry).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 { s + 1 } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_with_underscores_are_removed() {
        let mut h = HeaderMap::new();
        for name in [
            "x-user-sub",
            "x_user_sub",
            "x_user-sub",
            "x-user-subs",
            "x-other",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        remove_with_aliases(&mut h, &HeaderName::from_static("x-user-sub"));
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, ["x-other", "x-user-subs"]);
    }
}
