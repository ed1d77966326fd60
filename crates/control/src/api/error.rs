//! API errors and the one place they become HTTP responses:
//! `{"error": code, "message": "...", "field": "..."}`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

use crate::store::StoreError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{message}")]
    InvalidJson { message: String },
    #[error("{message}")]
    Invalid {
        code: &'static str,
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("{message}")]
    Conflict {
        message: String,
        field: Option<String>,
    },
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("this endpoint is a WebSocket")]
    UpgradeRequired,
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// A 400 naming `field`.
    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            code: "invalid_field",
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, Option<&str>) {
        match self {
            ApiError::InvalidJson { .. } => (StatusCode::BAD_REQUEST, "invalid_json", None),
            ApiError::Invalid { code, field, .. } => {
                (StatusCode::BAD_REQUEST, code, field.as_deref())
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
            }
            ApiError::Conflict { field, .. } => {
                (StatusCode::CONFLICT, "conflict", field.as_deref())
            }
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None),
            ApiError::UpgradeRequired => (StatusCode::UPGRADE_REQUIRED, "upgrade_required", None),
            ApiError::Store(StoreError::Duplicate { field, .. }) => {
                (StatusCode::CONFLICT, "conflict", Some(field))
            }
            ApiError::Store(e) if e.is_unavailable() => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None)
            }
            ApiError::Store(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal", None)
            }
        }
    }

    /// The response for this error. Internal details are logged, not sent.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code, field) = self.parts();
        let message = match &self {
            ApiError::Store(StoreError::Duplicate { .. }) => self.to_string(),
            ApiError::Store(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "api: database unavailable");
                "the database is unavailable; retry shortly".to_string()
            }
            ApiError::Store(_) | ApiError::Internal(_) => {
                tracing::error!(error = %self, "api: internal error");
                "internal error; see the control plane's log".to_string()
            }
            ApiError::MethodNotAllowed(allow) => format!("method not allowed; allowed: {allow}"),
            ApiError::UpgradeRequired => "this endpoint is the push WebSocket for gateways and agents: connect with Upgrade: websocket".to_string(),
            _ => self.to_string(),
        };
        let body = Body {
            error: code,
            message,
            field,
        };
        let mut resp = super::json(status, &body);
        match &self {
            ApiError::Unauthorized(_) => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::MethodNotAllowed(allow) => {
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::UpgradeRequired => {
                resp.headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            _ => {}
        }
        resp
    }
}
