//! Accepting client connections: the `max_connections` cap, then per connection either plain
//! HTTP/1.1 or TLS followed by HTTP/2 or HTTP/1.1 as ALPN chose, with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kakuremichi_config::net::canonical_ip;
use kakuremichi_tls::LogBudget;
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};
use tokio_util::task::TaskTracker;

use crate::body::ClientBody;
use crate::conn::{ConnHold, ConnInfo, ConnIo, ConnPhase};
use crate::h1;
use crate::handler::{self, Shared};
use crate::head_reject::HeadRejects;
use crate::stop_signal::StopSignal;

/// Lines about failed TLS handshakes: anyone can cause them, so only a few per minute are
/// written (with a count of those left out).
static HANDSHAKE_LOG: LogBudget = LogBudget::new(30, 60);

/// One listening socket and what it speaks.
pub struct Listener {
    /// Not yet tied to a runtime: every serving thread accepts on its own duplicate.
    pub socket: std::net::TcpListener,
    /// `Some` for the https listener.
    pub tls: Option<TlsAcceptor>,
}

impl Listener {
    /// Another handle on the same listening socket, for another serving thread.
    pub fn try_clone(&self) -> std::io::Result<Listener> {
        Ok(Listener {
            socket: self.socket.try_clone()?,
            tls: self.tls.clone(),
        })
    }
}

/// Accepts until `shutdown`; every connection task is tracked for the drain. Runs on a
/// serving thread, whose runtime the socket is registered with.
pub async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    shutdown: StopSignal,
    tracker: TaskTracker,
) {
    let socket = match TcpListener::from_std(listener.socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch a listening socket on a serving thread; this thread serves no connections");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.fired() => return,
            r = socket.accept() => r,
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
        let tls = listener.tls.clone();
        // Released when the connection closes, which for an upgraded (WebSocket) connection
        // is after hyper is done with it.
        let hold = ConnHold::new(
            permit,
            tracker.token(),
            shared.metrics.open_connections.clone(),
        );
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(peer);
            let conn = Conn { peer, local, hold };
            match tls {
                None => serve_http1(stream, conn, false, &shared, &shutdown).await,
                Some(acceptor) => serve_tls(acceptor, stream, conn, &shared, &shutdown).await,
            }
        });
    }
}

/// An accepted connection before its protocol is known.
struct Conn {
    peer: SocketAddr,
    local: SocketAddr,
    hold: Arc<ConnHold>,
}

async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    conn: Conn,
    shared: &Arc<Shared>,
    shutdown: &StopSignal,
) {
    let peer = conn.peer;
    let handshake_timeout = shared.runtime.load().settings.header_timeout;
    // The client hello is read first so that a failure can be logged with the name the
    // client asked for.
    let mut sni: Option<String> = None;
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
        sni = start.client_hello().server_name().map(str::to_owned);
        start.into_stream(acceptor.config().clone()).await
    };
    let result = tokio::time::timeout(handshake_timeout, handshake).await;
    let tls = match result {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) if sni.is_none() && e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // Closed before a whole client hello: a port check, not a TLS client.
            tracing::debug!(%peer, "connection closed before a TLS client hello");
            return;
        }
        Ok(Err(e)) => {
            if let Some(suppressed) = HANDSHAKE_LOG.take() {
                tracing::info!(
                    %peer,
                    sni = sni.as_deref().unwrap_or("-"),
                    error = %e,
                    suppressed,
                    "TLS handshake failed"
                );
            }
            return;
        }
        Err(_) => {
            if let Some(suppressed) = HANDSHAKE_LOG.take() {
                tracing::info!(
                    %peer,
                    sni = sni.as_deref().unwrap_or("-"),
                    timeout_secs = handshake_timeout.as_secs_f64(),
                    suppressed,
                    "TLS handshake did not finish in time (header_timeout); connection closed"
                );
            }
            return;
        }
    };
    let alpn = tls.get_ref().1.alpn_protocol();
    if alpn == Some(kakuremichi_tls::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake itself was the answer.
        return;
    }
    let h2 = alpn == Some(b"h2");
    if h2 {
        serve_http2(tls, conn, shared, shutdown).await;
    } else {
        serve_http1(tls, conn, true, shared, shutdown).await;
    }
}

async fn serve_http1<S>(
    stream: S,
    conn: Conn,
    https: bool,
    shared: &Arc<Shared>,
    shutdown: &StopSignal,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (header_timeout, max_header_size, request_id_header) = {
        let rt = shared.runtime.load();
        (
            rt.settings.header_timeout,
            rt.settings.max_header_size,
            rt.settings.request_id_header.clone(),
        )
    };
    let Conn { peer, local, hold } = conn;
    let rejects = HeadRejects {
        request_id_header,
        client_ip: canonical_ip(peer.ip()),
        metrics: shared.unrouted.clone(),
    };
    let phase = ConnPhase::new();
    let info = Arc::new(ConnInfo::new(peer, local, https, phase.clone(), hold));
    // The gateway's own loop serves the common requests; hyper takes over at the first one
    // it does not (see `h1`).
    let serving = h1::Serving {
        shared,
        info: &info,
        header_timeout,
        max_head: usize::try_from(max_header_size).unwrap_or(usize::MAX),
        shutdown,
    };
    let ended = tokio::select! {
        ended = h1::serve(stream, serving) => ended,
        _ = shared.hard_stop.fired() => return,
    };
    let h1::Ending::HandOver(stream) = ended else {
        return;
    };
    let io = TokioIo::new(ConnIo::new(
        stream,
        phase,
        header_timeout,
        max_header_size,
        rejects,
    ));
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        handler::handle(
            service_shared.clone(),
            info.clone(),
            req.map(ClientBody::Hyper),
        )
    });
    let mut builder = http1::Builder::new();
    builder
        .max_buf_size(max_header_size.max(8192) as usize)
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
        _ = shutdown.fired() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shared.hard_stop.fired() => {}
            }
        }
    }
}

async fn serve_http2<S>(stream: S, conn: Conn, shared: &Arc<Shared>, shutdown: &StopSignal)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_header_size = shared.runtime.load().settings.max_header_size;
    let Conn { peer, local, hold } = conn;
    // HTTP/2 multiplexes requests, so there is no per-connection head deadline; the phase
    // is kept only because the request path reports to it.
    let info = Arc::new(ConnInfo::new(peer, local, true, ConnPhase::new(), hold));
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        handler::handle(
            service_shared.clone(),
            info.clone(),
            req.map(ClientBody::Hyper),
        )
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_size.min(u32::MAX as u64) as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
            }
        }
        _ = shutdown.fired() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shared.hard_stop.fired() => {}
            }
        }
    }
}
