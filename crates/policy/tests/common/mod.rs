//! Test harness: a JWKS served over HTTPS (self-signed certificate passed as `ca_roots`),
//! token signers (RSA keys from `tests/keys`, ECDSA and Ed25519 generated), a real
//! `redis-server` on a free port, and small builders for request heads and policies.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kakuremichi_policy::{Answer, Decision, Outcome, PolicyEnv, PolicyEnvOptions};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_TEST";
pub const CLIENT_ID: &str = "3n4b5urk1ft4fl3mg5e62d9ado";

/// A fresh folder under the test target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "policy-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------- signers

/// Signs compact JWS tokens for one key and describes its public half as a JWK.
pub enum Signer {
    Rsa {
        kid: String,
        key: RsaKeyPair,
    },
    Ec256 {
        kid: String,
        key: EcdsaKeyPair,
    },
    Ed {
        kid: String,
        key: Ed25519KeyPair,
    },
    Hmac {
        kid: Option<String>,
        secret: Vec<u8>,
    },
}

impl Signer {
    pub fn rsa(file: &str, kid: &str) -> Signer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(file);
        let der = std::fs::read(&path).expect("test RSA key");
        Signer::Rsa {
            kid: kid.into(),
            key: RsaKeyPair::from_pkcs8(&der).expect("PKCS#8 RSA key"),
        }
    }

    pub fn es256(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        Signer::Ec256 {
            kid: kid.into(),
            key: EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap(),
        }
    }

    pub fn ed25519(kid: &str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Signer::Ed {
            kid: kid.into(),
            key: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    pub fn hmac(secret: &[u8]) -> Signer {
        Signer::Hmac {
            kid: None,
            secret: secret.to_vec(),
        }
    }

    pub fn kid(&self) -> Option<&str> {
        match self {
            Signer::Rsa { kid, .. } | Signer::Ec256 { kid, .. } | Signer::Ed { kid, .. } => {
                Some(kid)
            }
            Signer::Hmac { kid, .. } => kid.as_deref(),
        }
    }

    pub fn default_alg(&self) -> &'static str {
        match self {
            Signer::Rsa { .. } => "RS256",
            Signer::Ec256 { .. } => "ES256",
            Signer::Ed { .. } => "EdDSA",
            Signer::Hmac { .. } => "HS256",
        }
    }

    /// The public key as a JWK (what an IdP publishes).
    pub fn jwk(&self) -> Value {
        match self {
            Signer::Rsa { kid, key } => {
                let c: signature::RsaPublicKeyComponents<Vec<u8>> = key.public().into();
                json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                       "n": b64(&c.n), "e": b64(&c.e)})
            }
            Signer::Ec256 { kid, key } => {
                let p = key.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "use": "sig",
                       "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
            Signer::Ed { kid, key } => {
                json!({"kty": "OKP", "kid": kid, "crv": "Ed25519",
                       "x": b64(key.public_key().as_ref())})
            }
            Signer::Hmac { .. } => panic!("no JWK for a shared secret"),
        }
    }

    /// Same key, published without `alg` (so PS256 may use it).
    pub fn jwk_without_alg(&self) -> Value {
        let mut jwk = self.jwk();
        jwk.as_object_mut().unwrap().remove("alg");
        jwk
    }

    /// Signs `claims` with the signer's default algorithm and kid.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = json!({"alg": self.default_alg(), "typ": "JWT"});
        if let Some(kid) = self.kid() {
            header["kid"] = json!(kid);
        }
        self.sign_with_header(&header, claims)
    }

    /// Signs with an explicit header (`alg` decides the algorithm used).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let alg = header["alg"].as_str().unwrap_or("");
        let rng = SystemRandom::new();
        let sig = match self {
            Signer::Rsa { key, .. } => {
                let enc: &'static dyn signature::RsaEncoding = match alg {
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(enc, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
            Signer::Ec256 { key, .. } => {
                key.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec()
            }
            Signer::Ed { key, .. } => key.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Hmac { secret, .. } => hmac_sign(secret, input.as_bytes()),
        };
        format!("{input}.{}", b64(&sig))
    }
}

pub fn hmac_sign(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::sign(&key, input).as_ref().to_vec()
}

/// Claims shaped like a Cognito ID token.
pub fn cognito_id_claims(groups: &[&str]) -> Value {
    let t = now();
    json!({
        "sub": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "cognito:groups": groups,
        "email_verified": true,
        "iss": ISSUER,
        "cognito:username": "alice",
        "origin_jti": "1b7c-origin",
        "aud": CLIENT_ID,
        "event_id": "e-1",
        "token_use": "id",
        "auth_time": t - 10,
        "exp": t + 3600,
        "iat": t - 10,
        "jti": "id-jti",
        "email": "alice@example.com"
    })
}

