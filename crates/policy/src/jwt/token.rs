//! Splitting a compact JWS (`header.payload.signature`) and decoding its parts. Only the
//! shape is checked here; the signature and the claims are checked by the callers.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::JwtError;

/// The largest token accepted (the `Authorization` value after `Bearer `).
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token whose parts decoded; nothing about it is trusted yet.
pub(crate) struct Token<'a> {
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `base64url(header) . base64url(payload)`, the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

impl<'a> Token<'a> {
    pub fn parse(token: &'a str) -> Result<Token<'a>, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("a JWT has three dot-separated parts"));
        };
        let header =
            decode_object(h).ok_or(JwtError::Malformed("the header is not base64url JSON"))?;
        let claims =
            decode_object(p).ok_or(JwtError::Malformed("the payload is not base64url JSON"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| JwtError::Malformed("the signature is not base64url"))?;
        if header.contains_key("crit") {
            // RFC 7515 §4.1.11: no extension is understood, so a critical one must fail.
            return Err(JwtError::Malformed("the header has critical extensions"));
        }
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(JwtError::Malformed("the header has no alg")),
        };
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JwtError::Malformed("kid is not a string")),
        };
        let signing_input = &token.as_bytes()[..h.len() + 1 + p.len()];
        Ok(Token {
            alg,
            kid,
            claims,
            signing_input,
            signature,
        })
    }
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64(r#"{"sub":"u"}"#),
            b64("sig")
        );
        let tok = Token::parse(&t).unwrap();
        assert_eq!(tok.alg, "RS256");
        assert_eq!(tok.kid.as_deref(), Some("k1"));
        assert_eq!(tok.claims["sub"], "u");
        assert_eq!(tok.signature, b"sig");
        assert_eq!(tok.signing_input, t.rsplit_once('.').unwrap().0.as_bytes());
    }

    #[test]
    fn rejects_bad_shapes() {
        let h = b64(r#"{"alg":"RS256"}"#);
        let p = b64(r#"{}"#);
        for bad in [
            String::new(),
            "a.b".into(),
            format!("{h}.{p}.c.d"),
            format!("{h}.{p}.!!"),
            format!("{h}.{}.x", b64("[1]")),
            format!("{}.{p}.x", b64(r#"{"alg":"RS256","crit":["exp"]}"#)),
            format!("{}.{p}.x", b64(r#"{"kid":"x"}"#)),
            format!("{}.{p}.x", b64(r#"{"alg":"RS256","kid":5}"#)),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(Token::parse(&bad).is_err(), "{bad:.60}");
        }
    }
}
