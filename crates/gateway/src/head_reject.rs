//! The gateway's own answers to a request head that never became a request: 408 when it
//! does not arrive within `header_timeout`, and 400 / 414 / 431 when the HTTP parser cannot
//! read it (hyper writes a bare answer of its own there; the connection wrapper swaps it
//! for this one). Like every other answer of the gateway they carry the JSON error body,
//! the request id header and `connection: close`, and write an access-log line.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::header::HeaderName;
use http::{Method, StatusCode};

use crate::access_log::AccessRecord;
use crate::metrics::RouteMetrics;
use crate::request_id;

/// What an answer to a rejected head needs to know about the connection.
pub struct HeadRejects {
    pub request_id_header: HeaderName,
    pub client_ip: IpAddr,
    /// Metrics of requests that matched no route.
    pub metrics: Arc<RouteMetrics>,
}

/// The statuses hyper answers unreadable heads with, and what they mean to a client.
fn reason(status: StatusCode) -> (&'static str, &'static str) {
    match status.as_u16() {
        408 => (
            "request_timeout",
            "the request head was not received in time",
        ),
        414 => ("uri_too_long", "the request target is too long"),
        431 => (
            "header_too_large",
            "the request head is larger than this gateway accepts",
        ),
        _ => (
            "bad_request",
            "malformed request: the request head could not be parsed",
        ),
    }
}

impl HeadRejects {
    /// The whole HTTP/1.1 answer for `status`, and its access-log line. `request_line` is
    /// the start of the first line of the head as received (for the log), `head_bytes`
    /// how much of the head arrived.
    pub fn answer(&self, status: StatusCode, request_line: &[u8], head_bytes: u64) -> Vec<u8> {
        let id = request_id::generate();
        let (code, message) = reason(status);
        let (body, content_type) =
            crate::error::error_body(status, code, message, id.to_str().unwrap_or(""), false);
        let mut out = Vec::with_capacity(256 + body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\ncontent-type: ",
                status.as_u16(),
                status.canonical_reason().unwrap_or("Error")
            )
            .as_bytes(),
        );
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(
            format!(
                "\r\ncontent-length: {}\r\ncache-control: no-store\r\n",
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(self.request_id_header.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
        out.extend_from_slice(&body);

        let (method, path) = split_request_line(request_line);
        AccessRecord {
            start: Instant::now(),
            request_id: id,
            client_ip: self.client_ip,
            method,
            host: String::new(),
            path,
            route: None,
            upstream: None,
            status: status.as_u16(),
            error: Some(code),
            bytes_in: Arc::new(AtomicU64::new(head_bytes)),
            metrics: self.metrics.clone(),
            head_seconds: 0.0,
            api_key: None,
            subject: None,
        }
        .finish(body.len() as u64, true, std::time::Instant::now());
        out
    }
}

/// Method and target of a request line as far as they can be read; `-` for what cannot.
fn split_request_line(line: &[u8]) -> (Method, String) {
    let mut parts = line.split(|b| *b == b' ').filter(|p| !p.is_empty());
    let method = parts
        .next()
        .and_then(|m| Method::from_bytes(m).ok())
        .unwrap_or_else(unknown_method);
    let path = parts
        .next()
        .map(|p| p.split(|b| *b == b'?').next().unwrap_or_default())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| "-".to_string());
    (method, path)
}

fn unknown_method() -> Method {
    Method::from_bytes(b"-").unwrap_or(Method::GET)
}

/// The status of hyper's own answer to an unreadable head when `bytes` starts with one: a
/// 400, 414 or 431 status line whose head lacks the request id header, which every answer
/// of the request path carries.
pub fn parser_answer(bytes: &[u8], request_id_header: &HeaderName) -> Option<StatusCode> {
    let status = [
        (b"HTTP/1.1 400 ", StatusCode::BAD_REQUEST),
        (b"HTTP/1.1 414 ", StatusCode::URI_TOO_LONG),
        (
            b"HTTP/1.1 431 ",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
    ]
    .into_iter()
    .find_map(|(line, status)| bytes.starts_with(line).then_some(status))?;
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let name = request_id_header.as_str().as_bytes();
    let has_id = bytes[..head_end].split(|b| *b == b'\n').any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
    });
    (!has_id).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_answers_are_recognised_and_ours_are_not() {
        let id = HeaderName::from_static("x-correlation-id");
        let hyper =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            parser_answer(hyper, &id),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parser_answer(bad, &id), Some(StatusCode::BAD_REQUEST));
        let ours =
            b"HTTP/1.1 400 Bad Request\r\nx-correlation-id: abc\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parser_answer(ours, &id), None);
        let upstream = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parser_answer(upstream, &id), None);
        assert_eq!(parser_answer(b"0\r\n\r\n", &id), None);
    }

    #[test]
    fn request_lines_are_read_as_far_as_they_go() {
        let (m, p) = split_request_line(b"GET /a?b HTTP/1.1");
        assert_eq!((m.as_str(), p.as_str()), ("GET", "/a"));
        let (m, p) = split_request_line(b"\x01\x02");
        assert_eq!((m.as_str(), p.as_str()), ("-", "-"));
    }
}
