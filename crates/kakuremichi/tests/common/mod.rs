//! End-to-end harness: runs the real `kakuremichi` binary against in-process origin servers,
//! every socket on 127.0.0.1 with ports picked by the kernel.
//!
//! - [`GatewayBuilder`] writes a `gateway.toml` into a fresh temporary folder, starts
//!   `kakuremichi gateway --config FILE`, captures its JSON log lines and waits for
//!   `GET /readyz` on the admin listener. The process is killed when the [`Gateway`] drops.
//! - [`Origin`] is a hyper server with small constructors for the usual shapes (echo, fixed
//!   body, slow, SSE, large download, upload sink); [`WsOrigin`] echoes WebSocket messages.
//! - [`request`]/[`get`] send one request on a fresh connection; [`RawConn`] writes raw bytes
//!   (so the client does not normalize anything) and parses what comes back.
//!
//! Nothing sleeps for a fixed time to let things happen: waits poll until a deadline.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const BIN: &str = env!("CARGO_BIN_EXE_kakuremichi");
/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Files and ports

/// A fresh, empty folder under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "kakuremichi-e2e-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    kakuremichi_testkit::ports::free_port()
}

/// A port number free on both TCP and UDP of 127.0.0.1 a moment ago (the tunnel listens
/// on both).
pub fn free_tunnel_port() -> u16 {
    kakuremichi_testkit::ports::free_tcp_udp_port()
}

/// A port nothing listens on (bound then closed): connections to it are refused.
pub fn closed_port() -> u16 {
    free_port()
}

/// Runs `kakuremichi ARGS` to completion.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kakuremichi")
}

/// Peak resident set size of a process, in KiB (`VmHWM` in /proc/PID/status).
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Log capture

/// Lines a child process wrote, shared with the thread that reads them.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn capture(stream: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        lines
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.all().join("\n")
    }

    /// Every line that parses as a JSON object.
    pub fn json(&self) -> Vec<Value> {
        self.all()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(Value::is_object)
            .collect()
    }

    /// Access-log lines (target `kakuremichi::access`).
    pub fn access(&self) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["target"] == "kakuremichi::access")
            .collect()
    }

    /// JSON log lines whose `message` contains `needle`.
    pub fn messages_with(&self, needle: &str) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(needle)))
            .collect()
    }

    /// Waits for a JSON log line whose message contains `needle`.
    pub async fn wait_message(&self, needle: &str) -> Value {
        eventually(
            &format!("a log line containing {needle:?}"),
            DEADLINE,
            || {
                let found = self.messages_with(needle).into_iter().next();
                async move { found }
            },
        )
        .await
    }

    /// Waits for a plain line that contains `needle`.
    pub async fn wait_line(&self, needle: &str) -> String {
        eventually(&format!("a line containing {needle:?}"), DEADLINE, || {
            let found = self.all().into_iter().find(|l| l.contains(needle));
            async move { found }
        })
        .await
    }

    /// Waits for a JSON line that satisfies `pred`.
    pub async fn wait_json(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        eventually(what, DEADLINE, || {
            let found = self.json().into_iter().find(|v| pred(v));
            async move { found }
        })
        .await
    }

    /// Waits for the access-log line of the request with this id.
    pub async fn wait_access(&self, request_id: &str) -> Value {
        eventually(
            &format!("the access log line of request {request_id}"),
            DEADLINE,
            || {
                let found = self
                    .access()
                    .into_iter()
                    .find(|v| v["request_id"] == request_id);
                async move { found }
            },
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------
// The gateway process

/// Builds a gateway file around the listeners the harness picks.
pub struct GatewayBuilder {
    settings: String,
    rest: String,
    files: Vec<(String, Vec<u8>)>,
}

/// A gateway file: `settings` go into `[gateway]` after `http` and `admin`; `rest` follows
/// (routes and other tables).
pub fn gateway(settings: &str, rest: &str) -> GatewayBuilder {
    GatewayBuilder {
        settings: settings.to_string(),
        rest: rest.to_string(),
        files: Vec::new(),
    }
}

/// A gateway with no extra settings and these routes.
pub fn gateway_with_routes(rest: &str) -> GatewayBuilder {
    gateway("", rest)
}

fn config_text(http: u16, admin: u16, settings: &str, rest: &str) -> String {
    format!(
        "[gateway]\nhttp = \"127.0.0.1:{http}\"\nadmin = \"127.0.0.1:{admin}\"\n{settings}\n\n{rest}\n"
    )
}

impl GatewayBuilder {
    /// Writes another file next to gateway.toml (certificates, ...).
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_string(), contents.into()));
        self
    }

    pub async fn start(self) -> Gateway {
        let dir = temp_dir("gw");
        for (name, contents) in &self.files {
            std::fs::write(dir.join(name), contents).expect("write file");
        }
        let config = dir.join("gateway.toml");
        // The ports are free when picked; another process may take one before the gateway
        // binds it, so a failed start is retried with new ports.
        let mut last_err = String::new();
        for _ in 0..3 {
            let (http, admin) = (free_port(), free_port());
            std::fs::write(
                &config,
                config_text(http, admin, &self.settings, &self.rest),
            )
            .expect("write gateway.toml");
            let mut child = Command::new(BIN)
                .arg("gateway")
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn kakuremichi gateway");
            let stdout = Lines::capture(child.stdout.take().expect("stdout"));
            let stderr = Lines::capture(child.stderr.take().expect("stderr"));
            let mut gw = Gateway {
                child,
                http: SocketAddr::from(([127, 0, 0, 1], http)),
                admin: SocketAddr::from(([127, 0, 0, 1], admin)),
                http_port: http,
                admin_port: admin,
                dir: dir.clone(),
                config: config.clone(),
                logs: stdout,
                stderr,
            };
            match gw.wait_ready().await {
                Ok(()) => return gw,
                Err(e) => {
                    last_err = e;
                    if !last_err.contains("cannot listen") {
                        break;
                    }
                }
            }
        }
        panic!("the gateway did not become ready: {last_err}");
    }
}

