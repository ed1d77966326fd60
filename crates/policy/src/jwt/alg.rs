//! JWS algorithms the gateway verifies, the key type each one requires, and the ring
//! primitive behind it. `none` is not an algorithm here: it can neither be configured nor
//! accepted.

use std::fmt;

/// A JWS `alg` value that kakuremichi can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Algorithm {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

/// The kind of key an algorithm needs. A key of another kind is never tried, which is
/// what stops "HS256 signed with the RSA public key as the secret".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// A shared secret from `secret_file`; never taken from a JWKS.
    Secret,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::Hs256,
        Algorithm::Hs384,
        Algorithm::Hs512,
        Algorithm::Rs256,
        Algorithm::Rs384,
        Algorithm::Rs512,
        Algorithm::Ps256,
        Algorithm::Ps384,
        Algorithm::Ps512,
        Algorithm::Es256,
        Algorithm::Es384,
        Algorithm::EdDsa,
    ];

    /// Exact, case-sensitive match on the registered name (RFC 7518).
    pub fn parse(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Hs384 => "HS384",
            Algorithm::Hs512 => "HS512",
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Ps256 => "PS256",
            Algorithm::Ps384 => "PS384",
            Algorithm::Ps512 => "PS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
            Algorithm::EdDsa => "EdDSA",
        }
    }

    pub fn key_kind(self) -> KeyKind {
        match self {
            Algorithm::Hs256 | Algorithm::Hs384 | Algorithm::Hs512 => KeyKind::Secret,
            Algorithm::Rs256
            | Algorithm::Rs384
            | Algorithm::Rs512
            | Algorithm::Ps256
            | Algorithm::Ps384
            | Algorithm::Ps512 => KeyKind::Rsa,
            Algorithm::Es256 => KeyKind::EcP256,
            Algorithm::Es384 => KeyKind::EcP384,
            Algorithm::EdDsa => KeyKind::Ed25519,
        }
    }

    pub fn hmac(self) -> Option<ring::hmac::Algorithm> {
        match self {
            Algorithm::Hs256 => Some(ring::hmac::HMAC_SHA256),
            Algorithm::Hs384 => Some(ring::hmac::HMAC_SHA384),
            Algorithm::Hs512 => Some(ring::hmac::HMAC_SHA512),
            _ => None,
        }
    }

    pub fn rsa(self) -> Option<&'static ring::signature::RsaParameters> {
        use ring::signature as s;
        match self {
            Algorithm::Rs256 => Some(&s::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::Rs384 => Some(&s::RSA_PKCS1_2048_8192_SHA384),
            Algorithm::Rs512 => Some(&s::RSA_PKCS1_2048_8192_SHA512),
            Algorithm::Ps256 => Some(&s::RSA_PSS_2048_8192_SHA256),
            Algorithm::Ps384 => Some(&s::RSA_PSS_2048_8192_SHA384),
            Algorithm::Ps512 => Some(&s::RSA_PSS_2048_8192_SHA512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_none_is_unknown() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.name()), Some(a));
        }
        assert_eq!(Algorithm::parse("none"), None);
        assert_eq!(Algorithm::parse("rs256"), None);
        assert_eq!(Algorithm::parse("ES512"), None);
    }
}
