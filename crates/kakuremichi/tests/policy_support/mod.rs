//! Harness for the route-policy end-to-end tests (`tests/policies.rs`): RS256 tokens minted
//! in the shapes of Cognito ID and access tokens (keys from `fixtures/policies`, signed
//! through rustls' ring signer), forged tokens for the attack cases, a JWKS served over
//! HTTPS with a certificate from a test CA (the gateway trusts it through `ca_roots`), and
//! a real `redis-server` on a free port. Children and servers stop on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::SignatureScheme;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::SigningKey;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::common::{Origin, Resp, respond};

pub const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_E2eTest1";
pub const CLIENT_ID: &str = "6r5a3k1uk2mich1e2etest0c1d";
pub const SUB: &str = "3f0c8a52-7b1e-4c8e-9d51-0a6c2b7e9f13";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policies")
}

// ---------------------------------------------------------------------------------------
// Encodings

const URL_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const STD_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

/// base64url without padding, as JWS uses it.
pub fn b64url(bytes: &[u8]) -> String {
    base64(bytes, URL_ALPHABET, false)
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// HMAC-SHA256 (RFC 2104), for the HS256 tokens of the attack cases.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().to_vec()
}

/// One DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, header) = if input[1] < 0x80 {
        (usize::from(input[1]), 2)
    } else {
        let n = usize::from(input[1] & 0x7f);
        let len = input[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, 2 + n)
    };
    (tag, &input[header..header + len], &input[header + len..])
}

fn unsigned_int(bytes: &[u8]) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes[zeros..].to_vec()
}

// ---------------------------------------------------------------------------------------
// Tokens

/// `base64url(header) . base64url(claims)`.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// An RSA-2048 key of the fixtures, as an IdP holds it.
pub struct RsaKey {
    pub kid: String,
    key: Arc<dyn SigningKey>,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaKey {
    /// `file` is one of `rsa-1.pk8.der`, `rsa-2.pk8.der`, `rsa-3.pk8.der`.
    pub fn load(file: &str, kid: &str) -> RsaKey {
        let der_bytes = std::fs::read(fixtures().join(file)).expect("fixture RSA key");
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der_bytes));
        let key = rustls::crypto::ring::sign::any_supported_type(&private).expect("RSA key");
        let spki = key.public_key().expect("public key").as_ref().to_vec();
        // SubjectPublicKeyInfo { algorithm, BIT STRING { RSAPublicKey { n, e } } }
        let (_, info, _) = der(&spki);
        let (_, _algorithm, rest) = der(info);
        let (tag, bits, _) = der(rest);
        assert_eq!(tag, 0x03, "BIT STRING");
        let (_, rsa, _) = der(&bits[1..]);
        let (_, n, rest) = der(rsa);
        let (_, e, _) = der(rest);
        RsaKey {
            kid: kid.to_string(),
            n: unsigned_int(n),
            e: unsigned_int(e),
            key,
            spki,
        }
    }

    /// The public key as an IdP publishes it in its JWKS.
    pub fn jwk(&self) -> Value {
        json!({"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig",
               "n": b64url(&self.n), "e": b64url(&self.e)})
    }

    /// The public key in PEM, what a careless verifier would use as an HMAC secret.
    pub fn public_pem(&self) -> String {
        let body = base64(&self.spki, STD_ALPHABET, true);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// The modulus, for the "HMAC keyed with the JWK" variant of the confusion attack.
    pub fn modulus(&self) -> &[u8] {
        &self.n
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `input`.
    pub fn rs256(&self, input: &[u8]) -> Vec<u8> {
        let signer = self
            .key
            .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
            .expect("RS256 signer");
        signer.sign(input).expect("sign")
    }

    /// A token with `{"alg":"RS256","typ":"JWT","kid":KID}`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// Signs with RS256 whatever `header` says.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let signature = self.rs256(input.as_bytes());
        format!("{input}.{}", b64url(&signature))
    }
}

/// A token signed with HMAC-SHA256 under `secret`, whatever `header` says.
pub fn hs256_token(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let mac = hmac_sha256(secret, input.as_bytes());
    format!("{input}.{}", b64url(&mac))
}

/// An unsecured JWS (`alg: none`): header, claims, empty signature.
pub fn unsigned_token(header: &Value, claims: &Value) -> String {
    format!("{}.", signing_input(header, claims))
}

/// Claims shaped like a Cognito ID token.
pub fn cognito_id_claims(groups: &[&str]) -> Value {
    let t = now();
    json!({
        "sub": SUB,
        "cognito:groups": groups,
        "email_verified": true,
        "iss": ISSUER,
        "cognito:username": "alice",
        "origin_jti": "5d6e7f80-origin",
        "aud": CLIENT_ID,
        "event_id": "0b1c2d3e-event",
        "token_use": "id",
        "auth_time": t - 10,
        "exp": t + 3600,
        "iat": t - 10,
        "jti": "9a8b7c6d-id",
        "email": "alice@example.com"
    })
}