pub struct Gateway {
    child: Child,
    /// The client (HTTP) listener.
    pub http: SocketAddr,
    pub admin: SocketAddr,
    http_port: u16,
    admin_port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// stdout: JSON log lines.
    pub logs: Lines,
    pub stderr: Lines,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Gateway {
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads catch the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!(
                    "the gateway exited with {status}; stderr:\n{}\nstdout:\n{}",
                    self.stderr.text(),
                    self.logs.text()
                ));
            }
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                try_request(self.admin, "GET", "admin", "/readyz", &[], Bytes::new()),
            )
            .await
                && r.status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "/readyz was not 200 within {DEADLINE:?}; stderr:\n{}",
                    self.stderr.text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak RSS of the gateway process in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        vm_hwm_kib(self.pid())
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Rewrites gateway.toml with the same listeners and `rest` (routes).
    pub fn rewrite(&self, settings: &str, rest: &str) {
        let text = config_text(self.http_port, self.admin_port, settings, rest);
        std::fs::write(&self.config, text).expect("rewrite gateway.toml");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// `GET /metrics` on the admin listener.
    pub async fn metrics(&self) -> String {
        let r = request(self.admin, "GET", "admin", "/metrics", &[], Bytes::new()).await;
        assert_eq!(r.status, 200, "GET /metrics");
        r.text()
    }

    /// Waits until `metric(series, labels)` satisfies `pred`.
    pub async fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        eventually(
            &format!("metric {name}{labels:?} to reach the expected value"),
            DEADLINE,
            || async {
                let text = self.metrics().await;
                metric(&text, name, labels).filter(|v| pred(*v))
            },
        )
        .await
    }
}

/// The value of the series `name` whose labels include every pair of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let (series_name, label_text) = match series.find('{') {
            Some(i) => (&series[..i], &series[i + 1..series.len() - 1]),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let have: Vec<(String, String)> = split_labels(label_text);
        let all = labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v));
        if all {
            return value.parse().ok();
        }
    }
    None
}

fn split_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 2..];
        let mut end = 0;
        let bytes = after.as_bytes();
        while end < bytes.len() && !(bytes[end] == b'"' && (end == 0 || bytes[end - 1] != b'\\')) {
            end += 1;
        }
        out.push((key, after[..end].to_string()));
        rest = after.get(end + 1..).unwrap_or("");
    }
    out
}

// ---------------------------------------------------------------------------------------
// Client helpers

/// A response read in full.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Sends one request on a fresh connection.
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Resp, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut builder = Request::builder().method(method).uri(path);
    if !host.is_empty() {
        builder = builder.header("host", host);
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// Sends one request on a fresh connection; panics on transport errors or after 30 s.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    match tokio::time::timeout(
        Duration::from_secs(30),
        try_request(addr, method, host, path, headers, body.into()),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("{method} {host}{path}: {e}"),
        Err(_) => panic!("{method} {host}{path}: no response within 30 s"),
    }
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    request(addr, "GET", host, path, &[], Bytes::new()).await
}

