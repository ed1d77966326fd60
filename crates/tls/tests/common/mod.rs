//! Test harness: the real Pebble ACME server and pebble-challtestsrv (its DNS) started on
//! free loopback ports with their own config, plus the listeners a gateway would run (an
//! http listener answering HTTP-01, a TLS listener using the store), a TLS client that
//! verifies against Pebble's root, and a stand-in for Cloudflare's DNS API that feeds TXT
//! records to challtestsrv. Every wait is bounded; children are killed on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kakuremichi_tls::{AcmeManager, AcmeSettings, CertStore, Challenge};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kakuremichi_tls=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!(
            "kakuremichi-tls-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
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

/// A port free on 127.0.0.1 for both TCP and UDP (DNS listens on both).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

/// Retries `check` until it returns `Some` or `limit` passes.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default, Clone)]
pub struct PebbleOptions {
    /// certificateValidityPeriod in seconds.
    pub validity: Option<u64>,
}

/// Pebble and its DNS server.
pub struct Pebble {
    _pebble: Kill,
    _challtest: Kill,
    pub dir: TempDir,
    pub directory: String,
    pub mgmt: SocketAddr,
    pub challtest_mgmt: SocketAddr,
    /// The CA of Pebble's own HTTPS certificate (AcmeSettings::ca_roots).
    pub ca_roots: PathBuf,
    /// The listeners Pebble validates against.
    pub http_listener: Option<TcpListener>,
    pub tls_listener: Option<TcpListener>,
    ca_der: CertificateDer<'static>,
}

pub fn pebble_binaries_present() {
    for bin in ["/usr/bin/pebble", "/usr/bin/pebble-challtestsrv"] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install the Debian package with `apt-get install -y pebble`"
        );
    }
}

impl Pebble {
    pub async fn start(options: PebbleOptions) -> Pebble {
        pebble_binaries_present();
        let dir = TempDir::new("pebble");

        // Pebble's HTTPS certificate, from a CA of our own.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kakuremichi test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let ca_roots = dir.path().join("ca.pem");
        std::fs::write(&ca_roots, ca.pem()).unwrap();
        std::fs::write(dir.path().join("pebble.crt"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("pebble.key"), leaf_key.serialize_pem()).unwrap();

        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (acme_port, mgmt_port, dns_port, ct_port) =
            (free_port(), free_port(), free_port(), free_port());
        let mut config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.path().join("pebble.crt"),
            "privateKey": dir.path().join("pebble.key"),
            "httpPort": http_listener.local_addr().unwrap().port(),
            "tlsPort": tls_listener.local_addr().unwrap().port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(validity) = options.validity {
            config["pebble"]["certificateValidityPeriod"] = validity.into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();

        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let challtest = Kill(
            Command::new("/usr/bin/pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{ct_port}")])
                .stdin(Stdio::null())
                .stdout(log("challtestsrv.log"))
                .stderr(log("challtestsrv.err"))
                .spawn()
                .expect("start pebble-challtestsrv"),
        );
        let pebble = Kill(
            Command::new("/usr/bin/pebble")
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdin(Stdio::null())
                .stdout(log("pebble.log"))
                .stderr(log("pebble.err"))
                .spawn()
                .expect("start pebble"),
        );
        let mgmt: SocketAddr = ([127, 0, 0, 1], mgmt_port).into();
        let challtest_mgmt: SocketAddr = ([127, 0, 0, 1], ct_port).into();
        for addr in [
            SocketAddr::from(([127, 0, 0, 1], acme_port)),
            mgmt,
            challtest_mgmt,
        ] {
            wait_for(Duration::from_secs(15), "pebble to listen", || async move {
                TcpStream::connect(addr).await.ok().map(|_| ())
            })
            .await;
        }
        Pebble {
            _pebble: pebble,
            _challtest: challtest,
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            mgmt,
            challtest_mgmt,
            ca_roots,
            http_listener: Some(http_listener),
            tls_listener: Some(tls_listener),
            ca_der: ca.der().clone(),
            dir,
        }
    }

    /// Settings pointing at this Pebble, with short retries.
    pub fn settings(&self, state_dir: &Path, challenge: Challenge) -> AcmeSettings {
        let mut s = AcmeSettings::new(self.directory.clone(), state_dir);
        s.email = Some("ops@example.test".into());
        s.ca_roots = Some(self.ca_roots.clone());
        s.challenge = challenge;
        s.retry_min = Duration::from_millis(200);
        s.retry_max = Duration::from_secs(1);
        s
    }

