//! The ACME account key (ECDSA P-256) and the JSON Web Signatures (RFC 7515, ES256) that
//! every ACME request carries; key authorizations and the JWK thumbprint (RFC 7638).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// base64url without padding.
pub(crate) fn b64(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub(crate) fn sha256(data: impl AsRef<[u8]>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Why an account key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct KeyError(&'static str);

pub(crate) struct AccountKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    x: String,
    y: String,
    thumbprint: String,
}

impl AccountKey {
    /// A fresh key and its PKCS#8 encoding (to persist).
    pub fn generate() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError("cannot generate an ECDSA P-256 key"))?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| KeyError("not a PKCS#8 ECDSA P-256 private key"))?;
        // Uncompressed point: 0x04 || x || y.
        let public = pair.public_key().as_ref();
        if public.len() != 65 || public[0] != 4 {
            return Err(KeyError("unexpected public key encoding"));
        }
        let x = b64(&public[1..33]);
        let y = b64(&public[33..65]);
        // RFC 7638: the required members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = b64(sha256(canonical));
        Ok(Self {
            pair,
            rng,
            x,
            y,
            thumbprint,
        })
    }

    pub fn jwk(&self) -> Value {
        json!({ "crv": "P-256", "kty": "EC", "x": self.x, "y": self.y })
    }

    /// `token.thumbprint` (RFC 8555 section 8.1).
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint)
    }

    /// A flattened JWS over `payload` (`None`: POST-as-GET, empty payload).
    pub fn sign(&self, protected: &Value, payload: Option<&Value>) -> Result<Value, KeyError> {
        let protected = b64(protected.to_string());
        let payload = payload.map(|p| b64(p.to_string())).unwrap_or_default();
        let signing_input = format!("{protected}.{payload}");
        let signature = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| KeyError("signing failed"))?;
        Ok(json!({
            "protected": protected,
            "payload": payload,
            "signature": b64(signature.as_ref()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    #[test]
    fn signatures_verify_with_the_jwk() {
        let (key, pkcs8) = AccountKey::generate().unwrap();
        let again = AccountKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(key.thumbprint, again.thumbprint);
        assert_eq!(key.thumbprint.len(), 43);

        let jws = key
            .sign(&json!({"alg": "ES256", "url": "u"}), Some(&json!({"a": 1})))
            .unwrap();
        let input = format!(
            "{}.{}",
            jws["protected"].as_str().unwrap(),
            jws["payload"].as_str().unwrap()
        );
        let sig = URL_SAFE_NO_PAD
            .decode(jws["signature"].as_str().unwrap())
            .unwrap();
        assert_eq!(sig.len(), 64);
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(&key.x).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(&key.y).unwrap());
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(input.as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn post_as_get_has_an_empty_payload() {
        let (key, _) = AccountKey::generate().unwrap();
        let jws = key.sign(&json!({}), None).unwrap();
        assert_eq!(jws["payload"], "");
        assert!(key.key_authorization("tok").starts_with("tok."));
    }
}