/// A client connection that keeps alive between requests.
pub struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        KeepAlive { sender }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Resp {
        self.send("GET", host, path).await
    }

    /// A request with no body (a POST then says `content-length: 0`).
    pub async fn send(&mut self, method: &str, host: &str, path: &str) -> Resp {
        self.sender.ready().await.expect("connection ready");
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.sender.send_request(req))
            .await
            .expect("response within 30 s")
            .expect("response");
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }
}

/// A raw client connection: bytes in, parsed responses out.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A response parsed from raw bytes.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes; `Ok(0)` at EOF.
    async fn fill(&mut self, deadline: Instant) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no bytes before the deadline",
            )),
        }
    }

    /// Reads one response (`head_only` for responses to HEAD). `None` if the connection
    /// closed (or was reset) before any byte of a response.
    pub async fn read_response(&mut self, timeout: Duration, head_only: bool) -> Option<RawResp> {
        let deadline = Instant::now() + timeout;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            match self.fill(deadline).await {
                Ok(0) | Err(_) if self.buf.is_empty() => return None,
                Ok(0) => panic!(
                    "connection closed in the middle of a response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    panic!(
                        "timed out reading a response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    )
                }
                Err(_) => return None,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut resp = RawResp {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
            return Some(resp);
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            while self.buf.len() < len {
                match self.fill(deadline).await {
                    Ok(0) | Err(_) => panic!("connection closed inside a body"),
                    Ok(_) => {}
                }
            }
            resp.body = self.buf.drain(..len).collect();
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    match self.fill(deadline).await {
                        Ok(0) | Err(_) => panic!("connection closed inside a chunked body"),
                        Ok(_) => {}
                    }
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    match self.fill(deadline).await {
                        Ok(0) | Err(_) => panic!("connection closed inside a chunk"),
                        Ok(_) => {}
                    }
                }
                resp.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        } else {
            // Delimited by the end of the connection.
            while let Ok(n) = self.fill(deadline).await {
                if n == 0 {
                    break;
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Some(resp)
    }

    /// Whether the peer closes (EOF or reset) within `timeout`, discarding what it sends.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline).await {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `bytes` on a fresh connection and reads one response.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> RawResp {
    let mut c = RawConn::connect(addr).await;
    c.send(bytes).await;
    c.read_response(Duration::from_secs(10), false)
        .await
        .expect("a response")
}

// ---------------------------------------------------------------------------------------
// Origins

pub type OBody = BoxBody<Bytes, std::io::Error>;

pub fn full(b: impl Into<Bytes>) -> OBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn respond(status: u16, body: impl Into<Bytes>) -> Response<OBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

/// A body made of `chunks` produced on the fly by a generator, optionally with pauses.
pub struct GenBody<G> {
    next: G,
    len: Option<u64>,
}

impl<G> GenBody<G>
where
    G: FnMut() -> Option<Bytes> + Send + Unpin + 'static,
{
    pub fn new(next: G, len: Option<u64>) -> Self {
        GenBody { next, len }
    }
}

impl<G> hyper::body::Body for GenBody<G>
where
    G: FnMut() -> Option<Bytes> + Send + Unpin + 'static,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        Poll::Ready((this.next)().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Deterministic data: `total` bytes in chunks of `chunk` bytes, hashed as they are produced;
/// the hex SHA-256 of everything is stored in `digest` after the last chunk.
pub fn pattern(
    total: u64,
    chunk: usize,
    digest: Arc<Mutex<Option<String>>>,
) -> impl FnMut() -> Option<Bytes> + Send + Unpin + 'static {
    let mut sent = 0u64;
    let mut hasher = Some(Sha256::new());
    let mut i = 0u64;
    move || {
        if sent >= total {
            return None;
        }
        let n = (total - sent).min(chunk as u64) as usize;
        let mut v = vec![(i % 251) as u8; n];
        let k = 8.min(n);
        v[..k].copy_from_slice(&i.to_le_bytes()[..k]);
        i += 1;
        sent += n as u64;
        if let Some(h) = hasher.as_mut() {
            h.update(&v);
        }
        if sent >= total
            && let Some(h) = hasher.take()
        {
            *digest.lock().unwrap() = Some(hex(&h.finalize()));
        }
        Some(Bytes::from(v))
    }
}

/// A response body fed through a channel: each `send` becomes one chunk on the wire.
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|next| next.map(|b| Ok(Frame::data(b))))
    }
}

