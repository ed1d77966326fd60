//! Accepts agents over QUIC: handshake, ALPN, the hello on the agent's one stream, then
//! the connection is registered until it closes. Agents may not open further streams.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::hello::decide;
use super::{CertificateRejected, log_handshake_failure};
use crate::frame_io::{read_message, write_message};
use crate::proto::{ALPN, Hello};
use crate::registry::{AgentRegistry, Link};
use crate::stats::inc;
use crate::transport::TransportKind;
use crate::transport::quic::{CLOSE_NORMAL, CLOSE_PROTOCOL, CLOSE_REFUSED};

type BoxError = Box<dyn Error + Send + Sync>;

pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    registry: &AgentRegistry,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        };
        tracker.spawn(serve(incoming, registry.clone(), shutdown.clone()));
    }
}

async fn handshake(
    incoming: quinn::Incoming,
    timeout: Duration,
) -> Result<(quinn::Connection, quinn::SendStream, Hello), BoxError> {
    let conn = incoming.accept()?.await.map_err(|e| -> BoxError {
        let rejected = matches!(&e, quinn::ConnectionError::ConnectionClosed(c)
            if (42..=49).any(|a| c.error_code == quinn::TransportErrorCode::crypto(a)));
        if rejected {
            Box::new(CertificateRejected(e.to_string()))
        } else {
            e.into()
        }
    })?;
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() != Some(ALPN) {
        conn.close(CLOSE_PROTOCOL.into(), b"expected ALPN kakuremichi/1");
        return Err("the peer does not speak kakuremichi/1 (ALPN)".into());
    }
    let (send, mut recv) = conn.accept_bi().await?;
    let hello = read_message::<Hello, _>(&mut recv, timeout).await?;
    Ok((conn, send, hello))
}

async fn serve(incoming: quinn::Incoming, registry: AgentRegistry, shutdown: CancellationToken) {
    let remote: SocketAddr = incoming.remote_address();
    let timeout = registry.limits().handshake_timeout;
    let result = tokio::select! {
        r = tokio::time::timeout(timeout, handshake(incoming, timeout)) => r,
        _ = shutdown.cancelled() => return,
    };
    let (conn, mut send, hello) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            inc(&registry.stats_ref().handshakes_failed);
            log_handshake_failure(remote, "quic", e.as_ref());
            return;
        }
        Err(_) => {
            inc(&registry.stats_ref().handshakes_failed);
            tracing::info!(peer = %remote, transport = "quic", "tunnel handshake timed out after {timeout:?}");
            return;
        }
    };
    let verdict = decide(&registry, &hello, remote, TransportKind::Quic);
    let _ = write_message(&mut send, &verdict.answer).await;
    let _ = send.finish();
    let Some((name, token)) = verdict.accepted else {
        // Give the answer time to arrive, then close with the reason as well.
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
        conn.close(CLOSE_REFUSED.into(), b"agent refused");
        return;
    };
    let link = registry.register(
        name,
        token,
        remote,
        TransportKind::Quic,
        Link::Quic(conn.clone()),
    );
    let why = tokio::select! {
        r = conn.accept_bi() => match r {
            Ok(_) => {
                conn.close(CLOSE_PROTOCOL.into(), b"agents may not open streams");
                "the agent opened a stream, which it may not".to_string()
            }
            Err(e) => e.to_string(),
        },
        _ = shutdown.cancelled() => {
            conn.close(CLOSE_NORMAL.into(), b"gateway shutting down");
            "gateway shutting down".to_string()
        }
        () = link.watch() => {
            conn.close(CLOSE_NORMAL.into(), b"no answer");
            "the agent stopped answering (nothing came back for what was sent to it)".to_string()
        }
    };
    registry.remove(&link, &why);
}
