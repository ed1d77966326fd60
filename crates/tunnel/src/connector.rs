//! The agent's side of the tunnel: [`Connector::connect`] dials a gateway over QUIC or TLS
//! on TCP, verifies it, says hello with the agent's token, and returns an [`AgentSession`]
//! whose [`accept`](AgentSession::accept) yields the streams the gateway opens. What to do
//! with each stream (allow list, dialing, splicing) is the agent crate's business.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::frame_io::{FrameError, read_message, write_message};
use crate::limits::Limits;
use crate::proto::{ALPN, Hello, HelloAnswer, OpenStatus, RefuseReason, StreamHeader};
use crate::transport::quic::{CLOSE_NORMAL, CLOSE_REFUSED};
use crate::transport::{MuxStream, TransportKind, quic, tcp};
use crate::verify::{GatewayVerification, TlsSetupError};

/// Why a connection to a gateway could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid gateway address {0:?}: expected host:port")]
    Address(String),
    #[error("cannot resolve {gateway}: {source}")]
    Resolve {
        gateway: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot reach {gateway} over {transport}: {source}")]
    Io {
        gateway: String,
        transport: TransportKind,
        #[source]
        source: io::Error,
    },
    #[error("{transport} handshake with {gateway} failed: {message}")]
    Handshake {
        gateway: String,
        transport: TransportKind,
        message: String,
        /// The gateway's certificate was rejected (pin or CA mismatch).
        certificate: bool,
    },
    #[error("no answer from {gateway} over {transport} within {timeout:?}")]
    Timeout {
        gateway: String,
        transport: TransportKind,
        timeout: Duration,
    },
    #[error("the gateway {gateway} refused this agent: {reason}")]
    Refused { gateway: String, reason: String },
    #[error("unexpected answer from the gateway {gateway}: {source}")]
    Protocol {
        gateway: String,
        #[source]
        source: FrameError,
    },
}

impl ConnectError {
    /// The gateway refused the token, or the agent refused the gateway's certificate:
    /// retrying will not help until a configuration changes.
    pub fn is_authentication_failure(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused { .. }
                | ConnectError::Handshake {
                    certificate: true,
                    ..
                }
        )
    }

    /// The handshake did not complete in time (for QUIC, a sign UDP does not get through).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout { .. })
    }
}

/// Why a session ended.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the connection to the gateway ended: {reason}")]
pub struct SessionEnded {
    pub reason: String,
}

