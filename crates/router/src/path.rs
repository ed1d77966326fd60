//! Request path normalization for routing.
//!
//! This module owns [`normalize_path`] and [`PathError`]: turning the raw
//! path of a request (without the query) into the canonical form the route
//! table is matched against, so that equivalent spellings of a path
//! (`/a/%2e%2e/b`, `//b`, `/./b`, ...) cannot be used to slip past a route.

use std::borrow::Cow;
use std::fmt;

/// Why a request path could not be normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` is not followed by two hex digits.
    BadEscape,
    /// The path contains a raw control byte (`< 0x20`) or DEL (`0x7f`).
    BadByte,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "request path does not start with '/'",
            PathError::BadEscape => "request path contains an invalid percent-escape",
            PathError::BadByte => "request path contains a control byte",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalizes a request path (no query) for routing.
///
/// - It must start with `/`, else [`PathError::NotAbsolute`].
/// - Percent-escapes of *unreserved* characters (`ALPHA / DIGIT / "-" / "." /
///   "_" / "~"`) are decoded (`%2e` → `.`, `%41` → `A`); every other escape
///   (`%2F`, `%25`, `%3F`, `%00`, ...) stays encoded, with its hex digits
///   uppercased (`%2f` → `%2F`). A malformed escape (`%zz`, a `%` near the
///   end) is [`PathError::BadEscape`].
/// - Dot-segments are removed as in RFC 3986 §5.2.4, *after* the decoding,
///   so `/public/%2e%2e/admin` → `/admin`; `..` never climbs above the root.
/// - Repeated slashes are merged (`//a///b` → `/a/b`).
/// - A trailing slash is kept (`/a/b/` stays `/a/b/`); a trailing dot-segment
///   leaves one too (`/a/b/..` → `/a/`).
/// - Raw bytes below `0x20` and `0x7f` are [`PathError::BadByte`].
///
/// Already-normal input is returned borrowed, without allocating. The result
/// is itself normal: `normalize_path(&normalize_path(p)?)` returns it
/// unchanged.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if scan(path)? {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(rebuild(path)))
    }
}

/// Validates `path` and reports whether it is already normal (`true`) or
/// needs [`rebuild`] (`false`).
fn scan(path: &str) -> Result<bool, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut clean = true;
    let mut seg_start = 1;
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b if b < 0x20 || b == 0x7f => return Err(PathError::BadByte),
            b'%' => {
                let (hi, lo) = escape_digits(bytes, i)?;
                if is_unreserved((hex_value(hi) << 4) | hex_value(lo))
                    || hi.is_ascii_lowercase()
                    || lo.is_ascii_lowercase()
                {
                    clean = false;
                }
                i += 3;
                continue;
            }
            b'/' => {
                if is_removable_segment(&bytes[seg_start..i]) {
                    clean = false;
                }
                seg_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    // The last segment may be empty (trailing slash), but not a dot-segment.
    if matches!(&bytes[seg_start..], b"." | b"..") {
        clean = false;
    }
    Ok(clean)
}

/// An inner segment that normalization drops: empty (`//`), `.` or `..`.
fn is_removable_segment(seg: &[u8]) -> bool {
    matches!(seg, b"" | b"." | b"..")
}

