//! Errors of the request path and the one place where they become HTTP status codes and
//! bodies (`{"error", "message", "request_id"}`, or a small HTML page for browsers).

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, StatusCode};

/// Why the gateway answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this host and path")]
    NoRoute,
    #[error("the method is not allowed here")]
    MethodNotAllowed(Vec<Method>),
    #[error("this route is disabled")]
    RouteDisabled,
    #[error("no agent of this route's group is connected")]
    NoAgent,
    #[error("no healthy upstream is available for this route")]
    NoHealthyUpstream,
    #[error("the upstream refused the connection or could not be reached")]
    UpstreamConnect(#[source] BoxError),
    #[error("the upstream did not accept the connection in time")]
    UpstreamConnectTimeout,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream closed the connection before answering")]
    UpstreamFailed(#[source] BoxError),
    #[error("the request body is larger than this route allows")]
    BodyTooLarge,
    #[error("your address is not allowed on this route")]
    IpDenied,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("the request could not be read from the client")]
    ClientBody(#[source] BoxError),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::RouteDisabled | ProxyError::NoHealthyUpstream | ProxyError::NoAgent => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamConnect(_) | ProxyError::UpstreamFailed(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamConnectTimeout | ProxyError::UpstreamTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::IpDenied => StatusCode::FORBIDDEN,
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The machine-readable `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::RouteDisabled => "route_disabled",
            ProxyError::NoAgent => "no_agent_connected",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::UpstreamConnect(_) => "upstream_unreachable",
            ProxyError::UpstreamConnectTimeout => "upstream_connect_timeout",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::UpstreamFailed(_) => "upstream_failed",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::IpDenied => "ip_denied",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ClientBody(_) => "client_body",
        }
    }

    /// Seconds a client may wait before trying again, where the gateway knows one.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            ProxyError::NoHealthyUpstream | ProxyError::NoAgent => Some(5),
            _ => None,
        }
    }
}

/// Whether the client prefers HTML (a browser) over JSON.
pub fn prefers_html(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let html = accept.find("text/html");
    let json = accept.find("application/json");
    match (html, json) {
        (Some(h), Some(j)) => h < j,
        (Some(_), None) => true,
        _ => false,
    }
}

fn json_escape(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The body and content type of an answer the gateway produces itself.
pub fn error_body(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
    html: bool,
) -> (Bytes, HeaderValue) {
    if html {
        let reason = status.canonical_reason().unwrap_or("Error");
        let page = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{status} {reason}</title></head>\n<body><h1>{status} {reason}</h1><p>{message}</p><p><small>{code} &middot; request id: {request_id}</small></p></body></html>\n",
            status = status.as_u16(),
            reason = html_escape(reason),
            message = html_escape(message),
            code = html_escape(code),
            request_id = html_escape(request_id),
        );
        (
            Bytes::from(page),
            HeaderValue::from_static("text/html; charset=utf-8"),
        )
    } else {
        let body = format!(
            "{{\"error\":{},\"message\":{},\"request_id\":{}}}\n",
            json_escape(code),
            json_escape(message),
            json_escape(request_id)
        );
        (
            Bytes::from(body),
            HeaderValue::from_static("application/json"),
        )
    }
}

/// Adds the content type header for [`error_body`].
pub fn set_content_type(headers: &mut http::HeaderMap, value: HeaderValue) {
    headers.insert(CONTENT_TYPE, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(ProxyError::NoRoute.status(), 404);
        assert_eq!(ProxyError::RouteDisabled.status(), 503);
        assert_eq!(ProxyError::UpstreamConnect("x".into()).status(), 502);
        assert_eq!(ProxyError::UpstreamConnectTimeout.status(), 504);
        assert_eq!(ProxyError::UpstreamTimeout.status(), 504);
        assert_eq!(ProxyError::BodyTooLarge.status(), 413);
        assert_eq!(ProxyError::MethodNotAllowed(vec![]).status(), 405);
    }

    #[test]
    fn bodies_are_json_unless_html_is_preferred() {
        let (b, ct) = error_body(StatusCode::NOT_FOUND, "no_route", "a \"q\"", "id1", false);
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["message"], "a \"q\"");
        assert_eq!(v["request_id"], "id1");
        let (b, ct) = error_body(StatusCode::NOT_FOUND, "no_route", "<x>", "id1", true);
        assert!(ct.to_str().unwrap().starts_with("text/html"));
        assert!(String::from_utf8_lossy(&b).contains("&lt;x&gt;"));
        assert!(prefers_html(Some(&HeaderValue::from_static(
            "text/html,application/xhtml+xml"
        ))));
        assert!(!prefers_html(Some(&HeaderValue::from_static(
            "application/json, text/html"
        ))));
        assert!(!prefers_html(None));
    }
}