/// Dials gateways. Build once per agent: it holds the TLS settings.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<rustls::ClientConfig>,
    quic: quinn::ClientConfig,
    limits: Limits,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Connector {
    pub fn new(
        verification: &GatewayVerification,
        limits: Limits,
    ) -> Result<Connector, TlsSetupError> {
        let tls = crate::tls::client_config(verification)?;
        let quic = quic::client_config(tls.clone(), &limits)?;
        Ok(Connector {
            tls: Arc::new(tls),
            quic,
            limits,
        })
    }

    /// Connects to `gateway` (`host:port`) and says hello; the whole set-up must finish
    /// within `timeout`.
    pub async fn connect(
        &self,
        gateway: &str,
        transport: TransportKind,
        hello: &Hello,
        timeout: Duration,
    ) -> Result<AgentSession, ConnectError> {
        let host = server_name(gateway)?;
        let attempt = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(gateway)
                .await
                .map_err(|source| ConnectError::Resolve {
                    gateway: gateway.to_string(),
                    source,
                })?
                .collect();
            let mut last = ConnectError::Resolve {
                gateway: gateway.to_string(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            };
            for addr in addrs {
                let result = match transport {
                    TransportKind::Quic => self.connect_quic(gateway, addr, &host, hello).await,
                    TransportKind::Tcp => self.connect_tcp(gateway, addr, &host, hello).await,
                };
                match result {
                    Ok(session) => return Ok(session),
                    Err(e) if e.is_authentication_failure() => return Err(e),
                    Err(e) => last = e,
                }
            }
            Err(last)
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| ConnectError::Timeout {
                gateway: gateway.to_string(),
                transport,
                timeout,
            })?
    }

    async fn connect_quic(
        &self,
        gateway: &str,
        addr: SocketAddr,
        host: &str,
        hello: &Hello,
    ) -> Result<AgentSession, ConnectError> {
        let io_err = |source| ConnectError::Io {
            gateway: gateway.to_string(),
            transport: TransportKind::Quic,
            source,
        };
        let endpoint = quic::client_endpoint(addr).map_err(io_err)?;
        let conn = endpoint
            .connect_with(self.quic.clone(), addr, host)
            .map_err(|e| io_err(io::Error::other(e)))?
            .await
            .map_err(|e| quic_error(gateway, e))?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| quic_error(gateway, e))?;
            write_message(&mut send, hello).await.map_err(io_err)?;
            let _ = send.finish();
            read_message::<HelloAnswer, _>(&mut recv, self.limits.handshake_timeout)
                .await
                .map_err(|source| match conn.close_reason() {
                    Some(e) => quic_error(gateway, e),
                    None => ConnectError::Protocol {
                        gateway: gateway.to_string(),
                        source,
                    },
                })
        };
        match exchange.await? {
            HelloAnswer::Accepted { name } => Ok(AgentSession {
                inner: SessionInner::Quic {
                    endpoint,
                    conn: conn.clone(),
                },
                transport: TransportKind::Quic,
                gateway: gateway.to_string(),
                remote: addr,
                name,
                header_timeout: self.limits.header_timeout,
            }),
            HelloAnswer::Refused { reason } => {
                conn.close(CLOSE_REFUSED.into(), b"refused");
                Err(ConnectError::Refused {
                    gateway: gateway.to_string(),
                    reason,
                })
            }
        }
    }

    async fn connect_tcp(
        &self,
        gateway: &str,
        addr: SocketAddr,
        host: &str,
        hello: &Hello,
    ) -> Result<AgentSession, ConnectError> {
        let io_err = |source| ConnectError::Io {
            gateway: gateway.to_string(),
            transport: TransportKind::Tcp,
            source,
        };
        let socket = TcpStream::connect(addr).await.map_err(io_err)?;
        let _ = socket.set_nodelay(true);
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| ConnectError::Address(gateway.to_string()))?;
        let mut tls = TlsConnector::from(self.tls.clone())
            .connect(name, socket)
            .await
            .map_err(|e| tls_error(gateway, e))?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(ConnectError::Handshake {
                gateway: gateway.to_string(),
                transport: TransportKind::Tcp,
                message: "the gateway does not speak kakuremichi/1 (ALPN)".into(),
                certificate: false,
            });
        }
        write_message(&mut tls, hello).await.map_err(io_err)?;
        let answer = read_message::<HelloAnswer, _>(&mut tls, self.limits.handshake_timeout)
            .await
            .map_err(|source| ConnectError::Protocol {
                gateway: gateway.to_string(),
                source,
            })?;
        let name = match answer {
            HelloAnswer::Accepted { name } => name,
            HelloAnswer::Refused { reason } => {
                let _ = tls.shutdown().await;
                return Err(ConnectError::Refused {
                    gateway: gateway.to_string(),
                    reason,
                });
            }
        };
        let connection =
            tcp::server(tls, &self.limits)
                .await
                .map_err(|e| ConnectError::Handshake {
                    gateway: gateway.to_string(),
                    transport: TransportKind::Tcp,
                    message: format!("HTTP/2 set-up failed: {e}"),
                    certificate: false,
                })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let close = CancellationToken::new();
        tokio::spawn(drive_h2(connection, tx, close.clone(), self.limits.clone()));
        Ok(AgentSession {
            inner: SessionInner::Tcp { streams: rx, close },
            transport: TransportKind::Tcp,
            gateway: gateway.to_string(),
            remote: addr,
            name,
            header_timeout: self.limits.header_timeout,
        })
    }
}

/// The host part of `host:port`, for SNI and certificate names.
fn server_name(gateway: &str) -> Result<String, ConnectError> {
    let (host, port) = gateway
        .rsplit_once(':')
        .ok_or_else(|| ConnectError::Address(gateway.to_string()))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(ConnectError::Address(gateway.to_string()));
    }
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string())
}

fn quic_error(gateway: &str, e: quinn::ConnectionError) -> ConnectError {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(close) if close.error_code == CLOSE_REFUSED.into() => {
            ConnectError::Refused {
                gateway: gateway.to_string(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        E::TransportError(t) => {
            let certificate =
                (42..=49).any(|alert| t.code == quinn::TransportErrorCode::crypto(alert));
            ConnectError::Handshake {
                gateway: gateway.to_string(),
                transport: TransportKind::Quic,
                message: t.to_string(),
                certificate,
            }
        }
        other => ConnectError::Handshake {
            gateway: gateway.to_string(),
            transport: TransportKind::Quic,
            message: other.to_string(),
            certificate: false,
        },
    }
}

fn tls_error(gateway: &str, e: io::Error) -> ConnectError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let (certificate, message) = match rustls_error {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            (true, other.0.to_string())
        }
        Some(rustls::Error::InvalidCertificate(c)) => {
            (true, format!("the gateway's certificate is not valid: {c}"))
        }
        _ => (false, e.to_string()),
    };
    ConnectError::Handshake {
        gateway: gateway.to_string(),
        transport: TransportKind::Tcp,
        message,
        certificate,
    }
}

