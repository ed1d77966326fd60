//! Accepts agents over TLS on TCP: a bounded number of handshakes at once, each with a
//! deadline; TLS with ALPN `kakuremichi/1`, the hello, then HTTP/2 (the gateway as client)
//! until the connection ends.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hello::decide;
use super::{CertificateRejected, log_handshake_failure};
use crate::frame_io::{read_message, write_message};
use crate::proto::{ALPN, Hello};
use crate::registry::{AgentRegistry, Link};
use crate::stats::inc;
use crate::transport::{TransportKind, tcp};

type BoxError = Box<dyn Error + Send + Sync>;

pub(super) async fn accept_loop(
    listener: &TcpListener,
    acceptor: &TlsAcceptor,
    registry: &AgentRegistry,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    let pending = Arc::new(Semaphore::new(registry.limits().max_pending_handshakes));
    loop {
        let (socket, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("tunnel accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            inc(&registry.stats_ref().handshakes_failed);
            tracing::debug!(peer = %remote, "too many tunnel handshakes in progress; closing");
            continue;
        };
        tracker.spawn(serve(
            socket,
            remote,
            acceptor.clone(),
            registry.clone(),
            shutdown.clone(),
            permit,
        ));
    }
}

async fn handshake(
    socket: TcpStream,
    acceptor: TlsAcceptor,
    timeout: Duration,
) -> Result<(TlsStream<TcpStream>, Hello), BoxError> {
    let mut tls = acceptor.accept(socket).await.map_err(|e| -> BoxError {
        let rejected = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|r| {
                use rustls::AlertDescription as A;
                matches!(
                    r,
                    rustls::Error::AlertReceived(
                        A::BadCertificate
                            | A::UnsupportedCertificate
                            | A::CertificateRevoked
                            | A::CertificateExpired
                            | A::CertificateUnknown
                            | A::UnknownCA
                    )
                )
            });
        if rejected {
            Box::new(CertificateRejected(e.to_string()))
        } else {
            e.into()
        }
    })?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        let _ = tls.shutdown().await;
        return Err("the peer does not speak kakuremichi/1 (ALPN)".into());
    }
    let hello = read_message::<Hello, _>(&mut tls, timeout).await?;
    Ok((tls, hello))
}

async fn serve(
    socket: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    registry: AgentRegistry,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let _ = socket.set_nodelay(true);
    let limits = registry.limits().clone();
    let timeout = limits.handshake_timeout;
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, handshake(socket, acceptor, timeout)) => r,
        _ = shutdown.cancelled() => return,
    };
    let (mut tls, hello) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            inc(&registry.stats_ref().handshakes_failed);
            log_handshake_failure(remote, "tcp", e.as_ref());
            return;
        }
        Err(_) => {
            inc(&registry.stats_ref().handshakes_failed);
            tracing::info!(peer = %remote, transport = "tcp", "tunnel handshake timed out after {timeout:?}");
            return;
        }
    };
    let verdict = decide(&registry, &hello, remote, TransportKind::Tcp);
    if write_message(&mut tls, &verdict.answer).await.is_err() {
        return;
    }
    let Some((name, token)) = verdict.accepted else {
        let _ = tokio::time::timeout(Duration::from_secs(2), tls.shutdown()).await;
        return;
    };
    let (send_request, mut connection) =
        match tokio::time::timeout(timeout, tcp::client(tls, &limits)).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::info!(peer = %remote, "HTTP/2 set-up with the agent failed: {e}");
                return;
            }
            Err(_) => return,
        };
    drop(permit);
    let ping_pong = connection.ping_pong();
    let close = CancellationToken::new();
    let link = registry.register(
        name,
        token,
        remote,
        TransportKind::Tcp,
        Link::Tcp {
            send_request,
            close: close.clone(),
        },
    );
    let why = tokio::select! {
        r = &mut connection => match r {
            Ok(()) => "the agent closed the connection".to_string(),
            Err(e) => e.to_string(),
        },
        why = tcp::keep_alive(ping_pong, limits.keep_alive, limits.tcp_ping_timeout) => why,
        _ = close.cancelled() => "closed by the gateway".to_string(),
        _ = shutdown.cancelled() => "gateway shutting down".to_string(),
    };
    registry.remove(&link, &why);
}
