//! Test harness: temporary folders, a control plane on 127.0.0.1:0 over SQLite or a
//! PostgreSQL cluster started from Debian's package, an HTTP client for the API, and raw
//! push-socket clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kakuremichi_control::{ControlError, ControlSettings};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// A folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).expect("random");
        let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let p = std::env::temp_dir().join(format!("kakuremichi-{tag}-{name}"));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
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

/// Which database a test runs against.
pub enum Backend {
    Sqlite,
    Postgres(kakuremichi_testkit::postgres::Postgres),
}

impl Backend {
    /// A fresh, empty database URL.
    pub async fn fresh_database(&self, dir: &TempDir) -> String {
        match self {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("control.db").display()),
            Backend::Postgres(pg) => pg.fresh_database(),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// A running control plane.
pub struct Server {
    pub addr: SocketAddr,
    pub admin: String,
    pub database: String,
    pub token_file: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ControlError>>,
}

impl Server {
    pub async fn start(database: &str, dir: &TempDir) -> Server {
        Self::start_at(database, dir, "127.0.0.1:0".parse().expect("addr")).await
    }

    pub async fn start_at(database: &str, dir: &TempDir, listen: SocketAddr) -> Server {
        let token_file = dir.path().join("admin.token");
        let settings = ControlSettings {
            listen,
            database: database.to_string(),
            public_url: None,
            admin_token_file: token_file.clone(),
        };
        let control = kakuremichi_control::bind(settings)
            .await
            .expect("bind control");
        let addr = control.local_addr();
        let admin = std::fs::read_to_string(&token_file)
            .expect("admin token file")
            .trim()
            .to_string();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(control.run(shutdown.clone()));
        Server {
            addr,
            admin,
            database: database.to_string(),
            token_file,
            shutdown,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn api(&self) -> Api {
        Api::new(self.url(), Some(self.admin.clone()))
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("control stops in time")
            .expect("control task");
        r.expect("control ran without error");
    }
}

/// An API answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// Asserts the status, with the body in the message.
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }
}

/// A small client for the REST API.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(base: String, token: Option<String>) -> Self {
        Api {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base,
            token,
        }
    }

    pub fn with_token(&self, token: Option<&str>) -> Api {
        Api {
            client: self.client.clone(),
            base: self.base.clone(),
            token: token.map(str::to_string),
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Reply {
        let mut req = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request");
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("API answers in time")
            .expect("API request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None).await
    }
    pub async fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send("POST", path, Some(body.to_string().into_bytes()))
            .await
    }
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send("PUT", path, Some(body.to_string().into_bytes()))
            .await
    }

    /// Creates an agent; returns (id, token).
    pub async fn agent(&self, name: &str) -> (String, String) {
        let v = self
            .post("/api/v1/agents", serde_json::json!({"name": name}))
            .await
            .expect(201)
            .json();
        (str_of(&v["id"]), str_of(&v["token"]))
    }

    /// Creates a gateway; returns (id, token).
    pub async fn gateway(&self, name: &str, address: &str) -> (String, String) {
        let v = self
            .post(
                "/api/v1/gateways",
                serde_json::json!({"name": name, "address": address}),
            )
            .await
            .expect(201)
            .json();
        (str_of(&v["id"]), str_of(&v["token"]))
    }

    /// Creates a route; returns its id.
    pub async fn route(&self, body: Value) -> String {
        let v = self.post("/api/v1/routes", body).await.expect(201).json();
        str_of(&v["id"])
    }
}

pub fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_string()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens the push socket with a token; `query` like `?since=3&epoch=...`.
pub async fn push_connect(server: &Server, token: &str, query: &str) -> Result<Ws, u16> {
    let mut req = format!("ws://{}/api/v1/connect{query}", server.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("push connect failed: {e}"),
    }
}

/// The next JSON message that is not a heartbeat, within `within`.
pub async fn next_message(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON message");
                if v["type"] != "heartbeat" {
                    return Some(v);
                }
            }
            Ok(Message::Close(frame)) => {
                return Some(serde_json::json!({
                    "type": "close",
                    "code": frame.as_ref().map(|f| u16::from(f.code)),
                }));
            }
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Retries `check` until it returns `Some` or `within` passes.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