/// Claims shaped like a Cognito access token: no `aud`, `client_id` instead.
pub fn cognito_access_claims(groups: &[&str], scope: &str) -> Value {
    let t = now();
    json!({
        "sub": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "cognito:groups": groups,
        "iss": ISSUER,
        "client_id": CLIENT_ID,
        "origin_jti": "1b7c-origin",
        "event_id": "e-1",
        "token_use": "access",
        "scope": scope,
        "auth_time": t - 10,
        "exp": t + 3600,
        "iat": t - 10,
        "jti": "access-jti",
        "username": "alice"
    })
}

// ---------------------------------------------------------------- JWKS over HTTPS

struct JwksState {
    body: Mutex<String>,
    cache_control: Mutex<Option<String>>,
    fetches: AtomicUsize,
}

/// An HTTPS server publishing a JWKS at `/jwks.json`, with a self-signed certificate
/// whose PEM is at `ca_path`.
pub struct JwksServer {
    pub uri: String,
    pub ca_path: PathBuf,
    state: Arc<JwksState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub async fn start(dir: &Path, keys: Vec<Value>) -> JwksServer {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let ca_path = dir.join("jwks-ca.pem");
        std::fs::write(&ca_path, ck.cert.pem()).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key.into())
        .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(JwksState {
            body: Mutex::new(json!({ "keys": keys }).to_string()),
            cache_control: Mutex::new(None),
            fetches: AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            let mut res = Response::builder();
                            if req.uri().path() != "/jwks.json" {
                                res = res.status(StatusCode::NOT_FOUND);
                                return res.body(Full::new(Bytes::new()));
                            }
                            st.fetches.fetch_add(1, Ordering::SeqCst);
                            if let Some(cc) = st.cache_control.lock().unwrap().clone() {
                                res = res.header("cache-control", cc);
                            }
                            let body = st.body.lock().unwrap().clone();
                            res.header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        JwksServer {
            uri: format!("https://127.0.0.1:{}/jwks.json", addr.port()),
            ca_path,
            state,
            task,
        }
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.body.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    pub fn set_cache_control(&self, value: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = value.map(str::to_string);
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------- redis-server

/// A `redis-server` started for one test on a free port; killed on drop.
pub struct RedisServer {
    pub url: String,
    child: Child,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    /// `None` (with a loud message) only when no redis-server binary is installed.
    pub async fn start() -> Option<RedisServer> {
        for _ in 0..5 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            };
            match Self::start_on(port).await {
                Ok(server) => return server,
                Err(()) => continue, // port taken meanwhile: try another
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts on a given port; `Ok(None)` when redis-server is missing, `Err` when it
    /// exited or did not answer.
    pub async fn start_on(port: u16) -> Result<Option<RedisServer>, ()> {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(binary) = binary else {
            eprintln!(
                "\n!!!!!!!! SKIPPED: redis-server is not installed (apt-get install redis-server); \
                 the shared-store rate-limit test did not run !!!!!!!!\n"
            );
            return Ok(None);
        };
        let child = Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut server = RedisServer {
            url: format!("redis://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = server.child.try_wait() {
                return Err(());
            }
            if ping(port).await {
                return Ok(Some(server));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(())
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }
}

async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
}

/// A port on which nothing listens.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------- requests

pub const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

/// A request head: `method`, `uri`, and headers as `(name, value)` pairs.
pub fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn env_with(ca: Option<&Path>, options: PolicyEnvOptions) -> Arc<PolicyEnv> {
    PolicyEnv::with_options(ca, options).unwrap()
}

#[track_caller]
pub fn expect_continue(d: Decision) -> Outcome {
    match d {
        Decision::Continue(o) => o,
        Decision::Respond(a) => panic!(
            "expected Continue, got {} {}: {}",
            a.status, a.code, a.message
        ),
    }
}

#[track_caller]
pub fn expect_respond(d: Decision, status: u16) -> Answer {
    match d {
        Decision::Respond(a) => {
            assert_eq!(a.status.as_u16(), status, "{}: {}", a.code, a.message);
            a
        }
        Decision::Continue(_) => panic!("expected {status}, got Continue"),
    }
}

pub fn header<'a>(map: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    map.get(name).and_then(|v| v.to_str().ok())
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
