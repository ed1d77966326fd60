//! The web UI: one HTML page with inline CSS and vanilla JavaScript (no build step),
//! embedded in the binary and served at `/`. It talks to the same REST API with the admin
//! token kept in `sessionStorage`, and polls every 2 seconds for live status. Its one
//! inline script is allowed by hash in the Content-Security-Policy, nothing else runs.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("index.html");

/// The text of the page's inline `<script>`.
fn script(page: &str) -> Option<&str> {
    let start = page.find("<script>")? + "<script>".len();
    let end = start + page[start..].find("</script>")?;
    Some(&page[start..end])
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn content_security_policy() -> HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        let script_src = match script(PAGE) {
            Some(s) => format!("'sha256-{}'", base64(&Sha256::digest(s.as_bytes()))),
            None => "'none'".to_string(),
        };
        let policy = format!(
            "default-src 'self'; script-src {script_src}; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        );
        HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'self'"))
    })
    .clone()
}

pub(crate) fn page() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::CONTENT_SECURITY_POLICY, content_security_policy());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_page_has_one_inline_script_allowed_by_hash() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert!(script(PAGE).is_some_and(|s| s.contains("sessionStorage")));
        let csp = content_security_policy();
        let csp = csp.to_str().unwrap_or_default();
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(!csp.contains("script-src 'unsafe-inline'"), "{csp}");
    }
}
