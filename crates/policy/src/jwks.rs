//! JSON Web Key Sets: parsing keys into verification keys, and a per-URL cache that
//! refreshes when its lifetime (`Cache-Control: max-age`, else a default) runs out and
//! when a token names an unknown `kid` — never more than once per refresh interval (30 s
//! by default), so tokens with made-up `kid`s cannot turn the gateway against the IdP.
//! While a refresh fails, the last good key set stays in use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::Uri;
use serde_json::Value;

use crate::env::Stats;
use crate::fetch::HttpFetcher;
use crate::jwt::JwtError;
use crate::jwt::alg::{Algorithm, KeyKind};

/// Most keys kept from one JWKS document.
const MAX_KEYS: usize = 64;

/// base64url that tolerates padding, which some JWKS publishers add.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A public key from a JWKS, with the constraints the JWK put on it.
#[derive(Debug)]
pub(crate) struct Jwk {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it has one: the key is then used for that algorithm only.
    pub alg: Option<Algorithm>,
    pub key: PublicKey,
}

#[derive(Debug)]
pub(crate) enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (0x04 || x || y) on P-256 or P-384.
    Ec {
        kind: KeyKind,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

impl Jwk {
    pub fn kind(&self) -> KeyKind {
        match &self.key {
            PublicKey::Rsa { .. } => KeyKind::Rsa,
            PublicKey::Ec { kind, .. } => *kind,
            PublicKey::Ed25519(_) => KeyKind::Ed25519,
        }
    }

    /// The key type fits the algorithm, and the JWK does not restrict it to another one.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind() == alg.key_kind() && self.alg.is_none_or(|a| a == alg)
    }

    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature as s;
        if !self.accepts(alg) {
            return false;
        }
        match (&self.key, alg) {
            (PublicKey::Rsa { n, e }, _) => match alg.rsa() {
                Some(params) => s::RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok(),
                None => false,
            },
            (PublicKey::Ec { point, .. }, Algorithm::Es256) => {
                s::UnparsedPublicKey::new(&s::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (PublicKey::Ec { point, .. }, Algorithm::Es384) => {
                s::UnparsedPublicKey::new(&s::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (PublicKey::Ed25519(x), Algorithm::EdDsa) => s::UnparsedPublicKey::new(&s::ED25519, x)
                .verify(message, signature)
                .is_ok(),
            _ => false,
        }
    }
}

/// Parses a JWKS document, keeping the signature keys kakuremichi can use and skipping the
/// rest (encryption keys, symmetric keys, unknown types and curves, RSA under 2048 bits).
pub(crate) fn parse_jwks(body: &[u8]) -> Result<Vec<Jwk>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let mut out = Vec::new();
    for key in keys {
        match parse_jwk(key) {
            Ok(jwk) => out.push(jwk),
            Err(why) => {
                let kid = key.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                tracing::debug!(target: "kakuremichi::policy", kid, "JWKS key skipped: {why}");
            }
        }
        if out.len() == MAX_KEYS {
            break;
        }
    }
    if out.is_empty() {
        return Err("no usable signature key".into());
    }
    Ok(out)
}

fn parse_jwk(key: &Value) -> Result<Jwk, &'static str> {
    let field = |name: &str| key.get(name).and_then(Value::as_str);
    let bytes = |name: &str| -> Result<Vec<u8>, &'static str> {
        let text = field(name).ok_or("a key parameter is missing")?;
        B64_LENIENT
            .decode(text)
            .map_err(|_| "a key parameter is not base64url")
    };
    if field("use").is_some_and(|u| u != "sig") {
        return Err("not a signature key (use)");
    }
    if let Some(ops) = key.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|o| o.as_str() == Some("verify"))
    {
        return Err("not a verification key (key_ops)");
    }
    let alg = match field("alg") {
        None => None,
        Some(name) => Some(Algorithm::parse(name).ok_or("unsupported alg")?),
    };
    let public = match field("kty") {
        Some("RSA") => {
            let n = strip_leading_zeros(bytes("n")?);
            let e = strip_leading_zeros(bytes("e")?);
            if n.len() < 256 || n.len() > 1024 {
                return Err("RSA modulus outside 2048..8192 bits");
            }
            PublicKey::Rsa { n, e }
        }
        Some("EC") => {
            let (kind, len) = match field("crv") {
                Some("P-256") => (KeyKind::EcP256, 32),
                Some("P-384") => (KeyKind::EcP384, 48),
                _ => return Err("unsupported curve"),
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length");
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            PublicKey::Ec { kind, point }
        }
        Some("OKP") => {
            if field("crv") != Some("Ed25519") {
                return Err("unsupported curve");
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("Ed25519 key has the wrong length");
            }
            PublicKey::Ed25519(x)
        }
        Some("oct") => return Err("symmetric keys are never taken from a JWKS"),
        _ => return Err("unsupported key type"),
    };
    let jwk = Jwk {
        kid: field("kid").map(str::to_string),
        alg,
        key: public,
    };
    if let Some(a) = alg
        && !jwk.accepts(a)
    {
        return Err("alg does not fit the key type");
    }
    Ok(jwk)
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// Which keys of the current set a token may be verified with.
pub(crate) enum Candidates {
    Found(Vec<Arc<Jwk>>),
    /// The `kid` is known but its key does not fit the token's algorithm.
    WrongType,
    NotFound,
}

struct KeySet {
    keys: Vec<Arc<Jwk>>,
    expires_at: Instant,
    generation: u64,
}

impl KeySet {
    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Candidates {
        let mut kid_seen = false;
        let mut found = Vec::new();
        for key in &self.keys {
            if let Some(kid) = kid {
                if key.kid.as_deref() != Some(kid) {
                    continue;
                }
                kid_seen = true;
            }
            if key.accepts(alg) {
                found.push(key.clone());
            }
        }
        if !found.is_empty() {
            Candidates::Found(found)
        } else if kid_seen {
            Candidates::WrongType
        } else {
            Candidates::NotFound
        }
    }
}

/// How often a JWKS may be fetched and how long a fetched set lives.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JwksTiming {
    pub min_interval: Duration,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

/// The cached key set of one `jwks_uri`, shared by every route (and every reload) that
/// names it.
pub(crate) struct JwksCache {
    uri: Uri,
    fetcher: Arc<HttpFetcher>,
    timing: JwksTiming,
    stats: Arc<Stats>,
    current: RwLock<Option<Arc<KeySet>>>,
    /// Held while fetching; holds the time of the last fetch attempt.
    fetch: tokio::sync::Mutex<Option<Instant>>,
    background: AtomicBool,
}

impl JwksCache {
    pub fn new(uri: Uri, fetcher: Arc<HttpFetcher>, timing: JwksTiming, stats: Arc<Stats>) -> Self {
        JwksCache {
            uri,
            fetcher,
            timing,
            stats,
            current: RwLock::new(None),
            fetch: tokio::sync::Mutex::new(None),
            background: AtomicBool::new(false),
        }
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Fetches the set now unless one is already present (used to warm the cache).
    pub async fn warm(&self) {
        if self.snapshot().is_none() {
            self.refresh(None).await;
        }
    }

    /// The generation of the current key set (a new one after every successful fetch), or
    /// `None` before the first. Like [`JwksCache::candidates`], starts a background refresh
    /// when the set is past its lifetime, so that callers that skip `candidates` (tokens
    /// found in a verified-token cache) still let retired keys expire.
    pub fn generation(self: &Arc<Self>) -> Option<u64> {
        let set = self.snapshot()?;
        if Instant::now() >= set.expires_at {
            self.refresh_in_background();
        }
        Some(set.generation)
    }

    /// The keys a token with this `kid` and algorithm may be checked against, with the
    /// generation of the set they come from. Refreshes the set in the background when it is
    /// past its lifetime, and in the foreground when the `kid` is unknown (subject to the
    /// refresh interval).
    pub async fn candidates(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(Vec<Arc<Jwk>>, u64), JwtError> {
        let snapshot = self.snapshot();
        let seen = snapshot.as_ref().map(|s| s.generation);
        if let Some(set) = &snapshot {
            if Instant::now() >= set.expires_at {
                self.refresh_in_background();
            }
            match set.candidates(kid, alg) {
                Candidates::Found(keys) => return Ok((keys, set.generation)),
                Candidates::WrongType => return Err(JwtError::KeyMismatch),
                Candidates::NotFound => {}
            }
        }
        self.refresh(seen).await;
        match self.snapshot() {
            None => Err(JwtError::KeysUnavailable),
            Some(set) => match set.candidates(kid, alg) {
                Candidates::Found(keys) => Ok((keys, set.generation)),
                Candidates::WrongType => Err(JwtError::KeyMismatch),
                Candidates::NotFound => Err(JwtError::UnknownKey),
            },
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let seen = self.snapshot().map(|s| s.generation);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.refresh(seen).await;
            this.background.store(false, Ordering::Release);
        });
    }

    /// Fetches a new set unless another task already replaced generation `seen`, or the
    /// last attempt is more recent than the refresh interval.
    async fn refresh(&self, seen: Option<u64>) {
        let mut last_attempt = self.fetch.lock().await;
        let current = self.snapshot();
        if current.as_ref().map(|s| s.generation) != seen {
            return;
        }
        if last_attempt.is_some_and(|t| t.elapsed() < self.timing.min_interval) {
            return;
        }
        *last_attempt = Some(Instant::now());
        self.stats.jwks_fetches.fetch_add(1, Ordering::Relaxed);
        let result = match self.fetcher.get(&self.uri).await {
            Ok(fetched) => parse_jwks(&fetched.body).map(|keys| (keys, fetched.max_age)),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok((keys, max_age)) => {
                let ttl = max_age
                    .unwrap_or(self.timing.default_ttl)
                    .clamp(self.timing.min_interval, self.timing.max_ttl);
                let generation = seen.map_or(1, |g| g + 1);
                tracing::info!(
                    target: "kakuremichi::policy",
                    jwks_uri = %self.uri,
                    keys = keys.len(),
                    ttl_secs = ttl.as_secs(),
                    "JWKS fetched"
                );
                let set = KeySet {
                    keys: keys.into_iter().map(Arc::new).collect(),
                    expires_at: Instant::now() + ttl,
                    generation,
                };
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(set));
            }
            Err(why) => {
                self.stats.jwks_fetch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    target: "kakuremichi::policy",
                    jwks_uri = %self.uri,
                    kept_previous = current.is_some(),
                    "JWKS fetch failed: {why}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    fn b64(b: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(b)
    }

    #[test]
    fn parses_supported_keys_and_skips_others() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r", "alg": "RS256", "use": "sig", "n": b64(&[0xC5; 256]), "e": "AQAB"},
            {"kty": "RSA", "kid": "small", "n": b64(&[0xC5; 128]), "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": b64(&[0xC5; 256]), "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
            {"kty": "EC", "kid": "bad-len", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[2; 32])},
            {"kty": "OKP", "kid": "o", "crv": "Ed25519", "x": b64(&[3; 32])},
            {"kty": "oct", "kid": "s", "k": b64(b"secret")},
            {"kty": "RSA", "kid": "wrong-alg", "alg": "ES256", "n": b64(&[0xC5; 256]), "e": "AQAB"},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["r", "e", "o"]);
        assert!(keys[0].accepts(Algorithm::Rs256));
        assert!(
            !keys[0].accepts(Algorithm::Ps256),
            "the JWK's alg restricts it"
        );
        assert!(!keys[0].accepts(Algorithm::Hs256));
        assert!(keys[1].accepts(Algorithm::Es256));
        assert!(!keys[1].accepts(Algorithm::Es384));
        assert!(keys[2].accepts(Algorithm::EdDsa));
    }

    #[test]
    fn rejects_documents_without_usable_keys() {
        assert!(parse_jwks(b"not json").is_err());
        assert!(parse_jwks(b"{}").is_err());
        assert!(parse_jwks(br#"{"keys": []}"#).is_err());
    }
}
