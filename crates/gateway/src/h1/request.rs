//! Request heads the gateway's own HTTP/1.1 loop takes: complete, HTTP/1.1, no body, no
//! upgrade, no `Expect`, an origin-form target, at most [`FIELDS`] header fields. Anything
//! else is left in the buffer, untouched, for hyper.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

use crate::body::ClientBody;
use crate::head_fields::{has_token, tokens};

/// Header fields the loop parses; a request with more goes to hyper (which allows 256).
const FIELDS: usize = 64;

/// A request the loop serves itself.
pub struct Head {
    pub request: Request<ClientBody>,
    /// The client asked for the connection to be closed after the response.
    pub close: bool,
}

#[derive(Clone, Copy, Default)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn of(base: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    fn slice(self, head: &Bytes) -> Bytes {
        head.slice(self.start as usize..self.end as usize)
    }
}

/// What a first look at the head found, before anything is taken from the buffer.
struct Scan {
    len: usize,
    method: Method,
    target: Span,
    fields: usize,
    close: bool,
}

/// Takes the request head at the start of `buf` when the loop can serve it; `None` leaves
/// `buf` as it was (the head is incomplete, larger than `max_head`, or not one the loop
/// takes).
pub fn take(buf: &mut BytesMut, max_head: usize) -> Option<Head> {
    let mut spans = [(Span::default(), Span::default()); FIELDS];
    let scan = scan(buf, max_head, &mut spans)?;
    let head = buf.split_to(scan.len).freeze();
    match build(&head, &scan, &spans[..scan.fields]) {
        Some(request) => Some(Head {
            request,
            close: scan.close,
        }),
        None => {
            // A target or a field `http` refuses: put the bytes back for hyper to answer.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            None
        }
    }
}

fn scan(buf: &[u8], max_head: usize, spans: &mut [(Span, Span); FIELDS]) -> Option<Scan> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return None,
    };
    if len > max_head || parsed.version != Some(1) {
        return None;
    }
    let target = parsed.path?;
    if !target.starts_with('/') {
        return None;
    }
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    if method == Method::CONNECT {
        return None;
    }
    let mut close = false;
    let mut length_seen = false;
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // Only an explicit empty body; one field, so hyper judges repeated ones.
            if length_seen || field.value.trim_ascii() != b"0" {
                return None;
            }
            length_seen = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return None;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in tokens(field.value) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return None;
                }
            }
            close |= has_token(field.value, b"close");
        }
        *span = (Span::of(buf, name), Span::of(buf, field.value));
    }
    Some(Scan {
        len,
        method,
        target: Span::of(buf, target.as_bytes()),
        fields: parsed.headers.len(),
        close,
    })
}

/// The request, its header values sharing `head`'s bytes.
fn build(head: &Bytes, scan: &Scan, spans: &[(Span, Span)]) -> Option<Request<ClientBody>> {
    let uri = Uri::from_maybe_shared(scan.target.slice(head)).ok()?;
    // Room for the forwarding headers the handler adds.
    let mut headers = HeaderMap::with_capacity(spans.len() + 6);
    for &(name, value) in spans {
        let name = HeaderName::from_bytes(&head[name.start as usize..name.end as usize]).ok()?;
        let value = HeaderValue::from_maybe_shared(value.slice(head)).ok()?;
        headers.append(name, value);
    }
    let mut request = Request::new(ClientBody::Empty);
    *request.method_mut() = scan.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(text: &str) -> Option<(Head, BytesMut)> {
        let mut buf = BytesMut::from(text);
        take(&mut buf, 8192).map(|h| (h, buf))
    }

    fn left(text: &str) {
        let mut buf = BytesMut::from(text);
        assert!(take(&mut buf, 8192).is_none(), "{text:?}");
        assert_eq!(&buf[..], text.as_bytes(), "{text:?} must be left untouched");
    }

    #[test]
    fn a_plain_get_is_taken_and_the_next_request_stays() {
        let (head, rest) = taken(
            "GET /a/b?q=1 HTTP/1.1\r\nHost: app.test\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next",
        )
        .expect("taken");
        let req = head.request;
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/a/b");
        assert_eq!(req.uri().query(), Some("q=1"));
        assert_eq!(req.headers()["host"], "app.test");
        assert_eq!(req.headers().get_all("x-two").iter().count(), 2);
        assert!(!head.close);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn connection_close_and_an_empty_length_are_taken() {
        let (head, _) = taken(
            "DELETE /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("taken");
        assert!(head.close);
        assert_eq!(head.request.method(), Method::DELETE);
    }

    #[test]
    fn everything_else_is_left_for_hyper() {
        for text in [
            "GET / HTTP/1.1\r\nHost: a\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "GET /\u{7f} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nBad\u{1}: x\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            left(text);
        }
    }

    #[test]
    fn a_target_http_refuses_is_put_back() {
        // httparse accepts `<`, the `http` crate's URI parser does not.
        left("GET /<x> HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn heads_over_the_limits_are_left() {
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..FIELDS + 1 {
            many.push_str(&format!("x-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        left(&many);
        let text = "GET /long HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut buf = BytesMut::from(text);
        assert!(take(&mut buf, 16).is_none());
        assert_eq!(&buf[..], text.as_bytes());
    }
}
