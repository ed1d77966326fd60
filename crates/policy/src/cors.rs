//! `[routes.cors]`, answered at the gateway. A preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) gets 204 with the allowed methods, headers and max-age,
//! or 403 when the origin is not allowed. Other requests are forwarded; their responses get
//! `Access-Control-Allow-Origin` set to the request's origin (`*` only when `"*"` is listed
//! and credentials are off; `"*"` with credentials is refused at build time), plus
//! `Vary: Origin`. Origins are matched exactly (case-insensitively), or by
//! `"https://*.example.com"` for any subdomain.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use kakuremichi_config::policy::CorsPolicy;

use crate::decision::{Answer, ceil_secs};
use crate::error::PolicyError;

#[derive(Debug)]
enum OriginPattern {
    Exact(String),
    /// `scheme://*.suffix`: `prefix` is `scheme://`, `suffix` starts with a dot.
    Subdomains {
        prefix: String,
        suffix: String,
    },
}

impl OriginPattern {
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginPattern::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginPattern::Subdomains { prefix, suffix } => {
                let origin = origin.to_ascii_lowercase();
                origin.strip_prefix(prefix.as_str()).is_some_and(|host| {
                    host.len() > suffix.len()
                        && host.ends_with(suffix.as_str())
                        && !host.contains('/')
                })
            }
        }
    }
}

pub(crate) struct Cors {
    origins: Vec<OriginPattern>,
    any_origin: bool,
    credentials: bool,
    methods: HeaderValue,
    /// `None` with `any_header`: echo the requested headers.
    headers: Option<HeaderValue>,
    any_header: bool,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// What CORS made of a request.
pub(crate) enum CorsStep {
    /// A preflight, answered here (204 or 403).
    Preflight(Answer),
    /// Any other request: headers for its response.
    Actual(HeaderMap),
}

impl Cors {
    pub fn build(route: &str, p: &CorsPolicy) -> Result<Cors, PolicyError> {
        let invalid = |m: String| PolicyError::invalid(route, format!("[routes.cors] {m}"));
        let mut origins = Vec::new();
        let mut any_origin = false;
        for origin in &p.allow_origins {
            let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            if o == "*" {
                any_origin = true;
                continue;
            }
            let Some((scheme, host)) = o.split_once("://") else {
                return Err(invalid(format!(
                    "allow_origins: \"{origin}\" is not an origin like \"https://app.example.com\""
                )));
            };
            if scheme.is_empty() || host.is_empty() || host.contains('/') {
                return Err(invalid(format!(
                    "allow_origins: \"{origin}\" is not an origin like \"https://app.example.com\""
                )));
            }
            if let Some(rest) = host.strip_prefix('*') {
                if !rest.starts_with('.') || rest.len() < 2 || rest.contains('*') {
                    return Err(invalid(format!(
                        "allow_origins: \"{origin}\": a wildcard is only allowed as \"scheme://*.domain\""
                    )));
                }
                origins.push(OriginPattern::Subdomains {
                    prefix: format!("{scheme}://"),
                    suffix: rest.to_string(),
                });
            } else if host.contains('*') {
                return Err(invalid(format!(
                    "allow_origins: \"{origin}\": a wildcard is only allowed as \"scheme://*.domain\""
                )));
            } else {
                origins.push(OriginPattern::Exact(o));
            }
        }
        if any_origin && p.allow_credentials {
            return Err(invalid(
                "allow_origins = [\"*\"] cannot be combined with allow_credentials = true; list the origins"
                    .into(),
            ));
        }
        let mut methods = Vec::new();
        for m in &p.allow_methods {
            let method = Method::from_bytes(m.trim().as_bytes())
                .map_err(|_| invalid(format!("allow_methods: \"{m}\" is not a method")))?;
            methods.push(method.as_str().to_string());
        }
        let any_header = p.allow_headers.iter().any(|h| h.trim() == "*");
        let headers = header_list(&p.allow_headers, "allow_headers", &invalid)?;
        let expose = header_list(&p.expose_headers, "expose_headers", &invalid)?;
        let list_value = |items: &[String]| HeaderValue::from_str(&items.join(", "));
        Ok(Cors {
            origins,
            any_origin,
            credentials: p.allow_credentials,
            methods: list_value(&methods)
                .map_err(|_| invalid("allow_methods cannot be a header value".into()))?,
            headers: if headers.is_empty() || any_header {
                None
            } else {
                Some(list_value(&headers).map_err(|_| invalid("bad allow_headers".into()))?)
            },
            any_header,
            expose: if expose.is_empty() {
                None
            } else {
                Some(list_value(&expose).map_err(|_| invalid("bad expose_headers".into()))?)
            },
            max_age: p.max_age.map(|d| HeaderValue::from(ceil_secs(d.get()))),
        })
    }

    fn allows(&self, origin: &str) -> bool {
        self.any_origin || self.origins.iter().any(|p| p.matches(origin))
    }

    /// `Access-Control-Allow-Origin` for an allowed origin.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    pub fn evaluate(&self, head: &Parts) -> CorsStep {
        let origin = head.headers.get(header::ORIGIN);
        let preflight = head.method == Method::OPTIONS
            && origin.is_some()
            && head
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let allowed = origin.filter(|o| o.to_str().is_ok_and(|s| self.allows(s)));
        let mut headers = HeaderMap::new();
        headers.append(header::VARY, HeaderValue::from_static("Origin"));

        if preflight {
            headers.append(
                header::VARY,
                HeaderValue::from_static(
                    "Access-Control-Request-Method, Access-Control-Request-Headers",
                ),
            );
            let Some(origin) = allowed else {
                let mut answer = Answer::new(
                    StatusCode::FORBIDDEN,
                    "cors_origin_denied",
                    "this origin may not call this route",
                );
                answer.headers = headers;
                return CorsStep::Preflight(answer);
            };
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(origin),
            );
            if self.credentials {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            let requested = head.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
            let allow_headers = match (&self.headers, self.any_header, requested) {
                (Some(list), _, _) => Some(list.clone()),
                (None, true, Some(req)) => Some(req.clone()),
                _ => None,
            };
            if let Some(v) = allow_headers {
                headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
            if let Some(max_age) = &self.max_age {
                headers.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
            }
            let mut answer = Answer::new(StatusCode::NO_CONTENT, "cors_preflight", "");
            answer.headers = headers;
            return CorsStep::Preflight(answer);
        }

        if let Some(origin) = allowed {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                self.allow_origin(origin),
            );
            if self.credentials {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if let Some(expose) = &self.expose {
                headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
        CorsStep::Actual(headers)
    }
}

fn header_list(
    items: &[String],
    key: &str,
    invalid: &impl Fn(String) -> PolicyError,
) -> Result<Vec<String>, PolicyError> {
    let mut out = Vec::new();
    for h in items {
        let h = h.trim();
        if h == "*" {
            continue;
        }
        let name = HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| invalid(format!("{key}: \"{h}\" is not a header name")))?;
        out.push(name.as_str().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_patterns() {
        let p = OriginPattern::Subdomains {
            prefix: "https://".into(),
            suffix: ".example.com".into(),
        };
        assert!(p.matches("https://app.example.com"));
        assert!(p.matches("https://a.b.example.com"));
        assert!(
            !p.matches("https://a.example.com:8443"),
            "a port must be listed"
        );
        assert!(!p.matches("https://example.com"));
        assert!(!p.matches("http://app.example.com"));
        assert!(!p.matches("https://evilexample.com"));
        assert!(OriginPattern::Exact("https://a.example".into()).matches("HTTPS://A.example"));
    }
}