/// Builds the normal form of a path that [`scan`] accepted but found unclean.
fn rebuild(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    // Length of `out` before each pushed segment, so `..` can pop it.
    let mut starts: Vec<usize> = Vec::new();
    let mut seg = String::new();
    let mut trailing_slash = false;
    let mut segments = path[1..].split('/').peekable();
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        decode_segment(raw, &mut seg);
        match seg.as_str() {
            "" | "." => trailing_slash = last,
            ".." => {
                if let Some(len) = starts.pop() {
                    out.truncate(len);
                }
                trailing_slash = last;
            }
            s => {
                starts.push(out.len());
                out.push('/');
                out.push_str(s);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

/// Decodes unreserved escapes of one segment into `out` (cleared first) and
/// uppercases the hex digits of the escapes it keeps. The input was already
/// validated by [`scan`].
fn decode_segment(raw: &str, out: &mut String) {
    out.clear();
    let bytes = raw.as_bytes();
    let mut run_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        // `%` is ASCII, so slicing at it stays on a char boundary.
        out.push_str(&raw[run_start..i]);
        match escape_digits(bytes, i) {
            Ok((hi, lo)) => {
                let value = (hex_value(hi) << 4) | hex_value(lo);
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    out.push('%');
                    out.push(char::from(hi.to_ascii_uppercase()));
                    out.push(char::from(lo.to_ascii_uppercase()));
                }
                i += 3;
            }
            // Unreachable after `scan`; keep the byte verbatim rather than panic.
            Err(_) => {
                out.push('%');
                i += 1;
            }
        }
        run_start = i;
    }
    out.push_str(&raw[run_start..]);
}

/// The two hex digits following the `%` at `bytes[i]`.
fn escape_digits(bytes: &[u8], i: usize) -> Result<(u8, u8), PathError> {
    match (bytes.get(i + 1), bytes.get(i + 2)) {
        (Some(&hi), Some(&lo)) if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => Ok((hi, lo)),
        _ => Err(PathError::BadEscape),
    }
}

/// Value of an ASCII hex digit (caller checked `is_ascii_hexdigit`).
fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        b'A'..=b'F' => d - b'A' + 10,
        _ => 0,
    }
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        match normalize_path(p) {
            Ok(s) => s.into_owned(),
            Err(e) => panic!("normalize_path({p:?}) failed: {e}"),
        }
    }

    #[test]
    fn must_be_absolute() {
        assert_eq!(normalize_path(""), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize_path("%2Fa"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn already_normal_borrows() {
        for p in [
            "/",
            "/a",
            "/a/b",
            "/a/b/",
            "/a%2Fb",
            "/%25",
            "/a..b/.c/..d/c.",
            "/ai-interview/api/v1/health",
            "/caf\u{e9}",
            "/a;b=c/d,e",
        ] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Borrowed(s)) if s == p),
                "{p:?} should borrow unchanged"
            );
        }
    }

    #[test]
    fn decodes_only_unreserved() {
        assert_eq!(norm("/%41%62%63"), "/Abc");
        assert_eq!(norm("/%7e%2D%5F%2e%30"), "/~-_.0");
        assert_eq!(norm("/a%2Fb"), "/a%2Fb");
        assert_eq!(norm("/a%2fb"), "/a%2Fb");
        assert_eq!(norm("/%25"), "/%25");
        assert_eq!(norm("/%252e"), "/%252e");
        assert_eq!(norm("/%3f%3F"), "/%3F%3F");
        assert_eq!(norm("/%00"), "/%00");
        assert_eq!(norm("/%c3%a9"), "/%C3%A9");
        assert_eq!(norm("/%20x"), "/%20x");
    }

    #[test]
    fn bad_escapes() {
        for p in [
            "/%", "/a%", "/a%2", "/%zz", "/%g0", "/%0g", "/ok/%-1", "/%\u{e9}",
        ] {
            assert_eq!(normalize_path(p), Err(PathError::BadEscape), "{p:?}");
        }
        // Errors are found even after the path was already known to be unclean.
        assert_eq!(normalize_path("//a/%"), Err(PathError::BadEscape));
    }

    #[test]
    fn bad_bytes() {
        for p in [
            "/\0", "/a\nb", "/a\rb", "/\t", "/\x7f", "/\x1b[0m", "//x/\x01",
        ] {
            assert_eq!(normalize_path(p), Err(PathError::BadByte), "{p:?}");
        }
    }

    #[test]
    fn dot_segments() {
        assert_eq!(norm("/a/./b"), "/a/b");
        assert_eq!(norm("/public/../admin"), "/admin");
        assert_eq!(norm("/../x"), "/x");
        assert_eq!(norm("/../../../x"), "/x");
        assert_eq!(norm("/a/.."), "/");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/b/."), "/a/b/");
        assert_eq!(norm("/a/b/../"), "/a/");
        assert_eq!(norm("/."), "/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/./"), "/");
        assert_eq!(norm("/../"), "/");
        assert_eq!(norm("/a/b/c/./../../g"), "/a/g");
        assert_eq!(norm("/mid/content=5/../6"), "/mid/6");
        assert_eq!(norm("/a/.../b"), "/a/.../b");
    }

    #[test]
    fn dot_segments_after_decoding() {
        assert_eq!(norm("/public/%2e%2e/admin"), "/admin");
        assert_eq!(norm("/public/%2E%2E/admin"), "/admin");
        assert_eq!(norm("/public/.%2e/admin"), "/admin");
        assert_eq!(norm("/a/%2e/b"), "/a/b");
        assert_eq!(norm("/%2e%2e/%2e%2e/etc"), "/etc");
        // An encoded slash is not a separator, so this is one odd segment.
        assert_eq!(norm("/public/..%2Fadmin"), "/public/..%2Fadmin");
        assert_eq!(norm("/public/%2e%2e%2fadmin"), "/public/..%2Fadmin");
    }

    #[test]
    fn merges_slashes() {
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("///"), "/");
        assert_eq!(norm("//a///b"), "/a/b");
        assert_eq!(norm("/a//"), "/a/");
        assert_eq!(norm("/a//b//"), "/a/b/");
        assert_eq!(norm("//../a"), "/a");
        assert_eq!(norm("/a/.//b"), "/a/b");
    }

    #[test]
    fn keeps_trailing_slash() {
        assert_eq!(norm("/a/b/"), "/a/b/");
        assert_eq!(norm("/a/%62/"), "/a/b/");
    }

    #[test]
    fn idempotent_over_tricky_inputs() {
        let inputs = [
            "/",
            "//",
            "/.",
            "/..",
            "/./",
            "/../",
            "/a/./b/../c/",
            "/a/b/..",
            "/a/b/.",
            "//a///b//",
            "/public/%2e%2e/admin",
            "/public/%2E./admin",
            "/%2e",
            "/%2e/",
            "/%2e%2e%2f%2e%2e",
            "/a%2fb%2F..%2f",
            "/%41%7a%7E%5f",
            "/%c3%A9/%e2%82%ac",
            "/a/..%2e/b",
            "/a/%2e%2e%2e/b",
            "/a/....//b",
            "/caf\u{e9}/../x",
            "/%25%32%65",
            "/a/b/c/../../../../d/",
        ];
        for p in inputs {
            let once = norm(p);
            match normalize_path(&once) {
                Ok(Cow::Borrowed(twice)) => assert_eq!(twice, once, "{p:?}"),
                other => panic!("{p:?} -> {once:?} -> {other:?}: not a fixed point"),
            }
            assert!(once.starts_with('/'), "{p:?}");
            assert!(!once.contains("//"), "{p:?}");
        }
    }

    #[test]
    fn error_display() {
        let e: Box<dyn std::error::Error> = Box::new(PathError::BadEscape);
        assert!(e.to_string().contains("escape"));
        assert!(PathError::NotAbsolute.to_string().contains('/'));
        assert!(PathError::BadByte.to_string().contains("control"));
    }
}
