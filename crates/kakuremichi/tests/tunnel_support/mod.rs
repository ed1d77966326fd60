//! Harness for the tunnel tests: gateways with a tunnel listener and agents, both as real
//! `kakuremichi` processes, on 127.0.0.1.
//!
//! - [`TunnelGateway`] starts `kakuremichi gateway` (through the shared harness) with
//!   `tunnel = "127.0.0.1:PORT"`, `[[agents]]` and a `state_dir` that outlives the process,
//!   so a gateway can be restarted on the same port with the same key pair (and pin).
//! - [`AgentProc`] runs `kakuremichi agent` with quick-start flags or a config file, keeps
//!   its JSON log lines, and kills it on drop.
//! - [`sockets_of`] lists the TCP and UDP sockets a process owns (its `/proc/PID/fd` socket
//!   inodes matched against `/proc/PID/net/{tcp,tcp6,udp,udp6}`).
//! - [`PeerOrigin`] is an HTTP origin that counts requests per peer port, so a test can tell
//!   which agent process carried them; [`TcpRelay`] forwards TCP only (UDP to its port is
//!   swallowed by a socket that never reads: QUIC does not get through).
//! - Streaming clients for bodies too large to hold in memory, and a serial lock: these
//!   tests measure timings and memory, so they run one at a time.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::common::{self, BIN, DEADLINE, Gateway, GenBody, hex, pattern};

/// The agent name every test uses, and its token.
pub const AGENT: &str = "home";
pub const TOKEN: &str = "agt_e2e_5f0c1d2e3b4a69788796a5b4c3d2e1f0";

/// Holds the other tests off while one runs.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `[[agents]]` allowing `name` with `token` (by hash, as production files do).
pub fn agents_table(name: &str, token: &str) -> String {
    format!(
        "[[agents]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\n",
        sha256_hex(token.as_bytes())
    )
}

/// A route through the agents named [`AGENT`] for requests with `Host: host`.
pub fn via_route(name: &str, host: &str, upstream: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\nhosts = [\"{host}\"]\nupstream = \"{upstream}\"\nvia = \"{AGENT}\"\n"
    )
}

// ---------------------------------------------------------------------------------------
// Gateways

/// A gateway process with a tunnel listener.
pub struct TunnelGateway {
    pub gw: Gateway,
    pub tunnel_port: u16,
    pub state_dir: PathBuf,
    /// The pin the gateway wrote to `<state_dir>/tunnel.pin`.
    pub pin: String,
    rest: String,
}

impl TunnelGateway {
    /// Starts a gateway on a fresh tunnel port and state folder; `rest` holds `[[agents]]`
    /// and `[[routes]]`.
    pub async fn start(rest: &str) -> TunnelGateway {
        let state_dir = common::temp_dir("tunnel-state");
        TunnelGateway::start_on(&state_dir, free_tunnel_port(), rest).await
    }

    /// Starts a gateway on this tunnel port and state folder (a restart, when both are an
    /// earlier gateway's).
    pub async fn start_on(state_dir: &Path, tunnel_port: u16, rest: &str) -> TunnelGateway {
        let settings = format!(
            "tunnel = \"127.0.0.1:{tunnel_port}\"\nstate_dir = \"{}\"",
            state_dir.display()
        );
        let gw = common::gateway(&settings, rest).start().await;
        let pin = std::fs::read_to_string(state_dir.join("tunnel.pin"))
            .expect("the gateway writes <state_dir>/tunnel.pin")
            .trim()
            .to_string();
        TunnelGateway {
            gw,
            tunnel_port,
            state_dir: state_dir.to_path_buf(),
            pin,
            rest: rest.to_string(),
        }
    }

