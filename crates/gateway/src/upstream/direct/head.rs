//! HTTP/1.1 message heads on an upstream connection: the request head written from the
//! forwarded request's parts, and the response head parsed (with `httparse`) into
//! `http::response::Parts` together with how the body that follows is framed (RFC 9112
//! §6.3).

use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::DirectError;
use crate::head_fields::{has_token, last_token, push_fields};

/// Header fields an upstream response head may have.
const MAX_RESPONSE_HEADERS: usize = 128;

/// How the response body is delimited on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
pub struct ResponseHead {
    pub parts: http::response::Parts,
    pub framing: Framing,
    /// Whether the connection may carry another request once the body is read.
    pub reusable: bool,
    /// How long the upstream keeps the connection open while idle, when its
    /// `Keep-Alive: timeout=` says.
    pub idle_timeout: Option<Duration>,
}

/// Appends `METHOD target HTTP/1.1` and the header fields to `out`. `target` is the
/// origin-form path and query. A `POST`, `PUT` or `PATCH` without body framing gets
/// `content-length: 0`, as a user agent should send.
pub fn write_request(out: &mut Vec<u8>, method: &Method, target: &str, headers: &HeaderMap) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_fields(out, headers);
    let body_method = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
    if body_method
        && !headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::TRANSFER_ENCODING)
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Header fields most responses fit in: parsing tries this many slots first and only
/// retries with `MAX_RESPONSE_HEADERS` when there are more.
const COMMON_RESPONSE_HEADERS: usize = 32;

/// Where one header field lies in the head: name and value as byte ranges.
#[derive(Clone, Copy, Default)]
struct FieldSpan {
    name: (u32, u32),
    value: (u32, u32),
}

/// Parses a response head from the start of `buf`. `Ok(None)`: the head is not complete
/// yet, `buf` is untouched. `Ok(Some(head))`: the head's bytes were split off `buf`; the
/// header values share them instead of being copied one by one.
pub fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, DirectError> {
    let mut small = [FieldSpan::default(); COMMON_RESPONSE_HEADERS];
    match scan_response(buf, &mut small)? {
        Scan::Partial => Ok(None),
        Scan::Complete(found) => Ok(Some(build_head(buf, found, &small, method)?)),
        Scan::TooMany => {
            let mut large = [FieldSpan::default(); MAX_RESPONSE_HEADERS];
            match scan_response(buf, &mut large)? {
                Scan::Partial => Ok(None),
                Scan::Complete(found) => Ok(Some(build_head(buf, found, &large, method)?)),
                Scan::TooMany => Err(DirectError::BadResponse("more than 128 header fields")),
            }
        }
    }
}

/// What one parse of the head found: its length, status, version and field count.
struct Found {
    len: usize,
    code: u16,
    http10: bool,
    fields: usize,
}

enum Scan {
    Partial,
    Complete(Found),
    /// More fields than `spans` has room for.
    TooMany,
}

/// Runs `httparse` over `buf` with as many header slots as `spans` has, and records where
/// each field is.
fn scan_response<const N: usize>(
    buf: &[u8],
    spans: &mut [FieldSpan; N],
) -> Result<Scan, DirectError> {
    let mut slots = [httparse::EMPTY_HEADER; N];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Scan::Partial),
        Err(httparse::Error::TooManyHeaders) => return Ok(Scan::TooMany),
        Err(_) => return Err(DirectError::BadResponse("not an HTTP/1.x response head")),
    };
    let base = buf.as_ptr() as usize;
    let range = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        (start as u32, (start + part.len()) as u32)
    };
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        *span = FieldSpan {
            name: range(h.name.as_bytes()),
            value: range(h.value),
        };
    }
    Ok(Scan::Complete(Found {
        len,
        code: parsed.code.unwrap_or(0),
        http10: parsed.version == Some(0),
        fields: parsed.headers.len(),
    }))
}

