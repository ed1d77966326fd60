//! Harness for the HTTPS and ACME end-to-end tests: the real `kakuremichi gateway` with
//! an http, an https and an admin listener on ports this module picks (so that Pebble can be
//! told them before the gateway starts, and a restart can reuse them), certificates made
//! with rcgen, TLS and HTTP/2 clients, and the real Pebble ACME server with
//! pebble-challtestsrv as its DNS. Every wait polls until a deadline; children are killed
//! on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use kakuremichi_tls::AcceptAnyCertificate;

use crate::common::{BIN, metric};

/// How long one wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);
/// How long waiting for an ACME certificate may take.
pub const ACME_WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Temporary folders and ports

/// A temporary folder removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(crate::common::temp_dir(tag))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port free on 127.0.0.1 for both TCP and UDP (challtestsrv's DNS uses both).
pub fn free_port() -> u16 {
    kakuremichi_testkit::ports::free_tcp_udp_port()
}

/// The three listeners of a test gateway.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub https: u16,
    pub admin: u16,
}

impl Ports {
    pub fn pick() -> Ports {
        Ports {
            http: free_port(),
            https: free_port(),
            admin: free_port(),
        }
    }
}

/// A gateway file with the three listeners, `settings` appended to `[gateway]`, then `rest`.
pub fn gateway_toml(ports: Ports, settings: &str, rest: &str) -> String {
    format!(
        "[gateway]\nhttp = \"127.0.0.1:{}\"\nhttps = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\nstate_dir = \"state\"\n{settings}\n\n{rest}\n",
        ports.http, ports.https, ports.admin
    )
}

// ---------------------------------------------------------------------------------------
// Log capture

