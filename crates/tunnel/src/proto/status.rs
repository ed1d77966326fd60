//! The agent's answer on a proxied stream, sent after the stream header and before any
//! upstream byte: connected, or refused with a reason, so the gateway can try another
//! agent (or answer 502/504) before it sends a request byte.

use std::fmt;

use super::codec::{Reader, put_short_str};
use super::{Kind, Message, ProtoError};

/// Why an agent did not connect a stream to its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// The upstream is outside the agent's allow list.
    NotAllowed,
    /// The upstream refused the connection, or its name did not resolve.
    DialFailed,
    /// Connecting to the upstream timed out.
    DialTimeout,
    /// The stream header could not be read.
    BadHeader,
    /// A code this version does not know.
    Other(u8),
}

impl RefuseReason {
    fn code(self) -> u8 {
        match self {
            RefuseReason::NotAllowed => 1,
            RefuseReason::DialFailed => 2,
            RefuseReason::DialTimeout => 3,
            RefuseReason::BadHeader => 4,
            RefuseReason::Other(c) => c,
        }
    }

    fn from_code(c: u8) -> RefuseReason {
        match c {
            1 => RefuseReason::NotAllowed,
            2 => RefuseReason::DialFailed,
            3 => RefuseReason::DialTimeout,
            4 => RefuseReason::BadHeader,
            c => RefuseReason::Other(c),
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::NotAllowed => f.write_str("not in the agent's allow list"),
            RefuseReason::DialFailed => f.write_str("could not connect to the upstream"),
            RefuseReason::DialTimeout => f.write_str("connecting to the upstream timed out"),
            RefuseReason::BadHeader => f.write_str("bad stream header"),
            RefuseReason::Other(c) => write!(f, "refused with code {c}"),
        }
    }
}

/// The agent's answer to a stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenStatus {
    Connected,
    Refused {
        reason: RefuseReason,
        message: String,
    },
}

impl Message for OpenStatus {
    const KIND: Kind = Kind::OpenStatus;

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            OpenStatus::Connected => {
                out.push(0);
                put_short_str(out, "");
            }
            OpenStatus::Refused { reason, message } => {
                out.push(reason.code());
                put_short_str(out, message);
            }
        }
    }

    fn decode_body(body: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(body);
        let code = r.u8()?;
        let message = r.short_str("status message")?.to_string();
        r.finish()?;
        Ok(match code {
            0 => OpenStatus::Connected,
            c => OpenStatus::Refused {
                reason: RefuseReason::from_code(c),
                message,
            },
        })
    }
}