    /// `127.0.0.1:PORT` of the tunnel listener, for `--gateway`.
    pub fn tunnel_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tunnel_port)
    }

    pub fn http(&self) -> SocketAddr {
        self.gw.http
    }

    /// Waits until `/metrics` shows `n` agents named [`AGENT`] connected.
    pub async fn wait_agents(&self, n: usize) {
        let want = n as f64;
        self.gw
            .wait_metric(
                "kakuremichi_tunnel_agents_connected",
                &[("agent", AGENT)],
                |v| v == want,
            )
            .await;
    }

    /// The value of a tunnel series right now (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        common::metric(&self.gw.metrics().await, name, labels).unwrap_or(0.0)
    }

    /// Stops the process with SIGTERM and waits for it to exit; the state folder stays.
    pub async fn terminate(mut self) -> (PathBuf, u16, String) {
        self.gw.signal("TERM");
        self.gw.wait_exit(DEADLINE).await;
        (self.state_dir.clone(), self.tunnel_port, self.rest.clone())
    }

    /// Kills the process with SIGKILL; the state folder stays.
    pub async fn kill(mut self) -> (PathBuf, u16, String) {
        self.gw.signal("KILL");
        self.gw.wait_exit(DEADLINE).await;
        (self.state_dir.clone(), self.tunnel_port, self.rest.clone())
    }
}

// ---------------------------------------------------------------------------------------
// Agents

/// Lines a child process writes, kept for the test.
pub use crate::common::Lines as Log;
pub use crate::common::free_tunnel_port;

/// A running `kakuremichi agent`.
pub struct AgentProc {
    child: Child,
    pub logs: Log,
    pub stderr: Log,
    exited: bool,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Quick-start flags for an agent named [`AGENT`] with [`TOKEN`].
pub fn agent_flags(gateways: &[String], pin: &str) -> Vec<String> {
    let mut args = vec![
        "--name".to_string(),
        AGENT.to_string(),
        "--token".to_string(),
        TOKEN.to_string(),
        "--pin".to_string(),
        pin.to_string(),
    ];
    for g in gateways {
        args.push("--gateway".to_string());
        args.push(g.clone());
    }
    args
}

impl AgentProc {
    /// `kakuremichi agent ARGS`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> AgentProc {
        let mut child = Command::new(BIN)
            .arg("agent")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kakuremichi agent");
        let logs = Log::capture(child.stdout.take().expect("stdout"));
        let stderr = Log::capture(child.stderr.take().expect("stderr"));
        AgentProc {
            child,
            logs,
            stderr,
            exited: false,
        }
    }

    /// An agent of [`AGENT`] for one gateway, plus `extra` flags.
    pub fn quick(gateway: &TunnelGateway, extra: &[&str]) -> AgentProc {
        let mut args = agent_flags(&[gateway.tunnel_addr()], &gateway.pin);
        args.extend(extra.iter().map(|s| s.to_string()));
        AgentProc::spawn(&args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn peak_rss_kib(&self) -> u64 {
        common::vm_hwm_kib(self.pid())
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exited = true;
    }

    /// SIGTERM; waits for the exit and returns whether it was clean.
    pub async fn terminate(&mut self) -> bool {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exited = true;
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Everything the agent wrote, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "agent stdout:\n{}\nagent stderr:\n{}",
            self.logs.text(),
            self.stderr.text()
        )
    }
}

// ---------------------------------------------------------------------------------------
// Sockets of a process

/// One socket a process owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub table: &'static str,
    pub local_port: u16,
    pub remote_port: u16,
    /// The kernel's state number (TCP: 0x0A = LISTEN, 0x01 = ESTABLISHED; UDP: 0x07 =
    /// unconnected, 0x01 = connected).
    pub state: u8,
    pub inode: u64,
}

impl SocketInfo {
    /// What `ss -l` lists: a listening TCP socket or an unconnected UDP socket (which
    /// receives datagrams from anyone).
    pub fn is_listening(&self) -> bool {
        if self.table.starts_with("tcp") {
            self.state == 0x0A
        } else {
            self.state == 0x07
        }
    }
}

fn socket_inodes(pid: u32) -> HashSet<u64> {
    let mut out = HashSet::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for entry in entries.flatten() {
        if let Ok(target) = std::fs::read_link(entry.path())
            && let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        {
            out.insert(inode);
        }
    }
    out
}

fn hex_port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        .unwrap_or(0)
}

/// The TCP and UDP sockets (IPv4 and IPv6) process `pid` holds open.
pub fn sockets_of(pid: u32) -> Vec<SocketInfo> {
    let inodes = socket_inodes(pid);
    let mut out = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let Ok(inode) = f[9].parse::<u64>() else {
                continue;
            };
            if !inodes.contains(&inode) {
                continue;
            }
            out.push(SocketInfo {
                table,
                local_port: hex_port(f[1]),
                remote_port: hex_port(f[2]),
                state: u8::from_str_radix(f[3], 16).unwrap_or(0),
                inode,
            });
        }
    }
    out
}