/// Claims shaped like a Cognito access token: no `aud`, `client_id` and `scope` instead.
pub fn cognito_access_claims(groups: &[&str], scope: &str) -> Value {
    let t = now();
    json!({
        "sub": SUB,
        "cognito:groups": groups,
        "iss": ISSUER,
        "version": 2,
        "client_id": CLIENT_ID,
        "origin_jti": "5d6e7f80-origin",
        "event_id": "0b1c2d3e-event",
        "token_use": "access",
        "scope": scope,
        "auth_time": t - 10,
        "exp": t + 3600,
        "iat": t - 10,
        "jti": "1a2b3c4d-access",
        "username": "alice"
    })
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------------------
// A test CA and a JWKS over HTTPS

/// A CA made for one test; the gateway trusts it through `ca_roots`.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kakuremichi policy test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A TLS acceptor for a leaf certificate naming 127.0.0.1, issued by this CA.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let leaf = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let chain = vec![leaf.der().clone(), self.cert.der().clone()];
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// An IdP's JWKS endpoint over HTTPS; the key set can be replaced (rotation).
pub struct JwksServer {
    pub uri: String,
    keys: Arc<Mutex<String>>,
    fetches: Arc<Mutex<Vec<Instant>>>,
    _server: Origin,
}

impl JwksServer {
    pub async fn start(ca: &TestCa, keys: &[&RsaKey]) -> JwksServer {
        let body = Arc::new(Mutex::new(String::new()));
        let fetches = Arc::new(Mutex::new(Vec::new()));
        let (b, f) = (body.clone(), fetches.clone());
        let server = Origin::serve_tls(ca.acceptor(), move |req| {
            let (b, f) = (b.clone(), f.clone());
            async move {
                if req.uri().path() != "/.well-known/jwks.json" {
                    return respond(404, "");
                }
                f.lock().unwrap().push(Instant::now());
                let mut r = respond(200, b.lock().unwrap().clone());
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                r
            }
        })
        .await;
        let jwks = JwksServer {
            uri: format!(
                "https://127.0.0.1:{}/.well-known/jwks.json",
                server.addr.port()
            ),
            keys: body,
            fetches,
            _server: server,
        };
        jwks.publish(keys);
        jwks
    }

    /// Replaces the published key set.
    pub fn publish(&self, keys: &[&RsaKey]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
        *self.keys.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.lock().unwrap().len()
    }

    pub fn first_fetch(&self) -> Option<Instant> {
        self.fetches.lock().unwrap().first().copied()
    }
}

// ---------------------------------------------------------------------------------------
// redis-server

/// A `redis-server` (the Debian package) on a free port, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_binary() -> Option<&'static str> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

impl RedisServer {
    /// Starts one, or `None` (said loudly) when redis-server is not installed and the
    /// `KAKUREMICHI_REQUIRE_REDIS` variable is unset; with it set, a missing binary fails.
    pub async fn start() -> Option<RedisServer> {
        let Some(binary) = redis_binary() else {
            assert!(
                std::env::var_os("KAKUREMICHI_REQUIRE_REDIS").is_none(),
                "redis-server is not installed (apt-get install redis-server)"
            );
            eprintln!(
                "\n!!!!!!!! SKIPPED: redis-server is not installed (apt-get install \
                 redis-server); the shared-store test did not run !!!!!!!!\n"
            );
            return None;
        };
        for _ in 0..5 {
            let port = crate::common::free_port();
            let child = Command::new(binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut server = RedisServer { port, child };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                if redis_ping(port).await {
                    return Some(server);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"+PONG\r\n"
}

// ---------------------------------------------------------------------------------------
// Responses

/// The headers the echo origin saw: name → values.
pub fn upstream_headers(r: &Resp) -> serde_json::Map<String, Value> {
    r.json()["headers"].as_object().cloned().unwrap_or_default()
}

/// The single value of an upstream request header, or `None`; panics on several.
pub fn upstream_header(r: &Resp, name: &str) -> Option<String> {
    let headers = upstream_headers(r);
    let values = headers.get(name)?.as_array()?.clone();
    assert_eq!(values.len(), 1, "upstream got several {name}: {values:?}");
    values[0].as_str().map(str::to_string)
}

/// Every value of a response header, in order.
pub fn all_values(r: &Resp, name: &str) -> Vec<String> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// A numeric response header.
#[track_caller]
pub fn number(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} header in {:?}", r.headers))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number: {:?}", r.header(name)))
}
