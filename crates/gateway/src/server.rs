//! The gateway as a whole: binds its listeners, accepts connections within
//! `max_connections`, serves HTTP/1.1 on each, swaps configurations on reload, and drains on
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use kakuremichi_config::GatewayConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{ConnInfo, ConnIo, ConnPhase};
use crate::handler::{self, Shared};
use crate::metrics::Metrics;
use crate::state::{BuildError, Runtime};
use crate::upstream::pool::ClientCache;
use crate::upstream::tls::TlsSetupError;

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
}

/// Addresses the gateway actually listens on (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub http: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// Applies new configurations to a running gateway.
#[derive(Clone)]
pub struct ReloadHandle {
    shared: Arc<Shared>,
}

impl ReloadHandle {
    /// Builds the new state and swaps it in. On error the old configuration stays in force.
    pub fn reload(&self, config: &GatewayConfig) -> Result<(), GatewayError> {
        let result = Runtime::build(config, &self.shared.clients, &self.shared.metrics);
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
                Err(e.into())
            }
        }
    }
}

pub struct Gateway {
    shared: Arc<Shared>,
    http: Option<TcpListener>,
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

impl Gateway {
    /// Validates what the configuration needs at run time and binds the listeners.
    pub async fn bind(config: &GatewayConfig) -> Result<Gateway, GatewayError> {
        let metrics = Metrics::new();
        let clients = ClientCache::new(config.settings.ca_roots.as_deref())?;
        let runtime = Runtime::build(config, &clients, &metrics)?;
        let http = match config.settings.http {
            Some(a) => Some(bind("http", a).await?),
            None => None,
        };
        let admin = match config.settings.admin {
            Some(a) => Some(bind("admin", a).await?),
            None => None,
        };
        let addrs = BoundAddrs {
            http: http.as_ref().and_then(|l| l.local_addr().ok()),
            admin: admin.as_ref().and_then(|l| l.local_addr().ok()),
        };
        let shared = Arc::new(Shared {
            runtime: ArcSwap::new(runtime),
            metrics,
            clients,
            hard_stop: CancellationToken::new(),
        });
        Ok(Gateway {
            shared,
            http,
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
        let admin_stop = CancellationToken::new();
        if let Some(listener) = self.admin {
            tokio::spawn(crate::admin::run(
                listener,
                self.shared.metrics.clone(),
                self.ready.clone(),
                admin_stop.clone(),
            ));
        }
        if let Some(listener) = self.http {
            let settings = self.shared.runtime.load().settings.clone();
            let limit = Arc::new(Semaphore::new(settings.max_connections));
            tracker.spawn(accept_loop(
                listener,
                self.shared.clone(),
                limit,
                shutdown.clone(),
                tracker.clone(),
            ));
        }
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(http = ?self.addrs.http, admin = ?self.addrs.admin, "gateway ready");
        shutdown.cancelled().await;
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
        self.shared.hard_stop.cancel();
        // Give cancelled connections a moment to close cleanly.
        let _ = tokio::time::timeout(Duration::from_millis(200), tracker.wait()).await;
        admin_stop.cancel();
        tracing::info!("gateway stopped");
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            shared.metrics.rejected_connections.inc();
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            shared.metrics.open_connections.inc();
            serve_connection(stream, peer, shared.clone(), shutdown).await;
            shared.metrics.open_connections.dec();
            drop(permit);
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(peer);
    let settings = shared.runtime.load().settings.clone();
    let phase = ConnPhase::new();
    let info = Arc::new(ConnInfo {
        peer,
        local,
        https: false,
        phase: phase.clone(),
    });
    let io = TokioIo::new(ConnIo::new(stream, phase, settings.header_timeout));
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        handler::handle(service_shared.clone(), info.clone(), req)
    });
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(settings.max_header_size.max(8192) as usize)
        .max_headers(256)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shared.hard_stop.cancelled() => {}
            }
        }
    }
}
