//! Harness for the managed-mode tests: the control plane, managed gateways and managed
//! agents, each a real `kakuremichi` process on 127.0.0.1.
//!
//! - [`Control`] writes a `control.toml` (SQLite in its folder, or a PostgreSQL URL), starts
//!   `kakuremichi control --config FILE` and waits for `GET /healthz`. The folder outlives
//!   the process, so a control plane can be killed and started again on the same port and
//!   database.
//! - [`Api`] speaks JSON to the REST API with the admin token (one request per connection,
//!   through the shared harness's hyper client).
//! - [`ManagedGateway`] starts `kakuremichi gateway` (through the shared harness) with a
//!   tunnel listener, a `state_dir` that outlives the process and only `[control] url +
//!   token`; [`ManagedGateway::restart`] brings it back on the same tunnel port and state.
//! - [`Proc`] is any other child (managed agent, demo) with its output kept, killed on drop.
//! - [`Postgres`] is a throwaway cluster from Debian's package, started the way the control
//!   crate's tests start theirs.
//! - [`serial`]: these tests measure "within a second"; they run one at a time.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::common::{self, BIN, DEADLINE, Gateway, Resp, eventually, free_port, temp_dir};

/// How long a pushed change may take to serve at a gateway (the promise).
pub const PUSH_LIMIT: Duration = Duration::from_secs(1);

/// Holds the other tests off while one runs.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A folder removed on drop (state that outlives the processes using it).
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        Scratch(temp_dir(tag))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// Lines a child process writes, kept for the test.
pub use crate::common::Lines as Log;
pub use crate::common::free_tunnel_port;

