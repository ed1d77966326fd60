//! The gateway's tunnel listener: QUIC on a UDP port and TLS over TCP on the same port
//! number. It authenticates agents ([`hello`]), registers their connections in the
//! [`AgentRegistry`], and removes them when they end.

mod hello;
mod quic;
mod tcp;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AgentAuth;
use crate::identity::TunnelIdentity;
use crate::limits::Limits;
use crate::registry::AgentRegistry;
use crate::verify::TlsSetupError;

/// Why the tunnel listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "cannot listen for the tunnel on {addr} ({protocol}): {source}; is another process using the port?"
    )]
    Io {
        addr: SocketAddr,
        protocol: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// A handshake failed because the agent refused the gateway's certificate: logged as a
/// warning, since it means an agent is misconfigured (or talking to the wrong gateway).
#[derive(Debug, thiserror::Error)]
#[error("the agent rejected this gateway's certificate; check its gateway_pin or gateway_ca ({0})")]
struct CertificateRejected(String);

/// Logs a failed handshake on the tunnel port.
fn log_handshake_failure(
    peer: SocketAddr,
    transport: &'static str,
    e: &(dyn std::error::Error + Send + Sync + 'static),
) {
    if e.is::<CertificateRejected>() {
        tracing::warn!(%peer, transport, "tunnel handshake failed: {e}");
    } else {
        tracing::info!(%peer, transport, "tunnel handshake failed: {e}");
    }
}

/// What the listener serves, and its limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub limits: Limits,
    /// Accept QUIC on UDP.
    pub quic: bool,
    /// Accept TLS over TCP.
    pub tcp: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            limits: Limits::default(),
            quic: true,
            tcp: true,
        }
    }
}

/// The gateway's tunnel listener. [`bind`](TunnelServer::bind), hand
/// [`registry`](TunnelServer::registry) to the request path, then [`run`](TunnelServer::run).
pub struct TunnelServer {
    registry: AgentRegistry,
    endpoint: Option<quinn::Endpoint>,
    listener: Option<TcpListener>,
    acceptor: TlsAcceptor,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for TunnelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl TunnelServer {
    /// Binds UDP and TCP on `addr` (with port 0, one free port number for both).
    pub async fn bind(
        addr: SocketAddr,
        identity: &TunnelIdentity,
        auth: AgentAuth,
    ) -> Result<TunnelServer, BindError> {
        TunnelServer::bind_with(addr, identity, auth, ServerOptions::default()).await
    }

    pub async fn bind_with(
        addr: SocketAddr,
        identity: &TunnelIdentity,
        auth: AgentAuth,
        options: ServerOptions,
    ) -> Result<TunnelServer, BindError> {
        let (listener, udp, local_addr) = bind_sockets(addr, options.tcp, options.quic)?;
        let endpoint = match udp {
            Some(socket) => Some(crate::transport::quic::server_endpoint(
                socket,
                identity,
                &options.limits,
            )?),
            None => None,
        };
        let acceptor = TlsAcceptor::from(Arc::new(crate::tls::server_config(identity)?));
        tracing::info!(
            addr = %local_addr, quic = options.quic, tcp = options.tcp,
            pin = %identity.pin(), "tunnel listening"
        );
        Ok(TunnelServer {
            registry: AgentRegistry::new(auth, options.limits),
            endpoint,
            listener,
            acceptor,
            local_addr,
        })
    }

    /// The bound address (UDP and TCP share the port number).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry of connected agents, for the request path.
    pub fn registry(&self) -> AgentRegistry {
        self.registry.clone()
    }

    /// Accepts agents until `shutdown`, then closes every agent connection and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let quic = async {
            if let Some(endpoint) = &self.endpoint {
                quic::accept_loop(endpoint.clone(), &self.registry, &shutdown, &tracker).await;
            }
        };
        let tcp = async {
            if let Some(listener) = &self.listener {
                tcp::accept_loop(
                    listener,
                    &self.acceptor,
                    &self.registry,
                    &shutdown,
                    &tracker,
                )
                .await;
            }
        };
        tokio::join!(quic, tcp);
        drop(self.listener);
        self.registry.close_all("gateway shutting down");
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
        if let Some(endpoint) = self.endpoint {
            endpoint.close(0u32.into(), b"gateway shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        tracing::info!(addr = %self.local_addr, "tunnel listener stopped");
    }
}

type Sockets = (Option<TcpListener>, Option<UdpSocket>, SocketAddr);

fn bind_sockets(addr: SocketAddr, tcp: bool, udp: bool) -> Result<Sockets, BindError> {
    let io_err = |protocol, source| BindError::Io {
        addr,
        protocol,
        source,
    };
    // With port 0, the TCP port the kernel picks may be taken on UDP: try a few.
    let attempts = if addr.port() == 0 && tcp && udp {
        16
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        let listener = if tcp {
            Some(bind_tcp(addr).map_err(|e| io_err("tcp", e))?)
        } else {
            None
        };
        let port = match &listener {
            Some(l) => l.local_addr().map_err(|e| io_err("tcp", e))?.port(),
            None => addr.port(),
        };
        let udp_addr = SocketAddr::new(addr.ip(), port);
        let socket = if udp {
            match UdpSocket::bind(udp_addr) {
                Ok(s) => Some(s),
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            }
        } else {
            None
        };
        let local = match &socket {
            Some(s) => s.local_addr().map_err(|e| io_err("udp", e))?,
            None => udp_addr,
        };
        return Ok((listener, socket, local));
    }
    Err(io_err(
        "udp",
        last.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()),
    ))
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
