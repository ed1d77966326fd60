//! Test harness: the real Pebble ACME server and pebble-challtestsrv (its DNS), started by
//! kakuremichi-testkit, with the listeners a gateway would run (an http listener answering
//! HTTP-01, a TLS listener using the store), a TLS client that verifies against Pebble's
//! root, and the testkit's stand-in for Cloudflare's DNS API. Every wait is bounded;
//! children are killed on drop.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    kakuremichi_testkit::ports::free_tcp_udp_port()
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

#[derive(Default, Clone)]
pub struct PebbleOptions {
    /// certificateValidityPeriod in seconds.
    pub validity: Option<u64>,
}

/// Pebble and its DNS server (kakuremichi-testkit), with the listeners Pebble validates
/// against.
pub struct Pebble {
    inner: kakuremichi_testkit::pebble::Pebble,
    pub http_listener: Option<TcpListener>,
    pub tls_listener: Option<TcpListener>,
}

impl std::ops::Deref for Pebble {
    type Target = kakuremichi_testkit::pebble::Pebble;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl Pebble {
    pub async fn start(options: PebbleOptions) -> Pebble {
        let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inner = kakuremichi_testkit::pebble::Pebble::start(
            http_listener.local_addr().unwrap().port(),
            tls_listener.local_addr().unwrap().port(),
            options.validity,
        )
        .await;
        Pebble {
            inner,
            http_listener: Some(http_listener),
            tls_listener: Some(tls_listener),
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
        trusted
            .add(CertificateDer::from(self.ca_der.clone()))
            .unwrap();
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

#[allow(unused_imports)] // used by some of the test binaries that include this module
pub use kakuremichi_testkit::cloudflare::CloudflareStandIn;