/// Splits the head off `buf` and makes the response parts and framing from it.
fn build_head(
    buf: &mut BytesMut,
    found: Found,
    spans: &[FieldSpan],
    method: &Method,
) -> Result<ResponseHead, DirectError> {
    let status = StatusCode::from_u16(found.code)
        .map_err(|_| DirectError::BadResponse("status code out of range"))?;
    let http10 = found.http10;
    let head = buf.split_to(found.len).freeze();
    let slice = |(start, end): (u32, u32)| head.slice(start as usize..end as usize);

    // Room for what the gateway adds (request id, policy and CORS headers) without the map
    // growing and rehashing.
    let mut headers = HeaderMap::with_capacity(found.fields + 8);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoded = false;
    let mut close = http10;
    let mut idle_timeout = None;
    for span in &spans[..found.fields] {
        let (name_start, name_end) = span.name;
        let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
            .map_err(|_| DirectError::BadResponse("invalid header name"))?;
        let raw = slice(span.value);
        if name == header::CONTENT_LENGTH {
            let n = parse_length(&raw)?;
            if length.is_some_and(|seen| seen != n) {
                return Err(DirectError::BadResponse(
                    "conflicting Content-Length fields",
                ));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoded = true;
            // Only the last coding decides whether the body is chunked.
            chunked = last_token(&raw).is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            if has_token(&raw, b"close") {
                close = true;
            } else if http10 && has_token(&raw, b"keep-alive") {
                close = false;
            }
        } else if name.as_str() == "keep-alive" {
            idle_timeout = keep_alive_timeout(&raw).or(idle_timeout);
        }
        let value = HeaderValue::from_maybe_shared(raw)
            .map_err(|_| DirectError::BadResponse("invalid header value"))?;
        headers.append(name, value);
    }

    let framing = if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if transfer_encoded {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // A message with both framings may be an attempt at request smuggling: read it by
    // Transfer-Encoding and do not reuse the connection.
    let reusable =
        !close && framing != Framing::UntilClose && !(transfer_encoded && length.is_some());

    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *response.headers_mut() = headers;
    let (parts, ()) = response.into_parts();
    Ok(ResponseHead {
        parts,
        framing,
        reusable,
        idle_timeout,
    })
}

/// The `timeout` parameter of a `Keep-Alive` field (`timeout=5, max=100`), in seconds.
fn keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    value.split(|&b| b == b',').find_map(|param| {
        let (name, secs) = param.trim_ascii().split_at_checked(7)?;
        if !name.eq_ignore_ascii_case(b"timeout") {
            return None;
        }
        let secs = secs.trim_ascii().strip_prefix(b"=")?.trim_ascii();
        if secs.is_empty() || secs.len() > 9 || !secs.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let secs = secs.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        Some(Duration::from_secs(secs))
    })
}

fn parse_length(value: &[u8]) -> Result<u64, DirectError> {
    let bad = DirectError::BadResponse("invalid Content-Length");
    // Some servers repeat the value in one field ("12, 12"); equal values are one length.
    let mut found: Option<u64> = None;
    for part in value.split(|&b| b == b',') {
        let digits = part.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad);
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(bad);
        }
        found = Some(n);
    }
    found.ok_or(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_timeouts() {
        let secs = |v: &str| keep_alive_timeout(v.as_bytes()).map(|d| d.as_secs());
        assert_eq!(secs("timeout=5"), Some(5));
        assert_eq!(secs("max=100, Timeout = 2"), Some(2));
        assert_eq!(secs("timeout=x"), None);
        assert_eq!(secs("timeout="), None);
        assert_eq!(secs("max=5"), None);
        assert_eq!(secs("timeouts=5"), None);
        assert_eq!(secs("timeout=99999999999"), None);
        assert_eq!(secs(""), None);
        let head = parse(
            "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=3\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        );
        assert_eq!(head.idle_timeout, Some(Duration::from_secs(3)));
    }

    fn parse(text: &str, method: Method) -> ResponseHead {
        let mut buf = BytesMut::from(text);
        let head = parse_response(&mut buf, &method)
            .expect("valid head")
            .expect("complete head");
        let body_start = text.find("\r\n\r\n").expect("head end") + 4;
        assert_eq!(&buf[..], &text.as_bytes()[body_start..]);
        head
    }

    #[test]
    fn request_head_has_the_target_and_every_field() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("app.test"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        write_request(&mut out, &Method::GET, "/p?q=1", &headers);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    #[test]
    fn bodyless_post_says_so() {
        let mut out = Vec::new();
        write_request(&mut out, &Method::POST, "/", &HeaderMap::new());
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn partial_head_waits_for_more() {
        let text = "HTTP/1.1 200 OK\r\ncontent-len";
        let mut buf = BytesMut::from(text);
        let got = parse_response(&mut buf, &Method::GET).unwrap();
        assert!(got.is_none());
        assert_eq!(&buf[..], text.as_bytes());
    }

    #[test]
    fn length_chunked_and_close_framings() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello",
            Method::GET,
        );
        assert_eq!(h.framing, Framing::Length(13));
        assert!(h.reusable);
        assert_eq!(h.parts.headers["content-length"], "13");

        let h = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(h.reusable);

        let h = parse("HTTP/1.1 200 OK\r\nX: y\r\n\r\n", Method::GET);
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.reusable);

        let h = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, Framing::UntilClose);
    }

    #[test]
    fn bodiless_statuses_and_head() {
        for (text, method) in [
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                Method::GET,
            ),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", Method::GET),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                Method::HEAD,
            ),
        ] {
            let h = parse(text, method);
            assert_eq!(h.framing, Framing::Empty, "{text}");
            assert!(h.reusable, "{text}");
        }
    }

    #[test]
    fn connection_close_and_http10_are_not_reused() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            Method::GET,
        );
        assert!(!h.reusable);
        let h = parse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::GET);
        assert!(!h.reusable);
        assert_eq!(h.parts.version, Version::HTTP_10);
        let h = parse(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            Method::GET,
        );
        assert!(h.reusable);
    }

    #[test]
    fn both_framings_read_chunked_and_close_after() {
        let h = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.reusable);
    }

    #[test]
    fn heads_with_many_fields_parse_up_to_the_limit() {
        let head_with = |fields: usize| {
            let mut text = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..fields - 1 {
                text.push_str(&format!("x-f{i}: v{i}\r\n"));
            }
            text.push_str("Content-Length: 2\r\n\r\nok");
            text
        };
        let h = parse(&head_with(40), Method::GET);
        assert_eq!(h.parts.headers.len(), 40);
        assert_eq!(h.parts.headers["x-f38"], "v38");
        assert_eq!(h.framing, Framing::Length(2));
        let h = parse(&head_with(128), Method::GET);
        assert_eq!(h.parts.headers.len(), 128);
        let mut over = BytesMut::from(head_with(129).as_str());
        assert!(parse_response(&mut over, &Method::GET).is_err());
    }

    #[test]
    fn bad_heads_are_errors() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(
                parse_response(&mut BytesMut::from(text), &Method::GET).is_err(),
                "{text}"
            );
        }
        let h = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n",
            Method::GET,
        );
        assert_eq!(h.framing, Framing::Length(7));
    }
}
