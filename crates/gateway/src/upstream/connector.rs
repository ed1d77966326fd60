//! Dials upstreams: TCP with a connect timeout, or a stream through an agent of the route's
//! `via` group, then TLS (rustls) for `https` upstreams. Used by the pooled HTTP client,
//! which keeps the connections alive between requests.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use kakuremichi_tunnel::{AgentRegistry, TunnelStream};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why an upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {authority} timed out after {timeout:?}")]
    Timeout {
        authority: String,
        timeout: Duration,
    },
    #[error("cannot connect to {authority}: {source}")]
    Io {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {authority} failed: {source}")]
    Tls {
        authority: String,
        #[source]
        source: io::Error,
    },
    #[error("the upstream URL {0} has no host")]
    NoHost(String),
    #[error(transparent)]
    Tunnel(#[from] kakuremichi_tunnel::OpenError),
}

/// The byte stream under an upstream connection: a TCP socket or a tunnel stream.
pub enum Transport {
    Tcp(TcpStream),
    Tunnel(Box<TunnelStream>),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Transport::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Transport::Tunnel($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Tcp(s) => s.is_write_vectored(),
            Transport::Tunnel(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// A connection to an upstream, plain or TLS.
pub enum UpstreamStream {
    Plain(Transport),
    Tls(Box<TlsStream<Transport>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects to `http` and `https` upstreams.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    connect_timeout: Duration,
    /// For `via` routes: the agents to reach the upstream through, and their group.
    tunnel: Option<(AgentRegistry, Arc<str>)>,
}

impl Connector {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        tunnel: Option<(AgentRegistry, Arc<str>)>,
    ) -> Self {
        Connector {
            tls: TlsConnector::from(tls),
            connect_timeout,
            tunnel,
        }
    }

    async fn open_transport(
        &self,
        host: &str,
        port: u16,
        authority: &str,
    ) -> Result<Transport, ConnectError> {
        match &self.tunnel {
            None => {
                let tcp = dial(host, port, authority).await?;
                let _ = tcp.set_nodelay(true);
                Ok(Transport::Tcp(tcp))
            }
            Some((registry, group)) => {
                let target = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                // Pooled connections are shared by clients, so the stream header names no
                // client; X-Forwarded-For carries the real one.
                let unknown = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
                let stream = registry.open(group, &target, unknown).await?;
                Ok(Transport::Tunnel(Box::new(stream)))
            }
        }
    }

    /// A plain TCP connection to an `http` upstream (no tunnel), within the connect
    /// timeout, with `TCP_NODELAY` set.
    pub async fn dial_tcp(&self, uri: &Uri) -> Result<TcpStream, ConnectError> {
        let Target {
            host,
            port,
            authority,
            ..
        } = Target::of(uri)?;
        let timeout = self.connect_timeout;
        let tcp = tokio::time::timeout(timeout, dial(&host, port, &authority))
            .await
            .map_err(|_| ConnectError::Timeout {
                authority: authority.clone(),
                timeout,
            })??;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn connect(self, uri: Uri) -> Result<UpstreamStream, ConnectError> {
        let Target {
            host,
            port,
            authority,
            https,
        } = Target::of(&uri)?;
        let timeout = self.connect_timeout;
        let tcp = tokio::time::timeout(timeout, self.open_transport(&host, port, &authority))
            .await
            .map_err(|_| ConnectError::Timeout {
                authority: authority.clone(),
                timeout,
            })??;
        if !https {
            return Ok(UpstreamStream::Plain(tcp));
        }
        let name = ServerName::try_from(host.clone()).map_err(|_| ConnectError::Tls {
            authority: authority.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "invalid server name"),
        })?;
        let tls = tokio::time::timeout(timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Timeout {
                authority: authority.clone(),
                timeout,
            })?
            .map_err(|source| ConnectError::Tls { authority, source })?;
        Ok(UpstreamStream::Tls(Box::new(tls)))
    }
}

/// Where an upstream URI points.
struct Target {
    /// Without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// `host:port` as written, for messages.
    authority: String,
    https: bool,
}

impl Target {
    fn of(uri: &Uri) -> Result<Target, ConnectError> {
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::NoHost(uri.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_else(|| host.clone());
        Ok(Target {
            host,
            port,
            authority,
            https,
        })
    }
}

async fn dial(host: &str, port: u16, authority: &str) -> Result<TcpStream, ConnectError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return TcpStream::connect((ip, port))
            .await
            .map_err(|source| ConnectError::Io {
                authority: authority.to_string(),
                source,
            });
    }
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| ConnectError::Resolve {
            authority: authority.to_string(),
            source,
        })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no addresses");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(ConnectError::Io {
        authority: authority.to_string(),
        source: last,
    })
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ConnectError;
    type Future =
        Pin<Box<dyn Future<Output = Result<TokioIo<UpstreamStream>, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(uri).await.map(TokioIo::new) })
    }
}