/// Drives the agent's HTTP/2 connection: hands each stream the gateway opens to the
/// session, pings the gateway, and reports why it ended.
async fn drive_h2(
    mut connection: h2::server::Connection<
        tokio_rustls::client::TlsStream<TcpStream>,
        bytes::Bytes,
    >,
    streams: mpsc::UnboundedSender<Result<MuxStream, String>>,
    close: CancellationToken,
    limits: Limits,
) {
    let ping_pong = connection.ping_pong();
    let keep_alive = tcp::keep_alive(ping_pong, limits.keep_alive, limits.tcp_ping_timeout);
    tokio::pin!(keep_alive);
    let why = loop {
        // The channel is unbounded, but holds at most `max_streams` streams: HTTP/2 counts
        // the ones not yet taken as open.
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => match tcp::accept_stream(request, respond) {
                    Ok(stream) => {
                        if streams.send(Ok(stream)).is_err() {
                            break "the agent closed the session".to_string();
                        }
                    }
                    Err(e) => tracing::debug!("cannot answer a tunnel stream: {e}"),
                },
                Some(Err(e)) => break e.to_string(),
                None => break "the gateway closed the connection".to_string(),
            },
            why = &mut keep_alive => break why,
            _ = close.cancelled() => {
                connection.graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(_)) = connection.accept().await {}
                })
                .await;
                break "the agent closed the session".to_string();
            }
        }
    };
    let _ = streams.send(Err(why));
}

enum SessionInner {
    Quic {
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
    },
    Tcp {
        streams: mpsc::UnboundedReceiver<Result<MuxStream, String>>,
        close: CancellationToken,
    },
}

/// An authenticated connection to one gateway.
pub struct AgentSession {
    inner: SessionInner,
    transport: TransportKind,
    gateway: String,
    remote: SocketAddr,
    name: String,
    header_timeout: Duration,
}

impl std::fmt::Debug for AgentSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSession")
            .field("gateway", &self.gateway)
            .field("remote", &self.remote)
            .field("transport", &self.transport)
            .field("name", &self.name)
            .finish()
    }
}

impl AgentSession {
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// The gateway as configured (`host:port`).
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The name the gateway knows this agent by.
    pub fn agent_name(&self) -> &str {
        &self.name
    }

    /// The next stream the gateway opens. Cancel safe.
    pub async fn accept(&mut self) -> Result<IncomingStream, SessionEnded> {
        let inner = match &mut self.inner {
            SessionInner::Quic { conn, .. } => match conn.accept_bi().await {
                Ok((send, recv)) => MuxStream::Quic { send, recv },
                Err(e) => {
                    return Err(SessionEnded {
                        reason: e.to_string(),
                    });
                }
            },
            SessionInner::Tcp { streams, .. } => match streams.recv().await {
                Some(Ok(stream)) => stream,
                Some(Err(reason)) => return Err(SessionEnded { reason }),
                None => {
                    return Err(SessionEnded {
                        reason: "the connection task ended".into(),
                    });
                }
            },
        };
        Ok(IncomingStream {
            inner,
            header_timeout: self.header_timeout,
            shut_down: false,
        })
    }

    /// Closes the connection, telling the gateway.
    pub async fn close(self) {
        match &self.inner {
            SessionInner::Quic { endpoint, conn } => {
                conn.close(CLOSE_NORMAL.into(), b"agent shutting down");
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            SessionInner::Tcp { close, .. } => close.cancel(),
        }
    }
}

impl Drop for AgentSession {
    fn drop(&mut self) {
        match &self.inner {
            SessionInner::Quic { conn, .. } => {
                conn.close(CLOSE_NORMAL.into(), b"agent session dropped")
            }
            SessionInner::Tcp { close, .. } => close.cancel(),
        }
    }
}

/// A stream the gateway opened: read its header, then [`connected`](Self::connected) or
/// [`refuse`](Self::refuse); after `connected` it is the byte stream to splice.
pub struct IncomingStream {
    inner: MuxStream,
    header_timeout: Duration,
    shut_down: bool,
}

impl std::fmt::Debug for IncomingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingStream").finish_non_exhaustive()
    }
}

/// Longest time a refused stream waits for the gateway to close its side.
const LINGER: Duration = Duration::from_secs(2);

impl IncomingStream {
    /// Reads the stream header, bounded in size and by the header timeout.
    pub async fn read_header(&mut self) -> Result<StreamHeader, FrameError> {
        read_message::<StreamHeader, _>(&mut self.inner, self.header_timeout).await
    }

    /// Tells the gateway the upstream is connected; bytes flow from here on.
    pub async fn connected(&mut self) -> io::Result<()> {
        write_message(&mut self.inner, &OpenStatus::Connected).await
    }

    /// Tells the gateway why the stream is refused, and closes it.
    pub async fn refuse(mut self, reason: RefuseReason, message: &str) {
        let status = OpenStatus::Refused {
            reason,
            message: message.to_string(),
        };
        if write_message(&mut self.inner, &status).await.is_err() {
            return;
        }
        if self.inner.shutdown().await.is_ok() {
            self.shut_down = true;
        }
        // Wait (briefly, and discarding at most 64 KiB) for the gateway to read the status
        // and close, so the status is not lost to a reset.
        let mut sink = [0u8; 4096];
        let mut budget = 64 * 1024usize;
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n) = self.inner.read(&mut sink).await {
                if n == 0 || n >= budget {
                    break;
                }
                budget -= n;
            }
        })
        .await;
    }
}

impl Drop for IncomingStream {
    fn drop(&mut self) {
        if !self.shut_down {
            self.inner.abort();
        }
    }
}

impl AsyncRead for IncomingStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for IncomingStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = result {
            this.shut_down = true;
        }
        result
    }
}
