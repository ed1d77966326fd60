//! The gateway as a whole: binds its listeners, accepts connections within
//! `max_connections`, serves HTTP/1.1 on each, swaps configurations on reload, and drains on
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use kakuremichi_config::GatewayConfig;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::Shared;
use crate::listener::{Listener, accept_loop};
use crate::metrics::{HostLabel, Metrics};
use crate::state::{BuildError, Runtime};
use crate::stop_signal::StopSignal;
use crate::tls_setup::TlsRuntime;
use crate::upstream::pool::ClientCache;
use crate::upstream::tls::TlsSetupError;
use crate::workers::Workers;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr} ({what}): {source}; is another process using the port?")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    ServerTls(#[from] crate::tls_setup::ServerTlsError),
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel_setup::TunnelSetupError),
    #[error(
        "cannot start the serving threads: {0}; is the process out of threads or file descriptors?"
    )]
    Workers(#[source] std::io::Error),
}

/// Addresses the gateway actually listens on (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub tunnel: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Applies new configurations to a running gateway.
#[derive(Clone)]
pub struct ReloadHandle {
    shared: Arc<Shared>,
}

impl ReloadHandle {
    /// The state of every certificate (empty without `[tls]`).
    pub fn certificates(&self) -> Vec<kakuremichi_tls::CertStatus> {
        self.shared
            .tls
            .as_ref()
            .map(|t| t.store.status())
            .unwrap_or_default()
    }

    /// Counts a reload refused before it reached the gateway (the file did not parse or
    /// validate).
    pub fn record_failure(&self) {
        self.shared.metrics.config_reload_failures.inc();
    }

    /// Builds the new state and swaps it in. On error the old configuration stays in force.
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), GatewayError> {
        let result = Runtime::build(
            config,
            &self.shared.clients,
            &self.shared.metrics,
            &self.shared.policy_env,
        )
        .map_err(GatewayError::from)
        .and_then(|runtime| {
            if let Some(registry) = &self.shared.tunnel {
                registry.replace_auth(crate::tunnel_setup::agent_auth(config)?);
            }
            if let Some(tls) = &self.shared.tls {
                tls.reload(config)?;
            } else if config.tls.is_some() {
                tracing::warn!("[tls] was added to the file; it takes effect at the next restart");
            }
            Ok(runtime)
        });
        match result {
            Ok(runtime) => {
                let old = self.shared.runtime.load();
                if old.settings.http != config.settings.http
                    || old.settings.admin != config.settings.admin
                {
                    tracing::warn!(
                        "listener addresses changed in the file; they take effect at the next restart"
                    );
                }
                self.shared.runtime.store(runtime);
                self.shared.metrics.config_reloads.inc();
                Ok(())
            }
            Err(e) => {
                self.shared.metrics.config_reload_failures.inc();
                Err(e)
            }
        }
    }
}

pub struct Gateway {
    shared: Arc<Shared>,
    listeners: Vec<Listener>,
    tunnel: Option<kakuremichi_tunnel::TunnelServer>,
    admin: Option<TcpListener>,
    addrs: BoundAddrs,
    ready: Arc<AtomicBool>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, GatewayError> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|source| GatewayError::Bind { what, addr, source })?;
    let _ = socket.set_reuseaddr(true);
    socket
        .bind(addr)
        .and_then(|_| socket.listen(4096))
        .map_err(|source| GatewayError::Bind { what, addr, source })
}

/// A client listener, handed to the serving threads as a plain (non-blocking) socket.
async fn bind_client(
    what: &'static str,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, GatewayError> {
    let socket = bind(what, addr)
        .await?
        .into_std()
        .map_err(|source| GatewayError::Bind { what, addr, source })?;
    socket
        .set_nonblocking(true)
        .map_err(|source| GatewayError::Bind { what, addr, source })?;
    Ok(socket)
}