    /// Trust roots for certificates Pebble issues (its root changes at every start).
    pub async fn issuer_roots(&self) -> RootCertStore {
        let mut trusted = RootCertStore::empty();
        trusted.add(self.ca_der.clone()).unwrap();
        let tls = client_config(trusted, vec![]);
        let (status, body) = request(
            self.mgmt,
            Some((tls, "127.0.0.1")),
            Method::GET,
            "/roots/0",
            Bytes::new(),
        )
        .await
        .expect("fetch pebble root");
        assert_eq!(status, StatusCode::OK);
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&body) {
            roots.add(cert.unwrap()).unwrap();
        }
        assert!(!roots.is_empty(), "pebble returned no root");
        roots
    }

    pub async fn challtest(&self, path: &str, body: serde_json::Value) {
        let (status, _) = request(
            self.challtest_mgmt,
            None,
            Method::POST,
            path,
            Bytes::from(body.to_string()),
        )
        .await
        .expect("challtestsrv management");
        assert_eq!(status, StatusCode::OK, "challtestsrv {path}");
    }

    pub fn logs(&self) -> String {
        ["pebble.log", "pebble.err", "challtestsrv.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub fn client_config(roots: RootCertStore, alpn: Vec<Vec<u8>>) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// One HTTP/1.1 request (over TLS when `tls` is given) and its whole answer.
pub async fn request(
    addr: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, &str)>,
    method: Method,
    path: &str,
    body: Bytes,
) -> std::io::Result<(StatusCode, Bytes)> {
    let tcp = TcpStream::connect(addr).await?;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(body))
        .unwrap();
    let io_err = |e: hyper::Error| std::io::Error::other(e);
    let resp = match tls {
        Some((config, name)) => {
            let name = ServerName::try_from(name.to_string()).unwrap();
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(io_err)?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(io_err)?
        }
        None => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(io_err)?;
            tokio::spawn(conn);
            send.send_request(req).await.map_err(io_err)?
        }
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(io_err)?.to_bytes();
    Ok((status, body))
}

/// A TLS handshake with `sni` against `addr`, verified against `roots`; the peer's chain.
pub async fn handshake(
    addr: SocketAddr,
    sni: &str,
    roots: &RootCertStore,
) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let config = client_config(roots.clone(), vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(stream
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .to_vec())
}

/// The https listener a gateway would run: handshakes with the store's config, then holds
/// the connection until the client leaves (acme-tls/1 connections are closed at once).
pub fn serve_tls(listener: TcpListener, store: CertStore) -> JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(store.server_config());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(kakuremichi_tls::ACME_TLS_ALPN) {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                    return;
                }
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
                )
                .await;
            });
        }
    })
}

