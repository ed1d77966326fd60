//! Response heads and body framing for the gateway's own HTTP/1.1 loop, as hyper's server
//! writes them: the status line, the fields in map order, `date` when absent, the body
//! framed by its `content-length`, by its known size, or chunked, and `connection: close`
//! when the connection ends after this response.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use http_body::Body;
use kakuremichi_telemetry::rfc3339::civil_from_days;

use crate::body::ResponseBody;
use crate::head_fields::{has_token, last_token, push_fields};

/// How the body after the head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Nothing is written after the head (HEAD, 204, 304, an empty body).
    None,
    /// Exactly this many bytes are still to come.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (a `transfer-encoding` that does not end in chunked).
    UntilClose,
}

/// Appends the response head to `out` and says how the body follows. `close` adds
/// `connection: close`; the returned flag is whether the connection must close after the
/// body whatever the client wanted (the response says `connection: close`, or its body
/// can only end with the connection).
pub fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &ResponseBody,
    method: &Method,
    close: bool,
) -> (Framing, bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    push_fields(out, headers);

    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // The handler closes a connection after some answers (a malformed request).
    let mut must_close = headers
        .get(header::CONNECTION)
        .is_some_and(|v| has_token(v.as_bytes(), b"close"));
    let framing = if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        if last_token(te.as_bytes()).is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")) {
            Framing::Chunked
        } else {
            must_close = true;
            Framing::UntilClose
        }
    } else if let Some(length) = headers.get(header::CONTENT_LENGTH) {
        match std::str::from_utf8(length.as_bytes())
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(n) => Framing::Length(n),
            None => {
                must_close = true;
                Framing::UntilClose
            }
        }
    } else if bodiless_status {
        Framing::None
    } else if body.is_end_stream() {
        out.extend_from_slice(b"content-length: 0\r\n");
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Length(n)
    } else if *method == Method::HEAD {
        Framing::None
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if (close || must_close) && !headers.contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    let framing = if *method == Method::HEAD || bodiless_status || framing == Framing::Length(0) {
        Framing::None
    } else {
        framing
    };
    (framing, must_close)
}

/// Appends a chunk's size line.
pub fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    let _ = write!(out, "{len:x}\r\n");
}

thread_local! {
    /// The second last formatted and its IMF-fixdate text.
    static DATE: RefCell<(u64, Bytes)> = const { RefCell::new((u64::MAX, Bytes::new())) };
}

/// Appends the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted
/// once per second per thread.
fn push_date(out: &mut Vec<u8>) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, Bytes::from(http_date(secs)));
        }
        out.extend_from_slice(&cached.1);
    });
}

/// IMF-fixdate (RFC 9110 §5.6.7) of a Unix time.
pub fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month as usize).clamp(1, 12) - 1],
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(
        status: StatusCode,
        headers: &[(&str, &str)],
        body: ResponseBody,
        method: Method,
        close: bool,
    ) -> (String, Framing, bool) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        let (framing, must_close) = encode_head(&mut out, status, &map, &body, &method, close);
        (String::from_utf8(out).unwrap(), framing, must_close)
    }

    fn full(text: &'static str) -> ResponseBody {
        ResponseBody::full(Bytes::from_static(text.as_bytes()), None, None)
    }

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(1_709_210_096), "Thu, 29 Feb 2024 12:34:56 GMT");
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = Vec::new();
        push_chunk_size(&mut out, 0x1f3a);
        push_chunk_size(&mut out, 0);
        assert_eq!(out, b"1f3a\r\n0\r\n");
    }

    #[test]
    fn a_known_size_becomes_content_length() {
        let (text, framing, close) = head(
            StatusCode::NOT_FOUND,
            &[("content-type", "text/plain")],
            full("hello"),
            Method::GET,
            false,
        );
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\n"));
        assert!(text.contains("\r\ncontent-length: 5\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(text.ends_with("GMT\r\n\r\n"), "{text}");
        assert_eq!(framing, Framing::Length(5));
        assert!(!close);
    }

    #[test]
    fn the_headers_length_wins_and_head_writes_no_body() {
        let (text, framing, _) = head(
            StatusCode::OK,
            &[("content-length", "13"), ("date", "x")],
            full("hello"),
            Method::HEAD,
            true,
        );
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\ncontent-length: 13\r\ndate: x\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(framing, Framing::None);
    }

    #[test]
    fn empty_and_bodiless_responses() {
        let (text, framing, _) = head(
            StatusCode::PERMANENT_REDIRECT,
            &[("location", "https://a/")],
            full(""),
            Method::GET,
            false,
        );
        assert!(text.contains("\r\ncontent-length: 0\r\n"), "{text}");
        assert_eq!(framing, Framing::None);
        let (text, framing, _) = head(
            StatusCode::NOT_MODIFIED,
            &[("etag", "\"1\"")],
            full(""),
            Method::GET,
            false,
        );
        assert!(!text.contains("content-length"), "{text}");
        assert_eq!(framing, Framing::None);
    }

    #[test]
    fn transfer_codings_frame_the_body() {
        let (_, framing, close) = head(
            StatusCode::OK,
            &[("transfer-encoding", "gzip, chunked")],
            full("x"),
            Method::GET,
            false,
        );
        assert_eq!((framing, close), (Framing::Chunked, false));
        let (text, framing, close) = head(
            StatusCode::OK,
            &[("transfer-encoding", "gzip")],
            full("x"),
            Method::GET,
            false,
        );
        assert_eq!((framing, close), (Framing::UntilClose, true));
        assert!(text.contains("connection: close"), "{text}");
    }

    #[test]
    fn a_response_that_says_close_closes() {
        let (text, _, close) = head(
            StatusCode::BAD_REQUEST,
            &[("connection", "close")],
            full("bad"),
            Method::GET,
            false,
        );
        assert!(close);
        assert_eq!(text.matches("connection").count(), 1, "{text}");
    }
}
