//! Host names: configured host patterns and request host normalization.
//!
//! This module owns [`HostPattern`] (what a route's `hosts` entry means, and
//! its validation via [`HostPattern::parse`]), [`HostError`], and
//! [`normalize_host`], which turns a request's `Host` / `:authority` into the
//! form patterns are matched against.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv6Addr;

/// Longest host name accepted in a pattern (RFC 1035, without trailing dot).
const MAX_HOST_LEN: usize = 253;

/// A host pattern as configured on a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// One host: lowercase, no port, no trailing dot (e.g. `app.example.tech`,
    /// `10.0.0.1`, `[::1]`).
    Exact(String),
    /// `*.example.tech`, stored as its suffix including the leading dot
    /// (`.example.tech`). Matches any host with at least one more label
    /// (`a.example.tech`, `a.b.example.tech`), never `example.tech` itself.
    Wildcard(String),
    /// `*`: any host.
    Any,
}

/// Why a host pattern was rejected by [`HostPattern::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// The pattern is empty (or only `*.` / a trailing dot).
    Empty,
    /// The pattern carries a port (`example.tech:443`); routes match hosts only.
    HasPort,
    /// `*` appears other than as the whole first label (`a.*.b`, `*a.b`, `*`
    /// alone is fine).
    BadWildcard,
    /// A character that cannot appear in a host name (space, `/`, `@`, ...).
    BadChar,
    /// An empty label (`a..b`, `.a`).
    EmptyLabel,
    /// A label longer than 63 bytes or a name longer than 253 bytes.
    TooLong,
    /// A bracketed IPv6 literal that does not parse (`[::g]`, `[::1`).
    BadIpLiteral,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostError::Empty => "host pattern is empty",
            HostError::HasPort => "host pattern must not contain a port",
            HostError::BadWildcard => {
                "'*' is only allowed as the whole first label (\"*.example.tech\")"
            }
            HostError::BadChar => "host pattern contains an invalid character",
            HostError::EmptyLabel => "host pattern contains an empty label",
            HostError::TooLong => "host pattern or one of its labels is too long",
            HostError::BadIpLiteral => "invalid bracketed IPv6 literal in host pattern",
        })
    }
}

impl std::error::Error for HostError {}

impl HostPattern {
    /// Parses a configured host pattern.
    ///
    /// The pattern is lowercased and one trailing dot is dropped. `*` is
    /// [`HostPattern::Any`]; `*.a.b` is `Wildcard(".a.b")`; anything else is
    /// an [`HostPattern::Exact`] host name, IPv4 literal or bracketed IPv6
    /// literal (`[::1]`; a bare `::1` is accepted and bracketed). Empty
    /// patterns, ports, whitespace and other invalid characters, empty
    /// labels, and a `*` anywhere but as the whole first label are rejected.
    pub fn parse(s: &str) -> Result<HostPattern, HostError> {
        if s.is_empty() {
            return Err(HostError::Empty);
        }
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with('[') {
            return parse_ipv6_literal(&lower).map(HostPattern::Exact);
        }
        if lower.contains(':') {
            // A bare IPv6 address is unambiguous; anything else is a port.
            return match lower.parse::<Ipv6Addr>() {
                Ok(_) => Ok(HostPattern::Exact(format!("[{lower}]"))),
                Err(_) => Err(HostError::HasPort),
            };
        }
        if let Some(suffix) = lower.strip_prefix("*.") {
            let name = validate_name(suffix)?;
            return Ok(HostPattern::Wildcard(format!(".{name}")));
        }
        validate_name(&lower).map(|name| HostPattern::Exact(name.to_owned()))
    }

    /// Whether a normalized request host (see [`normalize_host`]) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => wildcard_matches(suffix, host),
            HostPattern::Any => true,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// `suffix` is a wildcard's stored suffix (with leading dot); the host must
/// have at least one non-empty label in front of it.
pub(crate) fn wildcard_matches(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len() && host.ends_with(suffix)
}

/// Validates a lowercased dotted host name (no port, no brackets) and returns
/// it without one trailing dot.
fn validate_name(name: &str) -> Result<&str, HostError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(HostError::TooLong);
        }
        for b in label.bytes() {
            match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
                b'*' => return Err(HostError::BadWildcard),
                _ => return Err(HostError::BadChar),
            }
        }
    }
    Ok(name)
}

