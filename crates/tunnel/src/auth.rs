//! Agent authentication on the gateway: which agent names may connect, with the SHA-256 of
//! their tokens (the gateway never needs the token itself). Tokens are compared by hash in
//! constant time.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::pin::decode_hex32;
use crate::proto::Hello;

/// SHA-256 of an agent token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

/// A `token_sha256` value that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a token hash is 64 hex digits (SHA-256)")]
pub struct TokenHashError;

impl TokenHash {
    /// Hashes a token.
    pub fn of_token(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(hex: &str) -> Result<TokenHash, TokenHashError> {
        decode_hex32(hex.trim())
            .map(TokenHash)
            .ok_or(TokenHashError)
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn matches(&self, other: &TokenHash) -> bool {
        constant_time_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// Compares two digests without an early exit.
pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The agents allowed to connect: names with the hashes of their tokens. A name may have
/// several hashes (token rotation), and several agents may share a name (a group).
#[derive(Debug, Clone, Default)]
pub struct AgentAuth {
    entries: Vec<(String, TokenHash)>,
}

impl AgentAuth {
    pub fn new() -> AgentAuth {
        AgentAuth::default()
    }

    /// Allows agents presenting a token with this hash, under `name`.
    pub fn allow(mut self, name: impl Into<String>, hash: TokenHash) -> AgentAuth {
        self.entries.push((name.into(), hash));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decides on a hello: the agent's name, or why it is refused. Every entry is compared,
    /// so the time taken does not depend on which entry matched.
    pub(crate) fn check(&self, hello: &Hello) -> Result<(String, TokenHash), String> {
        let presented = TokenHash::of_token(hello.token());
        let mut by_token: Option<&str> = None;
        let mut by_name_and_token: Option<&str> = None;
        for (name, hash) in &self.entries {
            if hash.matches(&presented) {
                by_token.get_or_insert(name);
                if name == hello.name() {
                    by_name_and_token.get_or_insert(name);
                }
            }
        }
        match (by_name_and_token, by_token) {
            (Some(name), _) => Ok((name.to_string(), presented)),
            (None, Some(name)) if hello.name().is_empty() => Ok((name.to_string(), presented)),
            (None, Some(_)) => Err(format!(
                "the token is not valid for an agent named {:?}",
                hello.name()
            )),
            (None, None) => Err("unknown agent token".to_string()),
        }
    }

    /// Whether a connected agent is still allowed (after a reload).
    pub(crate) fn still_allows(&self, name: &str, hash: &TokenHash) -> bool {
        self.entries
            .iter()
            .any(|(n, h)| n == name && h.matches(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_names() {
        let auth = AgentAuth::new()
            .allow("home", TokenHash::of_token("agt_home"))
            .allow("home", TokenHash::of_token("agt_home_next"))
            .allow("office", TokenHash::of_token("agt_office"));
        let hello = |name, token| Hello::new(name, token).unwrap();
        assert_eq!(auth.check(&hello("home", "agt_home")).unwrap().0, "home");
        assert_eq!(
            auth.check(&hello("home", "agt_home_next")).unwrap().0,
            "home"
        );
        assert_eq!(auth.check(&hello("", "agt_office")).unwrap().0, "office");
        assert!(auth.check(&hello("home", "agt_office")).is_err());
        assert!(auth.check(&hello("home", "wrong")).is_err());
        let (_, h) = auth.check(&hello("home", "agt_home")).unwrap();
        assert!(auth.still_allows("home", &h));
        assert!(!AgentAuth::new().still_allows("home", &h));
    }

    #[test]
    fn hex_round_trip() {
        let h = TokenHash::of_token("agt_x");
        assert_eq!(TokenHash::from_hex(&h.to_hex()).unwrap(), h);
        assert_eq!(TokenHash::from_hex("abc"), Err(TokenHashError));
        assert!(!format!("{h:?}").contains(&h.to_hex()));
    }
}