/// A running `kakuremichi` child (not a gateway: those use the shared harness).
pub struct Proc {
    child: Child,
    pub stdout: Log,
    pub stderr: Log,
    exited: Option<ExitStatus>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    pub fn spawn<S: AsRef<OsStr>>(args: &[S]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kakuremichi");
        let stdout = Log::capture(child.stdout.take().expect("stdout"));
        let stderr = Log::capture(child.stderr.take().expect("stderr"));
        Proc {
            child,
            stdout,
            stderr,
            exited: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"INT"`, `"TERM"`, `"KILL"`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit within {within:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, and reap.
    pub async fn kill(&mut self) {
        self.signal("KILL");
        self.wait_exit(DEADLINE).await;
    }

    /// Everything the process wrote, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

// ---------------------------------------------------------------------------------------
// The control plane

/// A `kakuremichi control` process; its folder (control.toml, admin.token, the SQLite
/// file) belongs to the test.
pub struct Control {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub database: String,
    /// The admin token, from `admin_token_file`.
    pub admin: String,
}

impl Control {
    /// SQLite in `dir` on a free port.
    pub async fn sqlite(dir: &Path) -> Control {
        Control::start(dir, "sqlite://control.db").await
    }

    /// `database` on a free port (retried with another port if it was taken meanwhile).
    pub async fn start(dir: &Path, database: &str) -> Control {
        let mut last = String::new();
        for _ in 0..3 {
            match Control::try_start(dir, database, free_port()).await {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!("control did not start: {last}");
    }

    /// Starts again on the same port and database (after [`Control::kill`]).
    pub async fn restart(dir: &Path, database: &str, addr: SocketAddr) -> Control {
        // The old socket may linger a moment; retry on the same port.
        let deadline = Instant::now() + DEADLINE;
        loop {
            match Control::try_start(dir, database, addr.port()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline && e.contains("listen") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("control did not restart: {e}"),
            }
        }
    }

    async fn try_start(dir: &Path, database: &str, port: u16) -> Result<Control, String> {
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!(
                "[control]\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{database}\"\nadmin_token_file = \"admin.token\"\n"
            ),
        )
        .expect("write control.toml");
        let mut proc = Proc::spawn(&[
            OsStr::new("control"),
            OsStr::new("--config"),
            config.as_os_str(),
        ]);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if proc.exit_status().is_some() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!("control exited\n{}", proc.output()));
            }
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                common::try_request(addr, "GET", "control", "/healthz", &[], Bytes::new()),
            )
            .await
                && r.status == 200
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("/healthz was not 200\n{}", proc.output()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let admin = std::fs::read_to_string(dir.join("admin.token"))
            .expect("admin.token exists once control serves")
            .trim()
            .to_string();
        Ok(Control {
            proc,
            addr,
            dir: dir.to_path_buf(),
            database: database.to_string(),
            admin,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn api(&self) -> Api {
        Api {
            addr: self.addr,
            token: self.admin.clone(),
        }
    }

    /// SIGKILL: no goodbye to the connected gateways and agents.
    pub async fn kill(mut self) -> (PathBuf, String, SocketAddr) {
        self.proc.kill().await;
        (self.dir.clone(), self.database.clone(), self.addr)
    }
}

/// The REST API with the admin token.
#[derive(Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub token: String,
}

impl Api {
    pub fn with_token(&self, token: &str) -> Api {
        Api {
            addr: self.addr,
            token: token.to_string(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Resp {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![("authorization", auth.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let host = self.addr.to_string();
        common::request(self.addr, method, &host, path, &headers, body).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call("POST", path, Some(&body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call("PUT", path, Some(&body)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.call("DELETE", path, None).await
    }

    /// Asserts the status of a call and returns its JSON body (`null` when empty).
    pub fn expect(r: Resp, status: u16, what: &str) -> Value {
        assert_eq!(r.status, status, "{what}: {}", r.text());
        if r.body.is_empty() {
            Value::Null
        } else {
            r.json()
        }
    }

    /// Creates an agent; returns (id, token).
    pub async fn agent(&self, name: &str) -> (String, String) {
        let v = Api::expect(
            self.post("/api/v1/agents", serde_json::json!({"name": name}))
                .await,
            201,
            "POST /api/v1/agents",
        );
        (str_of(&v["id"]), str_of(&v["token"]))
    }

    /// Creates a gateway; returns (id, token).
    pub async fn gateway(&self, name: &str, address: &str) -> (String, String) {
        let v = Api::expect(
            self.post(
                "/api/v1/gateways",
                serde_json::json!({"name": name, "address": address}),
            )
            .await,
            201,
            "POST /api/v1/gateways",
        );
        (str_of(&v["id"]), str_of(&v["token"]))
    }

    /// Creates a route; returns its id.
    pub async fn route(&self, body: Value) -> String {
        let v = Api::expect(
            self.post("/api/v1/routes", body).await,
            201,
            "POST /api/v1/routes",
        );
        str_of(&v["id"])
    }

    /// The global version control is at.
    pub async fn version(&self) -> u64 {
        let v = Api::expect(self.get("/api/v1/info").await, 200, "GET /api/v1/info");
        v["config_version"].as_u64().expect("config_version")
    }

    /// Waits until the entry with `id` in the list at `path` satisfies `pred`.
    pub async fn wait_entry(
        &self,
        path: &str,
        id: &str,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, DEADLINE, || async {
            let list = self.get(path).await;
            if list.status != 200 {
                return None;
            }
            list.json()
                .as_array()?
                .iter()
                .find(|e| e["id"] == id)
                .filter(|e| pred(e))
                .cloned()
        })
        .await
    }
}

pub fn str_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Managed gateways and agents

/// A gateway whose file has only listeners, `state_dir` and `[control] url + token`.
pub struct ManagedGateway {
    pub gw: Gateway,
    pub tunnel_port: u16,
    pub state_dir: PathBuf,
    pub control_url: String,
    pub token: String,
}

impl ManagedGateway {
    /// Starts a managed gateway on `tunnel_port` with its state in `state_dir`.
    pub async fn start(control_url: &str, token: &str, state_dir: &Path, tunnel_port: u16) -> Self {
        let settings = format!(
            "tunnel = \"127.0.0.1:{tunnel_port}\"\nstate_dir = \"{}\"",
            state_dir.display()
        );
        let rest = format!("[control]\nurl = \"{control_url}\"\ntoken = \"{token}\"\n");
        let gw = common::gateway(&settings, &rest).start().await;
        ManagedGateway {
            gw,
            tunnel_port,
            state_dir: state_dir.to_path_buf(),
            control_url: control_url.to_string(),
            token: token.to_string(),
        }
    }

    /// `127.0.0.1:PORT` of the tunnel listener: the address registered in control.
    pub fn tunnel_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tunnel_port)
    }

    pub fn http(&self) -> SocketAddr {
        self.gw.http
    }

    /// The pin the gateway wrote to `<state_dir>/tunnel.pin`.
    pub fn pin(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("tunnel.pin"))
            .expect("the gateway writes <state_dir>/tunnel.pin")
            .trim()
            .to_string()
    }

    /// The snapshot saved in `state_dir`, once there is one.
    pub fn saved_snapshot(&self) -> Option<Value> {
        let text = std::fs::read(self.state_dir.join("control-snapshot.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// SIGTERM, wait; then starts again on the same tunnel port and state, with `token`.
    pub async fn restart_with(mut self, token: &str) -> ManagedGateway {
        self.gw.signal("TERM");
        let status = self.gw.wait_exit(DEADLINE).await;
        assert!(status.success(), "the gateway stops cleanly: {status}");
        let (url, state_dir, port) = (
            self.control_url.clone(),
            self.state_dir.clone(),
            self.tunnel_port,
        );
        drop(self);
        ManagedGateway::start(&url, token, &state_dir, port).await
    }

    pub async fn restart(self) -> ManagedGateway {
        let token = self.token.clone();
        self.restart_with(&token).await
    }

    /// The gateway's JSON log lines whose message contains `needle`.
    pub fn messages_with(&self, needle: &str) -> Vec<Value> {
        self.gw
            .logs
            .json()
            .into_iter()
            .filter(|v| v["message"].as_str().is_some_and(|m| m.contains(needle)))
            .collect()
    }

    /// Waits for a gateway log line whose message contains `needle`.
    pub async fn wait_message(&self, needle: &str) -> Value {
        self.gw
            .logs
            .wait_json(&format!("a gateway log line containing {needle:?}"), |v| {
                v["message"].as_str().is_some_and(|m| m.contains(needle))
            })
            .await
    }

    /// Gateway output, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "gateway stdout:\n{}\ngateway stderr:\n{}",
            self.gw.logs.text(),
            self.gw.stderr.text()
        )
    }
}

/// `kakuremichi agent --config agent.toml` where the file holds only `[control] url +
/// token`: the name and gateways come from control.
pub fn managed_agent(dir: &Path, control_url: &str, token: &str) -> Proc {
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        format!("[control]\nurl = \"{control_url}\"\ntoken = \"{token}\"\n"),
    )
    .expect("write agent.toml");
    Proc::spawn(&[
        OsStr::new("agent"),
        OsStr::new("--config"),
        file.as_os_str(),
    ])
}

// ---------------------------------------------------------------------------------------
// Requests through a gateway

/// One GET on a fresh connection; `None` on transport errors or after 2 s.
pub async fn status_of(addr: SocketAddr, host: &str, path: &str) -> Option<u16> {
    match tokio::time::timeout(
        Duration::from_secs(2),
        common::try_request(addr, "GET", host, path, &[], Bytes::new()),
    )
    .await
    {
        Ok(Ok(r)) => Some(r.status),
        _ => None,
    }
}

/// Polls `GET path` every 5 ms until it answers `want`; returns the time since `since`.
/// Panics after `within`, with the last answer.
pub async fn wait_for_status(
    addr: SocketAddr,
    path: &str,
    want: u16,
    since: Instant,
    within: Duration,
) -> Duration {
    let deadline = since + within;
    let mut last = None;
    loop {
        last = status_of(addr, "app.test", path).await.or(last);
        if last == Some(want) {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} at {addr} did not answer {want} within {within:?} (last: {last:?})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
