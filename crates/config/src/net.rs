//! Network values in config files: listen addresses, CIDR ranges and upstream URLs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer};

/// A socket address to listen on, written `"0.0.0.0:80"` or `"[::]:443"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SocketAddr::from_str(text.trim()).map(ListenAddr).map_err(|_| {
            de::Error::custom(format!(
                "invalid listen address \"{text}\": write IP:port, like \"0.0.0.0:8080\" or \"[::]:443\""
            ))
        })
    }
}

/// An IP range, written as CIDR (`"10.0.0.0/8"`) or as a single address (`"192.0.2.7"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(pub IpNet);

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.0.contains(&ip)
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) to plain IPv4 so that rules written for
/// IPv4 apply to clients accepted on a dual-stack socket.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

pub fn parse_cidr(text: &str) -> Result<Cidr, String> {
    let t = text.trim();
    if let Ok(net) = IpNet::from_str(t) {
        return Ok(Cidr(net.trunc()));
    }
    if let Ok(ip) = IpAddr::from_str(t) {
        return Ok(Cidr(IpNet::from(ip)));
    }
    Err(format!(
        "invalid CIDR \"{text}\": write an address range like \"10.0.0.0/8\" or a single address"
    ))
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_cidr(&text).map_err(de::Error::custom)
    }
}

/// The scheme of an upstream URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// An upstream URL such as `"http://10.0.0.5:8080"` or `"https://origin.example/base"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    /// Path prefix that is put in front of every forwarded path; empty for none.
    pub base_path: String,
    /// The URL as written (for logs and metrics labels).
    pub original: String,
}

impl UpstreamUrl {
    /// `host:port` as it is dialed (brackets around IPv6 literals).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

pub fn parse_upstream_url(text: &str) -> Result<UpstreamUrl, String> {
    let bad = |why: &str| format!("invalid upstream URL \"{text}\": {why}");
    let uri = http::Uri::from_str(text.trim()).map_err(|_| {
        bad("write a URL like \"http://127.0.0.1:8080\" or \"https://origin.example\"")
    })?;
    let scheme = match uri.scheme_str() {
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(other) => return Err(bad(&format!("scheme \"{other}\" is not http or https"))),
        None => {
            return Err(bad(
                "the scheme is missing; start it with http:// or https://",
            ));
        }
    };
    let authority = uri.authority().ok_or_else(|| bad("the host is missing"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user information in upstream URLs is not supported"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    let port = authority.port_u16().unwrap_or(match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    });
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed"));
    }
    let path = uri.path();
    let base_path = if path == "/" || path.is_empty() {
        String::new()
    } else {
        path.trim_end_matches('/').to_string()
    };
    Ok(UpstreamUrl {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
        base_path,
        original: text.trim().to_string(),
    })
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_upstream_url(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert!(
            parse_cidr("10.0.0.0/8")
                .unwrap()
                .contains("10.1.2.3".parse().unwrap())
        );
        assert!(
            parse_cidr("10.0.0.1")
                .unwrap()
                .contains("10.0.0.1".parse().unwrap())
        );
        assert!(
            !parse_cidr("10.0.0.1")
                .unwrap()
                .contains("10.0.0.2".parse().unwrap())
        );
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
        // IPv4-mapped clients match IPv4 rules.
        assert!(
            parse_cidr("127.0.0.0/8")
                .unwrap()
                .contains("::ffff:127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn upstream_urls() {
        let u = parse_upstream_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Http, "127.0.0.1", 8080)
        );
        assert_eq!(u.base_path, "");
        let u = parse_upstream_url("https://Origin.Example/base/").unwrap();
        assert_eq!((u.port, u.base_path.as_str()), (443, "/base"));
        assert_eq!(u.authority(), "origin.example:443");
        let u = parse_upstream_url("http://[::1]:9000").unwrap();
        assert_eq!(u.authority(), "[::1]:9000");
        assert!(parse_upstream_url("ftp://x").is_err());
        assert!(parse_upstream_url("localhost:8080").is_err());
        assert!(parse_upstream_url("http://x/?a=b").is_err());
        assert!(parse_upstream_url("not a url").is_err());
    }
}