/// A sender and the streaming body it feeds; the body ends when the sender is dropped.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, OBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (tx, ChannelBody(rx).boxed())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<OBody>> + Send>>
        + Send
        + Sync,
>;

/// An origin server on 127.0.0.1.
pub struct Origin {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Requests received so far.
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    /// Serves `handler` over plain HTTP/1.1 (with upgrades).
    pub async fn serve<F, Fut>(handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<OBody>> + Send + 'static,
    {
        Self::serve_with(None, handler).await
    }

    /// Serves `handler` over TLS.
    pub async fn serve_tls<F, Fut>(acceptor: tokio_rustls::TlsAcceptor, handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<OBody>> + Send + 'static,
    {
        Self::serve_with(Some(acceptor), handler).await
    }

    async fn serve_with<F, Fut>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Origin
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<OBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        let (c, r) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                let r = r.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let fut = handler(req);
                        async move { Ok::<_, Infallible>(fut.await) }
                    });
                    match tls {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Origin {
            addr,
            connections,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers with JSON describing the request: origin name, method, uri (as received),
    /// path, query, headers (name → list of values), body length.
    pub async fn echo(name: &str) -> Origin {
        let name = name.to_string();
        Origin::serve(move |req| {
            let name = name.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut headers = serde_json::Map::new();
                for (k, v) in &parts.headers {
                    let list = headers
                        .entry(k.as_str().to_string())
                        .or_insert_with(|| Value::Array(vec![]));
                    if let Value::Array(a) = list {
                        a.push(Value::String(String::from_utf8_lossy(v.as_bytes()).into()));
                    }
                }
                let v = json!({
                    "origin": name,
                    "method": parts.method.as_str(),
                    "uri": parts.uri.to_string(),
                    "path": parts.uri.path(),
                    "query": parts.uri.query(),
                    "headers": headers,
                    "body_len": body.len(),
                });
                let mut r = respond(200, v.to_string());
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                r
            }
        })
        .await
    }

    /// Answers every request with `body` (200).
    pub async fn fixed(body: &str) -> Origin {
        let body = Bytes::from(body.to_string());
        Origin::serve(move |_| {
            let body = body.clone();
            async move { respond(200, body) }
        })
        .await
    }

    /// Answers `body` after `delay` on every path that starts with `/slow`, at once otherwise.
    pub async fn slow(delay: Duration, body: &str) -> Origin {
        let body = Bytes::from(body.to_string());
        Origin::serve(move |req| {
            let body = body.clone();
            async move {
                if req.uri().path().starts_with("/slow") {
                    tokio::time::sleep(delay).await;
                }
                respond(200, body)
            }
        })
        .await
    }

    /// Streams `total` bytes of [`pattern`] data, chunked (no Content-Length); the hash of
    /// what was sent is stored in the returned handle once the body is done.
    pub async fn download(total: u64) -> (Origin, Arc<Mutex<Option<String>>>) {
        let digest = Arc::new(Mutex::new(None));
        let out = digest.clone();
        let origin = Origin::serve(move |_| {
            let generator = pattern(total, 64 << 10, out.clone());
            async move { Response::new(GenBody::new(generator, None).boxed()) }
        })
        .await;
        (origin, digest)
    }

    /// Reads the whole request body, hashing it, and answers `{"bytes": N, "sha256": HEX}`.
    pub async fn upload_sink() -> Origin {
        Origin::serve(|req| async move {
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len() as u64;
                            hasher.update(d);
                        }
                    }
                    Err(e) => return respond(500, format!("body error: {e}")),
                }
            }
            respond(
                200,
                json!({"bytes": n, "sha256": hex(&hasher.finalize())}).to_string(),
            )
        })
        .await
    }
}

/// A WebSocket echo server (plain TCP + tungstenite handshake). Text and binary messages come
/// back as they were sent; the close handshake is answered.
pub struct WsOrigin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for WsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsOrigin {
    pub async fn echo() -> WsOrigin {
        use futures_util::{SinkExt, StreamExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_text() || msg.is_binary() {
                            if ws.send(msg).await.is_err() {
                                return;
                            }
                        } else if msg.is_close() {
                            // tungstenite queues the close reply; flush it.
                            let _ = ws.flush().await;
                        }
                    }
                });
            }
        });
        WsOrigin {
            addr,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Opens a WebSocket through the gateway at `addr` for `path` with `Host: host`.
pub async fn ws_connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("host", http::HeaderValue::from_str(host).unwrap());
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(req, stream),
    )
    .await
    .expect("WebSocket handshake within 10 s")
    .expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}
