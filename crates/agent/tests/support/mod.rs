//! Test harness: an in-process gateway tunnel listener and agents on 127.0.0.1 port 0, a TCP
//! echo upstream, and deadline-bounded waiting instead of fixed sleeps.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kakuremichi_agent::{
    AgentSettings, AgentStats, AgentToken, AllowList, GatewayVerification, TransportMode,
};
use kakuremichi_tunnel::{
    AgentAuth, AgentRegistry, Limits, ServerOptions, SpkiPin, TokenHash, TunnelIdentity,
    TunnelServer, TunnelStream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const NAME: &str = "home";
pub const TOKEN: &str = "agt_test_token";
pub const CLIENT: &str = "203.0.113.7:40000";

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "kakuremichi-agent-{tag}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A fresh self-signed tunnel identity.
pub fn identity() -> TunnelIdentity {
    let dir = temp_dir("identity");
    let id = TunnelIdentity::load_or_create(&dir).expect("identity");
    let _ = std::fs::remove_dir_all(&dir);
    id
}

pub fn auth() -> AgentAuth {
    AgentAuth::new().allow(NAME, TokenHash::of_token(TOKEN))
}

pub fn limits() -> Limits {
    Limits {
        handshake_timeout: Duration::from_secs(3),
        header_timeout: Duration::from_secs(2),
        open_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

/// A running tunnel listener.
pub struct Gateway {
    pub addr: SocketAddr,
    pub registry: AgentRegistry,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Gateway {
    pub async fn start(identity: &TunnelIdentity, addr: SocketAddr) -> Gateway {
        Gateway::start_with(
            identity,
            addr,
            ServerOptions {
                limits: limits(),
                ..ServerOptions::default()
            },
        )
        .await
    }

    pub async fn start_with(
        identity: &TunnelIdentity,
        addr: SocketAddr,
        options: ServerOptions,
    ) -> Gateway {
        Gateway::try_start_with(identity, addr, options)
            .await
            .expect("bind the tunnel")
    }

    pub async fn try_start_with(
        identity: &TunnelIdentity,
        addr: SocketAddr,
        options: ServerOptions,
    ) -> Result<Gateway, kakuremichi_tunnel::BindError> {
        let server = TunnelServer::bind_with(addr, identity, auth(), options).await?;
        let addr = server.local_addr();
        let registry = server.registry();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        Ok(Gateway {
            addr,
            registry,
            stop,
            task,
        })
    }

    /// Stops the listener and waits until it has let go of its ports.
    pub async fn stop(self) {
        self.stop.cancel();
        within(Duration::from_secs(5), self.task)
            .await
            .expect("the tunnel listener task");
    }

    pub async fn wait_connected(&self, n: usize) {
        let registry = self.registry.clone();
        wait_until(Duration::from_secs(10), move || {
            registry.connected(NAME) == n
        })
        .await;
    }
}

/// A running agent.
pub struct Agent {
    pub stats: AgentStats,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Agent {
    pub fn start(settings: AgentSettings) -> Agent {
        let agent = kakuremichi_agent::Agent::new(settings).expect("agent settings");
        let stats = agent.stats();
        let stop = CancellationToken::new();
        let run = agent.run(stop.clone());
        let task = tokio::spawn(async move {
            run.await.expect("agent run");
        });
        Agent { stats, stop, task }
    }

    /// Shuts the agent down cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        within(Duration::from_secs(5), self.task)
            .await
            .expect("the agent task");
    }

    /// Kills the agent's task outright (its connections are dropped, not closed politely).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

pub fn settings(gateway: SocketAddr, pin: SpkiPin, mode: TransportMode) -> AgentSettings {
    let mut s = AgentSettings::new(
        NAME,
        AgentToken::new(TOKEN),
        vec![gateway.to_string()],
        GatewayVerification::Pin(pin),
    );
    s.transport = mode;
    s.limits = limits();
    s
}

pub fn allow(entries: &[&str]) -> AllowList {
    AllowList::parse(entries).expect("allow list")
}

/// A TCP server that echoes every byte and half-closes after its client does.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

pub fn client() -> SocketAddr {
    CLIENT.parse().expect("client addr")
}

/// Sends a line through the stream and expects it back.
pub async fn ping(stream: &mut TunnelStream, text: &str) {
    within(Duration::from_secs(5), async {
        stream.write_all(text.as_bytes()).await.expect("write");
        let mut back = vec![0u8; text.len()];
        stream.read_exact(&mut back).await.expect("read the echo");
        assert_eq!(back, text.as_bytes());
    })
    .await;
}

pub async fn within<F: Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

/// Polls `cond` every 10 ms until it holds; panics after `limit`.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) {
    within(limit, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}