/// Local ports of the TCP connections `pid` holds to `remote_port`.
pub fn ports_towards(pid: u32, remote_port: u16) -> HashSet<u16> {
    sockets_of(pid)
        .into_iter()
        .filter(|s| s.table.starts_with("tcp") && s.remote_port == remote_port)
        .map(|s| s.local_port)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Origins and relays

/// An HTTP origin answering `hello, tunnel` (13 bytes) that counts requests per peer port.
pub struct PeerOrigin {
    pub addr: SocketAddr,
    pub per_port: Arc<Mutex<HashMap<u16, usize>>>,
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for PeerOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PeerOrigin {
    pub async fn start() -> PeerOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let per_port: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let (pp, rq) = (per_port.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let (pp, rq) = (pp.clone(), rq.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        *pp.lock().unwrap().entry(peer.port()).or_default() += 1;
                        rq.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, Infallible>(common::respond(200, "hello, tunnel")) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        PeerOrigin {
            addr,
            per_port,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that came from any of `ports`.
    pub fn requests_from(&self, ports: &HashSet<u16>) -> usize {
        self.per_port
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| ports.contains(p))
            .map(|(_, n)| *n)
            .sum()
    }
}

/// Forwards TCP connections on its port to `target`; UDP datagrams to the same port number
/// land in a socket that never reads them, so they vanish without an ICMP error.
pub struct TcpRelay {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    _black_hole: std::net::UdpSocket,
    task: JoinHandle<()>,
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpRelay {
    pub async fn start(target: SocketAddr) -> TcpRelay {
        let (black_hole, listener) = loop {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
            let port = udp.local_addr().unwrap().port();
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, l);
            }
        };
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        TcpRelay {
            port,
            connections,
            _black_hole: black_hole,
            task,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Streaming clients

async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<common::OBody> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// POSTs `total` bytes of [`pattern`] data (with Content-Length) and returns the status,
/// the response body and the SHA-256 of what was sent.
pub async fn upload(addr: SocketAddr, host: &str, path: &str, total: u64) -> (u16, Value, String) {
    let digest = Arc::new(Mutex::new(None));
    let body = GenBody::new(pattern(total, 64 << 10, digest.clone()), Some(total)).boxed();
    let mut sender = connect(addr).await;
    let req = Request::post(path).header("host", host).body(body).unwrap();
    let resp = sender.send_request(req).await.expect("upload response");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let sent = digest
        .lock()
        .unwrap()
        .clone()
        .expect("the whole body was sent");
    (status, json, sent)
}

/// GETs `path`, hashing the body as it streams in: status, length, SHA-256.
pub async fn download(addr: SocketAddr, host: &str, path: &str) -> (u16, u64, String) {
    let mut sender = connect(addr).await;
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
        .unwrap();
    let resp = sender.send_request(req).await.expect("download response");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Some(d) = frame.data_ref() {
            n += d.len() as u64;
            hasher.update(d);
        }
    }
    (status, n, hex(&hasher.finalize()))
}

/// A keep-alive client that survives failures: a failed request is counted and the next one
/// goes on a new connection.
pub struct LoadClient {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<common::OBody>>,
}

impl LoadClient {
    pub fn new(addr: SocketAddr) -> LoadClient {
        LoadClient { addr, sender: None }
    }

    /// One GET; `Ok(status)` once the whole body arrived, `Err` on a transport failure.
    pub async fn get(&mut self, host: &str, path: &str) -> Result<(u16, Bytes), String> {
        let result = tokio::time::timeout(Duration::from_secs(30), self.try_get(host, path))
            .await
            .unwrap_or_else(|_| Err("no response within 30 s".to_string()));
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_get(&mut self, host: &str, path: &str) -> Result<(u16, Bytes), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("sender");
        sender.ready().await.map_err(|e| format!("ready: {e}"))?;
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// Polls `GET host/path` until it answers `want`; returns how long that took.
pub async fn wait_status(
    addr: SocketAddr,
    host: &str,
    path: &str,
    want: u16,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let mut client = LoadClient::new(addr);
        if let Ok(Ok((status, _))) =
            tokio::time::timeout(Duration::from_secs(5), client.get(host, path)).await
            && status == want
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "GET {host}{path} did not answer {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
