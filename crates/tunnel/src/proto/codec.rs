//! Field-level encoding shared by the messages: a bounds-checked reader over a frame body
//! and the matching writers (length-prefixed strings, socket addresses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::ProtoError;

/// Reads fields from a frame body; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self.pos + n;
        let slice = self.buf.get(self.pos..end).ok_or(ProtoError::Truncated {
            needed: end,
            got: self.buf.len(),
        })?;
        self.pos = end;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A string of at most 255 bytes, preceded by its length.
    pub(crate) fn short_str(&mut self, field: &'static str) -> Result<&'a str, ProtoError> {
        let len = usize::from(self.u8()?);
        std::str::from_utf8(self.bytes(len)?).map_err(|_| ProtoError::invalid(field, "not UTF-8"))
    }

    pub(crate) fn socket_addr(&mut self) -> Result<SocketAddr, ProtoError> {
        let ip = match self.u8()? {
            4 => {
                let b: [u8; 4] = self.bytes(4)?.try_into().unwrap_or([0; 4]);
                IpAddr::V4(Ipv4Addr::from(b))
            }
            6 => {
                let b: [u8; 16] = self.bytes(16)?.try_into().unwrap_or([0; 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return Err(ProtoError::invalid("client address", "unknown family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    /// Fails when bytes are left over.
    pub(crate) fn finish(self) -> Result<(), ProtoError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(ProtoError::TrailingBytes(n)),
        }
    }
}

/// Writes a string of at most 255 bytes with its length; longer input is cut on a
/// character boundary (only free-text fields such as reasons may be long).
pub(crate) fn put_short_str(out: &mut Vec<u8>, s: &str) {
    let s = truncate(s, usize::from(u8::MAX));
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn put_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