impl Gateway {
    /// Validates what the configuration needs at run time and binds the listeners.
    pub async fn bind(config: &GatewayConfig) -> Result<Gateway, GatewayError> {
        let metrics = Metrics::new();
        let tunnel = match config.settings.tunnel {
            Some(addr) => Some(crate::tunnel_setup::bind(config, addr).await?),
            None => None,
        };
        let registry = tunnel.as_ref().map(|t| t.registry());
        let clients = ClientCache::new(
            config.settings.ca_roots.as_deref(),
            registry.clone(),
            crate::workers::count(),
        )?;
        let policy_env = kakuremichi_policy::PolicyEnv::new(config.settings.ca_roots.as_deref())
            .map_err(BuildError::Policy)?;
        let runtime = Runtime::build(config, &clients, &metrics, &policy_env)?;
        let tls = TlsRuntime::build(config)?.map(Arc::new);
        if let Some(registry) = &registry {
            crate::tunnel_setup::export_metrics(&metrics, registry.clone());
        }
        if let Some(tls) = &tls {
            let store = tls.store.clone();
            let acme = tls.acme.clone();
            metrics.add_refresher(move |m| {
                for status in store.status() {
                    let label = HostLabel {
                        host: status.host.clone(),
                    };
                    if let Some(left) = status.seconds_left {
                        m.certificate_expiry.get_or_create(&label).set(left);
                    }
                    m.certificate_renewal_failures
                        .get_or_create(&label)
                        .set(i64::from(status.renewal_failures));
                }
                if let Some(acme) = &acme {
                    m.acme_orders.set(acme.orders_started() as i64);
                }
            });
        }
        let mut listeners = Vec::new();
        let mut addrs = BoundAddrs {
            http: None,
            https: None,
            tunnel: tunnel.as_ref().map(|t| t.local_addr()),
            admin: None,
        };
        if let Some(a) = config.settings.http {
            let socket = bind_client("http", a).await?;
            addrs.http = socket.local_addr().ok();
            listeners.push(Listener { socket, tls: None });
        }
        if let (Some(a), Some(tls)) = (config.settings.https, &tls) {
            let socket = bind_client("https", a).await?;
            addrs.https = socket.local_addr().ok();
            listeners.push(Listener {
                socket,
                tls: Some(tls.acceptor()),
            });
        }
        let admin = match config.settings.admin {
            Some(a) => Some(bind("admin", a).await?),
            None => None,
        };
        addrs.admin = admin.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(Shared {
            runtime: ArcSwap::new(runtime),
            unrouted: metrics.route("-"),
            tls,
            policy_env,
            tunnel: registry,
            metrics,
            clients,
            hard_stop: StopSignal::default(),
        });
        Ok(Gateway {
            shared,
            listeners,
            tunnel,
            admin,
            addrs,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` fires, then stops accepting and lets in-flight work finish
    /// for up to `drain_timeout`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let tracker = TaskTracker::new();
        // What the serving threads watch instead of `shutdown` (cheaper to poll).
        let stopping = StopSignal::default();
        let admin_stop = CancellationToken::new();
        if let Some(listener) = self.admin {
            tokio::spawn(crate::admin::run(
                listener,
                self.shared.metrics.clone(),
                self.ready.clone(),
                admin_stop.clone(),
            ));
        }
        if let Some(tls) = &self.shared.tls {
            tls.start(shutdown.clone());
        }
        if let Some(tunnel) = self.tunnel {
            // Agents stay connected through the drain so tunneled requests can finish.
            tokio::spawn(tunnel.run(self.shared.hard_stop.token().clone()));
        }
        // One cap for all client listeners together.
        let limit = Arc::new(Semaphore::new(
            self.shared.runtime.load().settings.max_connections,
        ));
        // Every serving thread accepts on its own handle of each listener.
        let mut work = Vec::new();
        for _ in 0..self.shared.clients.workers() {
            let mut loops = Vec::new();
            for listener in &self.listeners {
                let copy = listener.try_clone().map_err(GatewayError::Workers)?;
                loops.push(tracker.track_future(accept_loop(
                    copy,
                    self.shared.clone(),
                    limit.clone(),
                    stopping.clone(),
                    tracker.clone(),
                )));
            }
            work.push(async move {
                for accept in loops {
                    tokio::spawn(accept);
                }
            });
        }
        let workers = Workers::start(work).map_err(GatewayError::Workers)?;
        drop(self.listeners);
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(http = ?self.addrs.http, https = ?self.addrs.https, admin = ?self.addrs.admin, "gateway ready");
        shutdown.cancelled().await;
        stopping.fire();
        self.ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let drain = self.shared.runtime.load().settings.drain_timeout;
        tracing::info!(
            drain_secs = drain.as_secs_f64(),
            "shutting down: no new connections; waiting for in-flight requests"
        );
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!("drain deadline passed; closing what is still open");
        }
        self.shared.hard_stop.fire();
        // Give cancelled connections a moment to close cleanly.
        let _ = tokio::time::timeout(Duration::from_millis(200), tracker.wait()).await;
        workers.stop().await;
        admin_stop.cancel();
        tracing::info!("gateway stopped");
        Ok(())
    }
}
