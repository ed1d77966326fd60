//! The gateway pin: `sha256:` + lowercase hex of SHA-256 over the DER SubjectPublicKeyInfo
//! of the gateway's tunnel certificate. Pinning the key rather than the certificate lets a
//! gateway re-issue its certificate without breaking its agents.

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

/// A SHA-256 pin of a SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpkiPin([u8; 32]);

/// Why a pin string or certificate could not be turned into a pin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("a pin looks like sha256:<64 hex digits>")]
    Format,
    #[error("cannot read the certificate: {0}")]
    Certificate(String),
}

impl SpkiPin {
    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> SpkiPin {
        SpkiPin(Sha256::digest(spki_der).into())
    }

    /// The pin of a certificate's public key.
    pub fn of_certificate(cert: &CertificateDer<'_>) -> Result<SpkiPin, PinError> {
        Ok(SpkiPin::of_spki(&spki_of(cert)?))
    }

    /// Compares in constant time.
    pub fn matches(&self, other: &SpkiPin) -> bool {
        crate::auth::constant_time_eq(&self.0, &other.0)
    }
}

/// The DER SubjectPublicKeyInfo (outer SEQUENCE included) of a certificate.
pub(crate) fn spki_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, PinError> {
    let parsed =
        webpki::EndEntityCert::try_from(cert).map_err(|e| PinError::Certificate(e.to_string()))?;
    Ok(parsed.subject_public_key_info().as_ref().to_vec())
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for SpkiPin {
    type Err = PinError;

    /// Accepts `sha256:` followed by 64 hex digits, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.trim().strip_prefix("sha256:").ok_or(PinError::Format)?;
        decode_hex32(hex).map(SpkiPin).ok_or(PinError::Format)
    }
}

/// Decodes exactly 64 hex digits.
pub(crate) fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let s = format!("sha256:{}", "ab".repeat(32));
        let pin: SpkiPin = s.parse().unwrap();
        assert_eq!(pin.to_string(), s);
        let upper: SpkiPin = format!("sha256:{}", "AB".repeat(32)).parse().unwrap();
        assert!(pin.matches(&upper));
        for bad in [
            "",
            "sha256:",
            "ab",
            "sha1:00",
            &format!("sha256:{}", "zz".repeat(32)),
        ] {
            assert_eq!(bad.parse::<SpkiPin>(), Err(PinError::Format), "{bad}");
        }
    }
}
