//! The stream header the gateway sends first on every proxied stream: which upstream the
//! agent should dial (`host:port`) and the address of the real client.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};

use super::codec::{Reader, put_short_str, put_socket_addr};
use super::{Kind, Message, ProtoError};

/// Where the agent should connect: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    host: String,
    port: u16,
}

impl Upstream {
    /// Parses `host:port`, `a.b.c.d:port` or `[v6]:port`. Host names are limited to
    /// letters, digits, `-`, `_` and `.`, and kept in lower case.
    pub fn parse(s: &str) -> Result<Upstream, ProtoError> {
        const FIELD: &str = "upstream";
        if s.len() > usize::from(u8::MAX) {
            return Err(ProtoError::invalid(FIELD, "longer than 255 bytes"));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or(ProtoError::invalid(FIELD, "missing :port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| ProtoError::invalid(FIELD, "port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(ProtoError::invalid(FIELD, "port 0"));
        }
        if let Some(inner) = host.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or(ProtoError::invalid(FIELD, "unclosed ["))?;
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| ProtoError::invalid(FIELD, "invalid IPv6 address"))?;
            return Ok(Upstream {
                host: ip.to_string(),
                port,
            });
        }
        if host.is_empty() {
            return Err(ProtoError::invalid(FIELD, "empty host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(ProtoError::invalid(
                FIELD,
                "host has characters outside [A-Za-z0-9._-]",
            ));
        }
        Ok(Upstream {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The host without brackets: a name, an IPv4 or an IPv6 address.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for Upstream {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Upstream::parse(s)
    }
}

/// The first frame of every proxied stream, sent by the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub upstream: Upstream,
    pub client: SocketAddr,
}

impl Message for StreamHeader {
    const KIND: Kind = Kind::StreamHeader;

    fn encode_body(&self, out: &mut Vec<u8>) {
        put_short_str(out, &self.upstream.to_string());
        put_socket_addr(out, self.client);
    }

    fn decode_body(body: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(body);
        let upstream = Upstream::parse(r.short_str("upstream")?)?;
        let client = r.socket_addr()?;
        r.finish()?;
        Ok(StreamHeader { upstream, client })
    }
}