/// Validates a lowercased `[...]` IPv6 literal and returns it unchanged.
fn parse_ipv6_literal(s: &str) -> Result<String, HostError> {
    let Some(close) = s.find(']') else {
        return Err(HostError::BadIpLiteral);
    };
    if close + 1 != s.len() {
        return Err(if s[close + 1..].starts_with(':') {
            HostError::HasPort
        } else {
            HostError::BadIpLiteral
        });
    }
    match s[1..close].parse::<Ipv6Addr>() {
        Ok(_) => Ok(s.to_owned()),
        Err(_) => Err(HostError::BadIpLiteral),
    }
}

/// Normalizes a request host for matching: strips the port (`:8080`, also
/// after a bracketed IPv6 literal, `[::1]:8080` → `[::1]`), lowercases
/// (ASCII), and strips one trailing dot.
///
/// Borrows unless lowercasing is needed. Input that is not a valid host is not
/// rejected here; it simply will not match any exact or wildcard pattern.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let host = if host.starts_with('[') {
        match host.find(']') {
            Some(close) => &host[..=close],
            None => host,
        }
    } else {
        match host.find(':') {
            // A single colon separates the port; more than one means an
            // unbracketed IPv6 address, which is left alone.
            Some(colon) if !host[colon + 1..].contains(':') => &host[..colon],
            _ => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> HostPattern {
        HostPattern::Exact(s.to_owned())
    }

    fn wild(s: &str) -> HostPattern {
        HostPattern::Wildcard(s.to_owned())
    }

    #[test]
    fn parse_exact() {
        assert_eq!(
            HostPattern::parse("example.tech"),
            Ok(exact("example.tech"))
        );
        assert_eq!(
            HostPattern::parse("App.Example.TECH"),
            Ok(exact("app.example.tech"))
        );
        assert_eq!(
            HostPattern::parse("example.tech."),
            Ok(exact("example.tech"))
        );
        assert_eq!(HostPattern::parse("localhost"), Ok(exact("localhost")));
        assert_eq!(
            HostPattern::parse("my_svc.internal"),
            Ok(exact("my_svc.internal"))
        );
        assert_eq!(
            HostPattern::parse("xn--bcher-kva.example"),
            Ok(exact("xn--bcher-kva.example"))
        );
    }

    #[test]
    fn parse_ip_literals() {
        assert_eq!(HostPattern::parse("10.0.0.1"), Ok(exact("10.0.0.1")));
        assert_eq!(HostPattern::parse("[::1]"), Ok(exact("[::1]")));
        assert_eq!(HostPattern::parse("[FE80::1]"), Ok(exact("[fe80::1]")));
        assert_eq!(HostPattern::parse("::1"), Ok(exact("[::1]")));
        assert_eq!(
            HostPattern::parse("[::ffff:10.0.0.1]"),
            Ok(exact("[::ffff:10.0.0.1]"))
        );
        assert_eq!(HostPattern::parse("[::1]:8080"), Err(HostError::HasPort));
        assert_eq!(HostPattern::parse("[::g]"), Err(HostError::BadIpLiteral));
        assert_eq!(HostPattern::parse("[::1"), Err(HostError::BadIpLiteral));
        assert_eq!(HostPattern::parse("[::1]x"), Err(HostError::BadIpLiteral));
        assert_eq!(HostPattern::parse("[]"), Err(HostError::BadIpLiteral));
    }

    #[test]
    fn parse_wildcards() {
        assert_eq!(HostPattern::parse("*"), Ok(HostPattern::Any));
        assert_eq!(
            HostPattern::parse("*.example.tech"),
            Ok(wild(".example.tech"))
        );
        assert_eq!(HostPattern::parse("*.A.B"), Ok(wild(".a.b")));
        assert_eq!(HostPattern::parse("*.tech."), Ok(wild(".tech")));
        assert_eq!(HostPattern::parse("a.*.b"), Err(HostError::BadWildcard));
        assert_eq!(HostPattern::parse("*a.b"), Err(HostError::BadWildcard));
        assert_eq!(HostPattern::parse("a*.b"), Err(HostError::BadWildcard));
        assert_eq!(HostPattern::parse("*.*.b"), Err(HostError::BadWildcard));
        assert_eq!(HostPattern::parse("a.b.*"), Err(HostError::BadWildcard));
        assert_eq!(HostPattern::parse("**"), Err(HostError::BadWildcard));
        assert_eq!(HostPattern::parse("*."), Err(HostError::Empty));
    }

    #[test]
    fn parse_rejects() {
        assert_eq!(HostPattern::parse(""), Err(HostError::Empty));
        assert_eq!(HostPattern::parse("."), Err(HostError::Empty));
        assert_eq!(
            HostPattern::parse("example.tech:443"),
            Err(HostError::HasPort)
        );
        assert_eq!(
            HostPattern::parse("*.example.tech:443"),
            Err(HostError::HasPort)
        );
        assert_eq!(HostPattern::parse("exa mple.tech"), Err(HostError::BadChar));
        assert_eq!(HostPattern::parse(" example.tech"), Err(HostError::BadChar));
        assert_eq!(HostPattern::parse("example.tech "), Err(HostError::BadChar));
        assert_eq!(HostPattern::parse("a/b"), Err(HostError::BadChar));
        assert_eq!(HostPattern::parse("user@host"), Err(HostError::BadChar));
        assert_eq!(
            HostPattern::parse("caf\u{e9}.tech"),
            Err(HostError::BadChar)
        );
        assert_eq!(HostPattern::parse("a..b"), Err(HostError::EmptyLabel));
        assert_eq!(HostPattern::parse(".a"), Err(HostError::EmptyLabel));
        assert_eq!(HostPattern::parse("a.b.."), Err(HostError::EmptyLabel));
        assert_eq!(HostPattern::parse(&"a".repeat(64)), Err(HostError::TooLong));
        let long = vec!["abcdefghi"; 30].join(".");
        assert_eq!(HostPattern::parse(&long), Err(HostError::TooLong));
        assert!(HostPattern::parse(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn display_round_trips() {
        for s in ["*", "*.example.tech", "example.tech", "[::1]", "10.0.0.1"] {
            let p = HostPattern::parse(s).expect(s);
            assert_eq!(p.to_string(), s);
            assert_eq!(HostPattern::parse(&p.to_string()), Ok(p));
        }
        assert!(HostError::HasPort.to_string().contains("port"));
    }

    #[test]
    fn matching() {
        let w = HostPattern::parse("*.example.tech").unwrap();
        assert!(w.matches("a.example.tech"));
        assert!(w.matches("a.b.example.tech"));
        assert!(!w.matches("example.tech"));
        assert!(!w.matches(".example.tech"));
        assert!(!w.matches("aexample.tech"));
        assert!(!w.matches("a.example.tech.evil"));
        let e = HostPattern::parse("Example.Tech").unwrap();
        assert!(e.matches("example.tech"));
        assert!(!e.matches("a.example.tech"));
        assert!(HostPattern::Any.matches(""));
        assert!(HostPattern::Any.matches("anything"));
    }

    #[test]
    fn normalize_host_ports_and_case() {
        assert_eq!(normalize_host("example.tech"), "example.tech");
        assert_eq!(normalize_host("example.tech:8080"), "example.tech");
        assert_eq!(normalize_host("Example.TECH:443"), "example.tech");
        assert_eq!(normalize_host("example.tech."), "example.tech");
        assert_eq!(normalize_host("example.tech.:8443"), "example.tech");
        assert_eq!(normalize_host("example.tech.."), "example.tech.");
        assert_eq!(normalize_host("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(normalize_host("example.tech:"), "example.tech");
        assert_eq!(normalize_host(""), "");
    }

    #[test]
    fn normalize_host_ipv6() {
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[FE80::1]:443"), "[fe80::1]");
        assert_eq!(normalize_host("[::1"), "[::1");
        // Unbracketed IPv6 is not valid in Host; it is left as is (lowercased).
        assert_eq!(normalize_host("FE80::1"), "fe80::1");
    }

    #[test]
    fn normalize_host_borrows_when_possible() {
        assert!(matches!(
            normalize_host("a.example.tech:8080"),
            Cow::Borrowed("a.example.tech")
        ));
        assert!(matches!(normalize_host("[::1]:1"), Cow::Borrowed("[::1]")));
        assert!(matches!(normalize_host("A.example.tech"), Cow::Owned(_)));
    }
}