/// The http listener a gateway would run for HTTP-01; `failing` makes it answer 404.
pub struct Http01Server {
    pub manager: Arc<Mutex<AcmeManager>>,
    pub failing: Arc<AtomicBool>,
    pub hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Http01Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn serve_http01(listener: TcpListener, manager: AcmeManager) -> Http01Server {
    let failing = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU64::new(0));
    let manager = Arc::new(Mutex::new(manager));
    let (f, h, m) = (failing.clone(), hits.clone(), manager.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (manager, failing, hits) = (m.clone(), f.clone(), h.clone());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                hits.fetch_add(1, Ordering::Relaxed);
                let answer = req
                    .uri()
                    .path()
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|token| manager.lock().unwrap().http01_answer(token))
                    .filter(|_| !failing.load(Ordering::Relaxed));
                async move {
                    Ok::<_, Infallible>(match answer {
                        Some(body) => Response::new(Full::new(Bytes::from(body))),
                        None => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    })
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    Http01Server {
        manager,
        failing,
        hits,
        task,
    }
}

/// A running manager with its shutdown.
pub struct Running {
    pub manager: AcmeManager,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub fn start(manager: AcmeManager) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(manager.clone().run(shutdown.clone()));
        Self {
            manager,
            shutdown,
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("manager stops on shutdown")
                .expect("manager task");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The serial of the ACME certificate the store serves for `host`, once there is one.
pub fn acme_serial(store: &CertStore, host: &str) -> Option<String> {
    store
        .status()
        .into_iter()
        .find(|s| s.host == host)
        .and_then(|s| s.serial)
}

pub async fn wait_for_serial(store: &CertStore, host: &str, not: Option<&str>) -> String {
    wait_for(
        Duration::from_secs(60),
        &format!("a certificate for {host}"),
        || {
            let serial = acme_serial(store, host).filter(|s| Some(s.as_str()) != not);
            async move { serial }
        },
    )
    .await
}

/// A stand-in for Cloudflare's DNS API (the part the provider uses) that forwards TXT
/// records to challtestsrv, Pebble's DNS.
pub struct CloudflareStandIn {
    pub api_url: String,
    pub token: String,
    pub records: Arc<Mutex<Vec<(String, String, String)>>>,
    pub creates: Arc<AtomicU64>,
    pub deletes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for CloudflareStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct StandIn {
    token: String,
    zones: Vec<(String, String)>,
    records: Arc<Mutex<Vec<(String, String, String)>>>,
    next_id: Arc<AtomicU64>,
    creates: Arc<AtomicU64>,
    deletes: Arc<AtomicU64>,
    challtest: SocketAddr,
}

fn cf_json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn cf_ok(result: serde_json::Value) -> Response<Full<Bytes>> {
    cf_json(
        StatusCode::OK,
        serde_json::json!({ "success": true, "errors": [], "messages": [], "result": result }),
    )
}

fn cf_err(status: StatusCode, code: u32, message: &str) -> Response<Full<Bytes>> {
    cf_json(
        status,
        serde_json::json!({ "success": false, "errors": [{ "code": code, "message": message }], "result": null }),
    )
}

impl StandIn {
    async fn handle(self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if auth != format!("Bearer {}", self.token) {
            return cf_err(StatusCode::FORBIDDEN, 10000, "Authentication error");
        }
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let parts: Vec<&str> = path.trim_start_matches("/client/v4/").split('/').collect();
        match (method, parts.as_slice()) {
            (Method::GET, ["zones"]) => {
                let name = query.get("name").cloned().unwrap_or_default();
                let found: Vec<_> = self
                    .zones
                    .iter()
                    .filter(|(_, z)| *z == name)
                    .map(|(id, z)| serde_json::json!({ "id": id, "name": z }))
                    .collect();
                cf_ok(found.into())
            }
            (Method::POST, ["zones", _zone, "dns_records"]) => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let name = v["name"].as_str().unwrap().to_string();
                let content = v["content"].as_str().unwrap().to_string();
                assert_eq!(v["type"], "TXT");
                let id = format!("rec-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
                self.records
                    .lock()
                    .unwrap()
                    .push((id.clone(), name.clone(), content.clone()));
                self.push_txt(&name).await;
                self.creates.fetch_add(1, Ordering::Relaxed);
                cf_ok(
                    serde_json::json!({ "id": id, "type": "TXT", "name": name, "content": content }),
                )
            }
            (Method::GET, ["zones", _zone, "dns_records"]) => {
                let name = query.get("name").cloned().unwrap_or_default();
                let found: Vec<_> = self
                    .records
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(_, n, _)| *n == name)
                    .map(|(id, n, c)| serde_json::json!({ "id": id, "type": "TXT", "name": n, "content": format!("\"{c}\"") }))
                    .collect();
                cf_ok(found.into())
            }
            (Method::DELETE, ["zones", _zone, "dns_records", id]) => {
                let removed = {
                    let mut records = self.records.lock().unwrap();
                    let pos = records.iter().position(|(rid, _, _)| rid == id);
                    pos.map(|p| records.remove(p))
                };
                match removed {
                    Some((_, name, _)) => {
                        self.push_txt(&name).await;
                        self.deletes.fetch_add(1, Ordering::Relaxed);
                        cf_ok(serde_json::json!({ "id": id }))
                    }
                    None => cf_err(StatusCode::NOT_FOUND, 81044, "Record does not exist."),
                }
            }
            _ => cf_err(StatusCode::NOT_FOUND, 7003, "No route for that URI"),
        }
    }

    /// Makes challtestsrv answer exactly the records held for `name`.
    async fn push_txt(&self, name: &str) {
        let fqdn = format!("{name}.");
        let values: Vec<String> = self
            .records
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n, _)| n == name)
            .map(|(_, _, c)| c.clone())
            .collect();
        post_json(
            self.challtest,
            "/clear-txt",
            serde_json::json!({ "host": fqdn }),
        )
        .await;
        for value in values {
            post_json(
                self.challtest,
                "/set-txt",
                serde_json::json!({ "host": fqdn, "value": value }),
            )
            .await;
        }
    }
}

async fn post_json(addr: SocketAddr, path: &str, body: serde_json::Value) {
    let (status, _) = request(
        addr,
        None,
        Method::POST,
        path,
        Bytes::from(body.to_string()),
    )
    .await
    .expect("challtestsrv management");
    assert_eq!(status, StatusCode::OK);
}

impl CloudflareStandIn {
    pub async fn start(pebble: &Pebble, zones: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = StandIn {
            token: "cf-test-token".into(),
            zones: zones
                .iter()
                .enumerate()
                .map(|(i, z)| (format!("zone-{i}"), z.to_string()))
                .collect(),
            records: Arc::default(),
            next_id: Arc::default(),
            creates: Arc::default(),
            deletes: Arc::default(),
            challtest: pebble.challtest_mgmt,
        };
        let (records, creates, deletes) = (
            state.records.clone(),
            state.creates.clone(),
            state.deletes.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(req).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        Self {
            api_url: format!("http://{addr}/client/v4"),
            token: "cf-test-token".into(),
            records,
            creates,
            deletes,
            task,
        }
    }
}