#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn capture(stream: impl std::io::Read + Send + 'static, into: Lines) {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                into.0.lock().unwrap().push(line);
            }
        });
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    pub fn json(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// How many lines so far (to look only at lines written after a point).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// JSON lines written after the `from`-th line.
    pub fn json_since(&self, from: usize) -> Vec<Value> {
        self.0.lock().unwrap()[from..]
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Waits for a JSON line after the `from`-th one that satisfies `pred`.
    pub async fn wait_since(
        &self,
        from: usize,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = self.json_since(from).into_iter().find(|v| pred(v)) {
                return found;
            }
            if Instant::now() > deadline {
                let lines = self.0.lock().unwrap()[from..].join("\n");
                panic!("timed out after {WAIT:?} waiting for {what}; the lines since:\n{lines}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether a log line says a reload was applied.
pub fn reload_applied(v: &Value) -> bool {
    let m = message(v);
    m.contains("configuration applied") || m.contains("configuration reloaded")
}

/// Whether a log line says a reload was refused (the old configuration stays).
pub fn reload_refused(v: &Value) -> bool {
    message(v).contains("previous configuration stays in force")
}

/// A log line's message text.
pub fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// The gateway process

/// `kakuremichi gateway --config DIR/gateway.toml`, killed on drop.
pub struct TlsGateway {
    child: Option<Child>,
    pub ports: Ports,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// stdout and stderr of every run of the process, in order.
    pub logs: Lines,
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        self.kill();
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl TlsGateway {
    /// Writes `text` to `dir/gateway.toml` and starts the gateway; waits for `/readyz`.
    pub async fn start(dir: &Path, ports: Ports, text: &str) -> TlsGateway {
        match Self::try_start(dir, ports, text).await {
            Ok(gw) => gw,
            Err(e) => panic!("the gateway did not start: {e}"),
        }
    }

    /// Like [`start`](Self::start), with fresh ports (and `text` made from them) when the
    /// picked ones were taken in the meantime.
    pub async fn start_with(dir: &Path, text: impl Fn(Ports) -> String) -> TlsGateway {
        let mut last = String::new();
        for _ in 0..3 {
            let ports = Ports::pick();
            match Self::try_start(dir, ports, &text(ports)).await {
                Ok(gw) => return gw,
                Err(e) if e.contains("cannot listen") => last = e,
                Err(e) => panic!("the gateway did not start: {e}"),
            }
        }
        panic!("the gateway did not start: {last}");
    }

    /// Starts the gateway; `Err` with its output if it exits or is not ready in time.
    pub async fn try_start(dir: &Path, ports: Ports, text: &str) -> Result<TlsGateway, String> {
        let config = dir.join("gateway.toml");
        std::fs::write(&config, text).expect("write gateway.toml");
        let mut gw = TlsGateway {
            child: None,
            ports,
            http: addr(ports.http),
            https: addr(ports.https),
            admin: addr(ports.admin),
            dir: dir.to_path_buf(),
            config,
            logs: Lines::default(),
        };
        gw.spawn().await?;
        Ok(gw)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new(BIN)
            .arg("gateway")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kakuremichi gateway");
        Lines::capture(child.stdout.take().unwrap(), self.logs.clone());
        Lines::capture(child.stderr.take().unwrap(), self.logs.clone());
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.exited() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!("exited with {status}:\n{}", self.logs.text()));
            }
            if let Ok(Ok((200, _))) = tokio::time::timeout(
                Duration::from_secs(2),
                http1_get(self.admin, None, "admin", "/readyz"),
            )
            .await
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "/readyz not 200 within {WAIT:?}:\n{}",
                    self.logs.text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process and starts it again on the same file, folder and ports.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn().await {
            panic!("the gateway did not start again: {e}");
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn assert_alive(&mut self) {
        if let Some(status) = self.exited() {
            panic!("the gateway exited ({status}):\n{}", self.logs.text());
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Rewrites gateway.toml and sends SIGHUP; waits for the outcome's log line.
    pub async fn reload(&self, text: &str) -> Value {
        std::fs::write(&self.config, text).expect("rewrite gateway.toml");
        self.hup().await
    }

    /// Sends SIGHUP and waits for "configuration reloaded" or "reload refused".
    pub async fn hup(&self) -> Value {
        let from = self.logs.len();
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        self.logs
            .wait_since(from, "the outcome of the reload", |v| {
                reload_applied(v) || reload_refused(v)
            })
            .await
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = http1_get(self.admin, None, "admin", "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(status, 200);
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// The value of a series on `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.metrics().await, name, labels)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

// ---------------------------------------------------------------------------------------
// Certificates

/// A test CA that signs leaf certificates.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A leaf certificate and its key, PEM, plus the DER to compare with what a server sends.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kakuremichi https test CA");
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }

    /// A leaf for `names` with this serial, valid from yesterday for 30 days.
    pub fn leaf(&self, names: &[&str], serial: u64) -> Leaf {
        let now = std::time::SystemTime::now();
        let day = Duration::from_secs(86_400);
        self.leaf_valid(names, serial, now - day, now + 30 * day)
    }

    pub fn leaf_valid(
        &self,
        names: &[&str],
        serial: u64,
        not_before: std::time::SystemTime,
        not_after: std::time::SystemTime,
    ) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("x"),
        );
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

impl Leaf {
    /// Writes `NAME.pem` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) {
        write_atomic(&dir.join(format!("{name}.pem")), self.cert_pem.as_bytes());
        write_atomic(&dir.join(format!("{name}.key")), self.key_pem.as_bytes());
    }
}

/// Writes through a temporary file and a rename, as a careful operator (or certbot) does.
pub fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------
// TLS clients

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a client trusts.
#[derive(Clone)]
pub enum Trust {
    /// Verify against these roots.
    Roots(RootCertStore),
    /// Take whatever certificate the server sends.
    Any,
}

/// A client config: `versions` (empty: 1.2 and 1.3) and ALPN protocols.
pub fn client_config(
    trust: &Trust,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider());
    let builder = if versions.is_empty() {
        builder.with_safe_default_protocol_versions()
    } else {
        builder.with_protocol_versions(versions)
    }
    .unwrap();
    let mut config = match trust {
        Trust::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        Trust::Any => builder
            .dangerous()
            .with_custom_certificate_verifier(AcceptAnyCertificate::ring())
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` with `sni` (`None`: no SNI is sent).
pub async fn tls_connect(
    addr: SocketAddr,
    sni: Option<&str>,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = match sni {
        Some(sni) => ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?,
        // rustls sends no SNI for an IP address.
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The DER of the leaf a TLS connection's server sent.
pub fn peer_leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

/// The leaf served for `sni`, accepting any certificate.
pub async fn served_leaf(addr: SocketAddr, sni: Option<&str>) -> std::io::Result<Vec<u8>> {
    let config = client_config(&Trust::Any, &[], &[b"http/1.1"]);
    tls_connect(addr, sni, config).await.map(|t| peer_leaf(&t))
}

// ---------------------------------------------------------------------------------------
// HTTP clients

pub type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub fn empty() -> ReqBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

/// One GET over a fresh HTTP/1.1 connection (TLS when `tls` is given); status and body.
pub async fn http1_get(
    addr: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, &str)>,
    host: &str,
    path: &str,
) -> Result<(u16, Bytes), String> {
    let req = Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap();
    let resp = http1_send(addr, tls, req).await?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// One request over a fresh HTTP/1.1 connection.
pub async fn http1_send(
    addr: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, &str)>,
    req: Request<ReqBody>,
) -> Result<Response<Incoming>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut sender = match tls {
        Some((config, sni)) => {
            let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            h1_over(tls).await?
        }
        None => h1_over(tcp).await?,
    };
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// An HTTP/1.1 client connection over `io`.
pub async fn h1_over<S>(io: S) -> Result<hyper::client::conn::http1::SendRequest<ReqBody>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// An HTTP/2 client connection over TLS with ALPN `h2` (asserted).
pub async fn h2_connect(
    addr: SocketAddr,
    sni: &str,
    trust: &Trust,
) -> hyper::client::conn::http2::SendRequest<ReqBody> {
    let config = client_config(trust, &[], &[b"h2", b"http/1.1"]);
    let tls = tls_connect(addr, Some(sni), config)
        .await
        .unwrap_or_else(|e| panic!("TLS to {addr} ({sni}): {e}"));
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the gateway chose h2 by ALPN"
    );
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends `req` on an HTTP/2 connection and reads the whole answer.
pub async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<ReqBody>,
    req: Request<ReqBody>,
) -> (u16, http::HeaderMap, Bytes) {
    sender.ready().await.expect("connection ready");
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("a response in time")
        .expect("a response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    (parts.status.as_u16(), parts.headers, body)
}

/// A GET with `Host`-equivalent `:authority` for HTTP/2.
pub fn h2_get(authority: &str, path: &str) -> Request<ReqBody> {
    Request::get(format!("https://{authority}{path}"))
        .body(empty())
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Origins

/// An HTTP/1.1 origin answering `{"version": "HTTP/1.1", "path": ..., "host": ...}`.
pub async fn version_origin() -> crate::common::Origin {
    crate::common::Origin::serve(|req: Request<Incoming>| async move {
        let v = serde_json::json!({
            "version": format!("{:?}", req.version()),
            "path": req.uri().path(),
            "host": req.headers().get("host").and_then(|h| h.to_str().ok()),
            "proto": req.headers().get("x-forwarded-proto").and_then(|h| h.to_str().ok()),
        });
        crate::common::respond(200, v.to_string())
    })
    .await
}

pub fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

// ---------------------------------------------------------------------------------------
// Pebble

/// The real Pebble ACME server and pebble-challtestsrv (kakuremichi-testkit), validating
/// against the given http and https ports.
pub struct Pebble(kakuremichi_testkit::pebble::Pebble);

impl std::ops::Deref for Pebble {
    type Target = kakuremichi_testkit::pebble::Pebble;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Pebble {
    /// Starts Pebble; HTTP-01 is validated on `http_port`, TLS-ALPN-01 on `tls_port`.
    pub async fn start(http_port: u16, tls_port: u16) -> Pebble {
        Self::start_with_validity(http_port, tls_port, None).await
    }

    /// Like [`start`](Self::start), issuing certificates valid for `validity` seconds.
    pub async fn start_with_validity(
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
    ) -> Pebble {
        Pebble(kakuremichi_testkit::pebble::Pebble::start(http_port, tls_port, validity).await)
    }

    /// `[tls.acme]` for this Pebble.
    pub fn acme_section(&self, challenge: &str) -> String {
        format!(
            "[tls.acme]\nemail = \"ops@example.test\"\ndirectory = \"{}\"\nca_roots = \"{}\"\nchallenge = \"{challenge}\"\n",
            self.directory,
            self.ca_roots.display()
        )
    }

    /// Trust roots for the certificates Pebble issues: its `/roots/0` (new at every start).
    pub async fn issuer_roots(&self) -> RootCertStore {
        let mut trusted = RootCertStore::empty();
        trusted
            .add(CertificateDer::from(self.ca_der.clone()))
            .unwrap();
        let config = client_config(&Trust::Roots(trusted), &[], &[b"http/1.1"]);
        let (status, body) = http1_get(
            self.mgmt,
            Some((config, "127.0.0.1")),
            "127.0.0.1",
            "/roots/0",
        )
        .await
        .expect("fetch Pebble's root");
        assert_eq!(status, 200);
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&body) {
            roots.add(cert.unwrap()).unwrap();
        }
        assert!(!roots.is_empty(), "Pebble returned no root");
        roots
    }
}

/// Files under `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// A stand-in for Cloudflare's DNS API feeding TXT records to challtestsrv

#[allow(unused_imports)] // used by some of the test binaries that include this module
pub use kakuremichi_testkit::cloudflare::CloudflareStandIn;
