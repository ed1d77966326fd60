//! Header fields as raw bytes, for the two places that read and write HTTP/1.1 message
//! heads themselves (the direct upstream client and the gateway's own HTTP/1.1 loop): the
//! comma-separated tokens of a value (`close, Upgrade`), and a header map written out.

use http::HeaderMap;

/// Appends every field of `headers` as `name: value\r\n`, in map order.
pub fn push_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The non-empty, trimmed tokens of `value`.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// The last token (the coding that frames a body, for `Transfer-Encoding`).
pub fn last_token(value: &[u8]) -> Option<&[u8]> {
    tokens(value).last()
}

/// Whether `value` lists `token`, ignoring ASCII case.
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_and_case_is_ignored() {
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
        assert_eq!(last_token(b"gzip , chunked ,"), Some(&b"chunked"[..]));
        assert_eq!(last_token(b" , "), None);
    }
}
