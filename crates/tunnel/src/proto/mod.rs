//! The tunnel's wire format, without I/O: every message is one frame of at most
//! [`MAX_FRAME`] bytes, `[version][kind][length: u16 BE][body]`, so a reader knows after
//! four bytes whether to go on and how much to read.
//!
//! Messages: the agent's [`Hello`] and the gateway's [`HelloAnswer`] open a connection; the
//! gateway's [`StreamHeader`] and the agent's [`OpenStatus`] open each proxied stream.
//! Every decoder is total: truncated, oversized or garbage input gives a [`ProtoError`].

mod codec;
mod header;
mod hello;
mod status;

#[cfg(test)]
mod tests;

pub use header::{StreamHeader, Upstream};
pub use hello::{Hello, HelloAnswer};
pub use status::{OpenStatus, RefuseReason};

/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes before a frame's body: version, kind, and the body length.
pub const PREFIX_LEN: usize = 4;
/// The largest frame, prefix included.
pub const MAX_FRAME: usize = 1024;
/// The ALPN protocol name of the tunnel, on QUIC and on TLS over TCP.
pub const ALPN: &[u8] = b"kakuremichi/1";

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hello = 1,
    HelloAnswer = 2,
    StreamHeader = 3,
    OpenStatus = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::HelloAnswer,
            3 => Kind::StreamHeader,
            4 => Kind::OpenStatus,
            _ => return None,
        })
    }
}

/// Why bytes could not be decoded, or a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("truncated frame: {needed} bytes needed, {got} present")]
    Truncated { needed: usize, got: usize },
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("expected a {expected:?} frame, got {got:?}")]
    UnexpectedKind { expected: Kind, got: Kind },
    #[error("{0} trailing bytes after the frame body")]
    TrailingBytes(usize),
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

impl ProtoError {
    pub(crate) fn invalid(field: &'static str, reason: &'static str) -> ProtoError {
        ProtoError::Invalid { field, reason }
    }
}

/// The start of a frame: which message follows and how long its body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub kind: Kind,
    pub body_len: usize,
}

impl Prefix {
    /// Checks a frame prefix: version, kind and the size limit.
    pub fn parse(bytes: [u8; PREFIX_LEN]) -> Result<Prefix, ProtoError> {
        if bytes[0] != VERSION {
            return Err(ProtoError::UnsupportedVersion(bytes[0]));
        }
        let kind = Kind::from_byte(bytes[1]).ok_or(ProtoError::UnknownKind(bytes[1]))?;
        let body_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if PREFIX_LEN + body_len > MAX_FRAME {
            return Err(ProtoError::Oversized {
                len: PREFIX_LEN + body_len,
                max: MAX_FRAME,
            });
        }
        Ok(Prefix { kind, body_len })
    }
}

/// A message that travels as one frame.
pub trait Message: Sized {
    const KIND: Kind;

    /// Appends the body (without prefix). Bodies stay under the frame limit by construction.
    fn encode_body(&self, out: &mut Vec<u8>);

    /// Decodes a complete body (without prefix).
    fn decode_body(body: &[u8]) -> Result<Self, ProtoError>;

    /// The whole frame, prefix included.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION, Self::KIND as u8, 0, 0];
        self.encode_body(&mut out);
        let body_len = out.len() - PREFIX_LEN;
        debug_assert!(out.len() <= MAX_FRAME, "frame over the limit");
        let len = u16::try_from(body_len).unwrap_or(u16::MAX);
        out[2..4].copy_from_slice(&len.to_be_bytes());
        out
    }

    /// Decodes exactly one whole frame, prefix included.
    fn decode(frame: &[u8]) -> Result<Self, ProtoError> {
        let prefix: [u8; PREFIX_LEN] = frame
            .get(..PREFIX_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or(ProtoError::Truncated {
                needed: PREFIX_LEN,
                got: frame.len(),
            })?;
        let prefix = Prefix::parse(prefix)?;
        if prefix.kind != Self::KIND {
            return Err(ProtoError::UnexpectedKind {
                expected: Self::KIND,
                got: prefix.kind,
            });
        }
        let end = PREFIX_LEN + prefix.body_len;
        if frame.len() < end {
            return Err(ProtoError::Truncated {
                needed: end,
                got: frame.len(),
            });
        }
        if frame.len() > end {
            return Err(ProtoError::TrailingBytes(frame.len() - end));
        }
        Self::decode_body(&frame[PREFIX_LEN..end])
    }
}
