//! The connection handshake: the agent's [`Hello`] (its name and token) and the gateway's
//! [`HelloAnswer`] (accepted under a name, or refused with a reason).

use std::fmt;

use super::codec::{Reader, put_short_str};
use super::{Kind, Message, ProtoError};

/// The agent's first message on a new connection. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    name: String,
    token: String,
}

impl Hello {
    /// `name` may be empty (the gateway then names the agent after its token); both fields
    /// are limited to 255 bytes, and the token may not be empty.
    pub fn new(name: &str, token: &str) -> Result<Hello, ProtoError> {
        if name.len() > usize::from(u8::MAX) {
            return Err(ProtoError::invalid("agent name", "longer than 255 bytes"));
        }
        if token.is_empty() {
            return Err(ProtoError::invalid("token", "empty"));
        }
        if token.len() > usize::from(u8::MAX) {
            return Err(ProtoError::invalid("token", "longer than 255 bytes"));
        }
        Ok(Hello {
            name: name.to_string(),
            token: token.to_string(),
        })
    }

    /// The name the agent believes it has (may be empty).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn token(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("name", &self.name)
            .field("token", &"***")
            .finish()
    }
}

impl Message for Hello {
    const KIND: Kind = Kind::Hello;

    fn encode_body(&self, out: &mut Vec<u8>) {
        put_short_str(out, &self.name);
        put_short_str(out, &self.token);
    }

    fn decode_body(body: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(body);
        let name = r.short_str("agent name")?.to_string();
        let token = r.short_str("token")?;
        r.finish()?;
        Hello::new(&name, token)
    }
}

/// The gateway's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloAnswer {
    /// The token is valid; the agent is known under `name`.
    Accepted { name: String },
    /// The agent may not connect; `reason` is for its log.
    Refused { reason: String },
}

impl Message for HelloAnswer {
    const KIND: Kind = Kind::HelloAnswer;

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            HelloAnswer::Accepted { name } => {
                out.push(0);
                put_short_str(out, name);
            }
            HelloAnswer::Refused { reason } => {
                out.push(1);
                put_short_str(out, reason);
            }
        }
    }

    fn decode_body(body: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(body);
        let code = r.u8()?;
        let text = r.short_str("answer text")?.to_string();
        r.finish()?;
        match code {
            0 => Ok(HelloAnswer::Accepted { name: text }),
            1 => Ok(HelloAnswer::Refused { reason: text }),
            _ => Err(ProtoError::invalid("answer", "unknown code")),
        }
    }
}
