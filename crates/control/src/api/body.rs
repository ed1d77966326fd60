//! Request bodies: read with a size limit (413 past it, after reading a bounded amount
//! more so that the client sees the answer), parsed as JSON, and small objects
//! taken apart field by field so that every error names its field.

use std::time::Duration;

use bytes::BytesMut;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::ApiError;

/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// How much of an oversized body is read and thrown away so that the client, still
/// sending, receives the 413 instead of a reset connection.
const DRAIN_LIMIT: usize = 16 << 20;
/// How long that may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads the rest of a body, up to [`DRAIN_LIMIT`] bytes and [`DRAIN_TIME`].
async fn drain(body: &mut Incoming, mut read: usize) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while read <= DRAIN_LIMIT {
            match body.frame().await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                _ => break,
            }
        }
    })
    .await;
}

/// Reads the body (at most [`MAX_BODY`]) and parses it as JSON.
pub(crate) async fn json_value(req: Request<Incoming>) -> Result<Value, ApiError> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        drain(&mut body, 0).await;
        return Err(ApiError::TooLarge { limit: MAX_BODY });
    }
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::InvalidJson {
            message: format!("could not read the body: {e}"),
        })?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > MAX_BODY {
                drain(&mut body, bytes.len() + data.len()).await;
                return Err(ApiError::TooLarge { limit: MAX_BODY });
            }
            bytes.extend_from_slice(data);
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson {
            message: "the body is empty; send a JSON object".into(),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson {
        message: format!("invalid JSON: {e}"),
    })
}

/// A JSON object whose fields are taken one by one; [`Fields::finish`] refuses the rest.
pub(crate) struct Fields {
    obj: Map<String, Value>,
    expected: &'static [&'static str],
}

impl Fields {
    pub(crate) fn new(value: Value, expected: &'static [&'static str]) -> Result<Self, ApiError> {
        match value {
            Value::Object(obj) => Ok(Fields { obj, expected }),
            _ => Err(ApiError::Invalid {
                code: "invalid_body",
                message: format!(
                    "the body must be a JSON object with {}",
                    expected.join(", ")
                ),
                field: None,
            }),
        }
    }

    /// A required string field.
    pub(crate) fn string(&mut self, field: &str) -> Result<String, ApiError> {
        match self.obj.remove(field) {
            Some(Value::String(s)) => Ok(s),
            None | Some(Value::Null) => {
                Err(ApiError::invalid(field, format!("missing field `{field}`")))
            }
            Some(other) => Err(ApiError::invalid(
                field,
                format!("`{field}` must be a string, not {}", kind(&other)),
            )),
        }
    }

    /// Refuses fields that were not taken.
    pub(crate) fn finish(self) -> Result<(), ApiError> {
        match self.obj.keys().next() {
            None => Ok(()),
            Some(k) => Err(ApiError::invalid(
                k,
                format!(
                    "unknown field `{k}`, expected {}",
                    self.expected
                        .iter()
                        .map(|e| format!("`{e}`"))
                        .collect::<Vec<_>>()
                        .join(" or ")
                ),
            )),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
