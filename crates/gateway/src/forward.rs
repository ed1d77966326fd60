//! Header rules for forwarding: hop-by-hop headers out, `X-Forwarded-*` and `X-Real-IP` in,
//! and the client address as seen through trusted proxies.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use kakuremichi_config::net::{Cidr, canonical_ip};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

const HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
];

/// Whether `target` can be written as an origin-form request target: it starts with `/` and
/// has only visible ASCII (and bytes above it), no fragment.
pub fn is_request_target(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| b > b' ' && b != 0x7f && b != b'#')
}

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(false)
}

/// Removes hop-by-hop headers, including those the `Connection` header names. With
/// `keep_upgrade`, the upgrade handshake headers are put back as `Connection: upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages have none, or only `Connection` (`keep-alive` from most upstreams): one
    // pass over the names finds which, and only those are removed.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| *hop == name) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let upgrade = if keep_upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // Names the `Connection` header lists, but not those removed below anyway.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|t| {
            !HOP_BY_HOP
                .iter()
                .any(|hop| hop.as_str().eq_ignore_ascii_case(t))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(&name);
    }
    for (name, there) in HOP_BY_HOP.iter().zip(present) {
        if there {
            headers.remove(*name);
        }
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    let peer = canonical_ip(peer);
    if !trusted(peer, proxies) {
        return peer;
    }
    let mut candidate = peer;
    let hops: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect();
    for ip in hops.into_iter().rev() {
        candidate = canonical_ip(ip);
        if !trusted(candidate, proxies) {
            break;
        }
    }
    candidate
}

/// The text of an address as the forwarding headers carry it (IPv4-mapped IPv6 as IPv4).
pub fn ip_text(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&canonical_ip(ip).to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// What the forwarding headers are made from.
pub struct ForwardedFacts<'a> {
    pub peer: IpAddr,
    /// [`ip_text`] of `peer`, made once per connection.
    pub peer_text: &'a HeaderValue,
    pub client: IpAddr,
    pub peer_trusted: bool,
    pub https: bool,
    pub host: Option<&'a HeaderValue>,
    /// The local port, made once per connection.
    pub port: &'a HeaderValue,
}

/// Sets `X-Forwarded-For/-Proto/-Host/-Port` and `X-Real-IP`. An untrusted peer's
/// `X-Forwarded-*` values are replaced; a trusted proxy's `X-Forwarded-For` is extended and
/// its other `X-Forwarded-*` values are kept.
pub fn set_forwarded(headers: &mut HeaderMap, facts: &ForwardedFacts<'_>) {
    let previous: Vec<&str> = if facts.peer_trusted {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let xff = if previous.is_empty() {
        Some(facts.peer_text.clone())
    } else {
        let peer = facts.peer_text.to_str().unwrap_or("unknown");
        HeaderValue::from_str(&format!("{}, {peer}", previous.join(", "))).ok()
    };
    if let Some(v) = xff {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    let real_ip = if facts.client == canonical_ip(facts.peer) {
        facts.peer_text.clone()
    } else {
        ip_text(facts.client)
    };
    headers.insert(&X_REAL_IP, real_ip);
    let keep =
        |headers: &HeaderMap, name: &HeaderName| facts.peer_trusted && headers.contains_key(name);
    if !keep(headers, &X_FORWARDED_PROTO) {
        headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if facts.https { "https" } else { "http" }),
        );
    }
    if !keep(headers, &X_FORWARDED_HOST) {
        match facts.host {
            Some(h) => {
                headers.insert(&X_FORWARDED_HOST, h.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    if !keep(headers, &X_FORWARDED_PORT) {
        headers.insert(&X_FORWARDED_PORT, facts.port.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakuremichi_config::net::parse_cidr;

    #[test]
    fn request_targets() {
        for ok in ["/", "/a/b?x=1&y=%20", "/caf\u{e9}", "/{x}"] {
            assert!(is_request_target(ok), "{ok}");
        }
        for bad in ["", "a", "/a b", "/a#frag", "/a\tb", "/\u{7f}"] {
            assert!(!is_request_target(bad), "{bad:?}");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        // What most upstreams send: only `Connection`, naming a hop-by-hop header.
        let mut h = map(&[("Connection", "Keep-Alive"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_headers_survive_when_upgrading() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn untrusted_forwarded_for_is_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let client = client_ip(peer, &h, &[]);
        assert_eq!(client, peer);
        let host = HeaderValue::from_static("example.com");
        set_forwarded(
            &mut h,
            &ForwardedFacts {
                peer,
                peer_text: &ip_text(peer),
                client,
                peer_trusted: false,
                https: false,
                host: Some(&host),
                port: &HeaderValue::from(80u16),
            },
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        assert_eq!(h["x-real-ip"], "192.0.2.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["x-forwarded-port"], "80");
    }

    #[test]
    fn trusted_forwarded_for_is_extended() {
        let proxies = vec![parse_cidr("10.0.0.0/8").unwrap()];
        let mut h = map(&[("x-forwarded-for", "203.0.113.9, 10.1.1.1")]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let client = client_ip(peer, &h, &proxies);
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().unwrap());
        set_forwarded(
            &mut h,
            &ForwardedFacts {
                peer,
                peer_text: &ip_text(peer),
                client,
                peer_trusted: true,
                https: true,
                host: None,
                port: &HeaderValue::from(443u16),
            },
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.1.1, 10.0.0.2");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
    }
}
