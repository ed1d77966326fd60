//! Keeps one connection to one gateway up: connect (QUIC, TCP, or QUIC then TCP), serve
//! the streams the gateway opens, and after any failure wait a jittered, capped, growing
//! delay before the next attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kakuremichi_tunnel::{AgentSession, ConnectError, SessionEnded, TransportKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;
use crate::backoff::Backoff;
use crate::serve::serve_stream;
use crate::settings::TransportMode;
use crate::stats::{Gauge, inc};

/// After QUIC timed out and TCP worked, how long `auto` goes straight to TCP.
const PREFER_TCP_FOR: Duration = Duration::from_secs(300);

pub(crate) async fn maintain(gateway: Arc<str>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(shared.settings.backoff.clone());
    let mut prefer_tcp_until: Option<Instant> = None;
    let mut connected_before = false;
    loop {
        let attempt = tokio::select! {
            r = connect(&gateway, &shared, &mut prefer_tcp_until) => r,
            _ = shutdown.cancelled() => return,
        };
        let counters = &shared.stats.0;
        let delay = match attempt {
            Ok(session) => {
                inc(&counters.connections_total);
                if connected_before {
                    inc(&counters.reconnects);
                }
                connected_before = true;
                tracing::info!(
                    %gateway, transport = %session.transport(), agent = %session.agent_name(),
                    "connected to the gateway"
                );
                let started = Instant::now();
                let Some(ended) = serve_session(session, &gateway, &shared, &shutdown).await else {
                    return;
                };
                tracing::warn!(%gateway, "{ended}; reconnecting");
                if started.elapsed() >= shared.settings.backoff.healthy_after {
                    backoff.reset();
                }
                backoff.next(false)
            }
            Err(e) if e.is_authentication_failure() => {
                inc(&counters.auth_failures);
                let delay = backoff.next(true);
                tracing::error!(%gateway, "{e}; retrying in {delay:.1?}");
                delay
            }
            Err(e) => {
                inc(&counters.connect_failures);
                let delay = backoff.next(false);
                tracing::warn!(%gateway, "cannot connect: {e}; retrying in {delay:.1?}");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn connect(
    gateway: &str,
    shared: &Shared,
    prefer_tcp_until: &mut Option<Instant>,
) -> Result<AgentSession, ConnectError> {
    let handshake = shared.settings.limits.handshake_timeout;
    let connector = &shared.connector;
    let hello = &shared.hello;
    match shared.settings.transport {
        TransportMode::Quic => {
            connector
                .connect(gateway, TransportKind::Quic, hello, handshake)
                .await
        }
        TransportMode::Tcp => {
            connector
                .connect(gateway, TransportKind::Tcp, hello, handshake)
                .await
        }
        TransportMode::Auto => {
            let mut quic_timed_out = false;
            if prefer_tcp_until.is_none_or(|until| Instant::now() >= until) {
                let quic_deadline = shared.settings.quic_fallback_after;
                match connector
                    .connect(gateway, TransportKind::Quic, hello, quic_deadline)
                    .await
                {
                    Ok(session) => {
                        *prefer_tcp_until = None;
                        return Ok(session);
                    }
                    Err(e) if e.is_authentication_failure() => return Err(e),
                    Err(e) => {
                        tracing::info!(%gateway, "QUIC did not connect ({e}); trying TCP");
                        quic_timed_out = e.is_timeout();
                    }
                }
            }
            let session = connector
                .connect(gateway, TransportKind::Tcp, hello, handshake)
                .await?;
            // Only when TCP works is a QUIC timeout a sign that UDP is blocked.
            if quic_timed_out {
                *prefer_tcp_until = Some(Instant::now() + PREFER_TCP_FOR);
            }
            Ok(session)
        }
    }
}

/// Serves streams until the session ends (`Some(why)`) or the agent shuts down (`None`).
async fn serve_session(
    mut session: AgentSession,
    gateway: &Arc<str>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Option<SessionEnded> {
    let _connected = Gauge::hold(&shared.stats.0.gateways_connected);
    let streams = TaskTracker::new();
    let stop = shutdown.child_token();
    let ended = loop {
        tokio::select! {
            next = session.accept() => match next {
                Ok(stream) => {
                    streams.spawn(serve_stream(stream, shared.clone(), gateway.clone(), stop.clone()));
                }
                Err(ended) => break Some(ended),
            },
            _ = shutdown.cancelled() => break None,
        }
    };
    if ended.is_none() {
        stop.cancel();
        session.close().await;
    }
    streams.close();
    ended
}
