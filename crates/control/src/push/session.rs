//! One gateway's or agent's push socket, from the first snapshot until it closes, goes
//! silent, is deleted, or control shuts down.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use super::hub::Hub;
use crate::clock::now_ms;
use crate::protocol::{
    AgentEntry, CLOSE_REVOKED, ClientMessage, GatewayEntry, HEARTBEAT_INTERVAL, Resume, Role,
    RouteSpec, SILENCE_LIMIT, ServerMessage, Snapshot, StatusReport,
};
use crate::store::{Peer, Store};

/// How long a send may take before the peer is considered stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `last_seen` is written for plain heartbeats.
const SEEN_WRITE_INTERVAL: i64 = 2_000;

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Why a session ended, for the log.
enum End {
    Revoked,
    Shutdown,
    Closed,
    Silent,
    Failed(String),
}

fn valid_pin(pin: &str) -> bool {
    pin.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

async fn send(ws: &mut Socket, msg: &ServerMessage) -> Result<(), String> {
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(text))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("send timed out".into()),
    }
}

async fn close(ws: &mut Socket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

/// What this peer's snapshot holds apart from the version, to skip pushes that change
/// nothing for it (an agent does not care about routes).
fn view_of(s: &Snapshot) -> (Vec<RouteSpec>, Vec<AgentEntry>, Vec<GatewayEntry>, String) {
    (
        s.routes.clone(),
        s.agents.clone(),
        s.gateways.clone(),
        s.name.clone(),
    )
}

/// Serves one gateway's or agent's socket until it closes, goes silent, is deleted, or
/// control shuts down.
pub(super) async fn session(
    hub: Arc<Hub>,
    store: Arc<dyn Store>,
    mut ws: Socket,
    peer: Peer,
    resume: Option<Resume>,
    shutdown: CancellationToken,
) {
    let id = peer.id.clone();
    hub.session_started(&id);
    let mut last_write = now_ms();
    if let Err(e) = store.record_seen(&id, last_write, None).await {
        tracing::warn!(error = %e, "push: recording the connection failed");
    }
    tracing::info!(role = peer.role.as_str(), name = %peer.name, "push: connected");
    let end = run_session(
        &hub,
        &store,
        &mut ws,
        &peer,
        resume,
        &shutdown,
        &mut last_write,
    )
    .await;
    match &end {
        End::Revoked => close(&mut ws, CloseCode::from(CLOSE_REVOKED), "token revoked").await,
        End::Shutdown => close(&mut ws, CloseCode::Away, "control is shutting down").await,
        End::Silent => close(&mut ws, CloseCode::Policy, "no heartbeat").await,
        End::Closed | End::Failed(_) => {}
    }
    let reason = match &end {
        End::Revoked => "deleted".to_string(),
        End::Shutdown => "shutdown".into(),
        End::Closed => "closed by peer".into(),
        End::Silent => "no heartbeat".into(),
        End::Failed(e) => e.clone(),
    };
    tracing::info!(role = peer.role.as_str(), name = %peer.name, reason = %reason, "push: disconnected");
    if hub.session_ended(&id)
        && !matches!(end, End::Revoked)
        && let Err(e) = store.record_disconnect(&id, now_ms()).await
    {
        tracing::warn!(error = %e, "push: recording the disconnect failed");
    }
}

async fn run_session(
    hub: &Arc<Hub>,
    store: &Arc<dyn Store>,
    ws: &mut Socket,
    peer: &Peer,
    resume: Option<Resume>,
    shutdown: &CancellationToken,
    last_write: &mut i64,
) -> End {
    let mut rx = hub.subscribe();
    let mut state = rx.borrow_and_update().clone();
    if !state.peers.contains_key(&peer.id) {
        // Created an instant ago by another instance: catch up once.
        hub.refresh_or_log().await;
        state = rx.borrow_and_update().clone();
    }
    let Some(first) = state.snapshot_for(&peer.id) else {
        return End::Revoked;
    };
    let mut view = view_of(&first);
    let first_msg = match resume {
        Some(r) if r.epoch == first.epoch && r.version == first.version => ServerMessage::Current {
            epoch: first.epoch,
            version: first.version,
        },
        _ => ServerMessage::Snapshot(first),
    };
    if let Err(e) = send(ws, &first_msg).await {
        return End::Failed(e);
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut last_heard = now_ms();
    let silence = i64::try_from(SILENCE_LIMIT.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            changed = rx.changed() => {
                if changed.is_err() {
                    return End::Shutdown;
                }
                let state = rx.borrow_and_update().clone();
                let Some(snapshot) = state.snapshot_for(&peer.id) else {
                    return End::Revoked;
                };
                let new_view = view_of(&snapshot);
                let msg = if new_view != view {
                    view = new_view;
                    ServerMessage::Snapshot(snapshot)
                } else {
                    // Nothing this peer sees changed: only its resume point moves on.
                    ServerMessage::Current {
                        epoch: snapshot.epoch,
                        version: snapshot.version,
                    }
                };
                if let Err(e) = send(ws, &msg).await {
                    return End::Failed(e);
                }
            }
            _ = heartbeat.tick() => {
                if now_ms() - last_heard > silence {
                    return End::Silent;
                }
                if let Err(e) = send(ws, &ServerMessage::Heartbeat).await {
                    return End::Failed(e);
                }
            }
            msg = ws.next() => {
                let msg = match msg {
                    None | Some(Ok(Message::Close(_))) => return End::Closed,
                    Some(Err(e)) => return End::Failed(e.to_string()),
                    Some(Ok(m)) => m,
                };
                let now = now_ms();
                last_heard = now;
                let Message::Text(text) = msg else {
                    continue;
                };
                match serde_json::from_str::<ClientMessage>(text.as_str()) {
                    Ok(ClientMessage::Heartbeat) => {
                        if now - *last_write >= SEEN_WRITE_INTERVAL {
                            *last_write = now;
                            if let Err(e) = store.record_seen(&peer.id, now, None).await {
                                tracing::warn!(error = %e, "push: recording a heartbeat failed");
                            }
                        }
                    }
                    Ok(ClientMessage::Status(report)) => {
                        *last_write = now;
                        apply_status(hub, store, peer, report, now).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, name = %peer.name, "push: ignored an unreadable message");
                    }
                }
            }
        }
    }
}

async fn apply_status(
    hub: &Arc<Hub>,
    store: &Arc<dyn Store>,
    peer: &Peer,
    mut report: StatusReport,
    now: i64,
) {
    if let Some(pin) = report.pin.take() {
        if peer.role == Role::Gateway && valid_pin(&pin) {
            match store.set_pin(&peer.id, &pin).await {
                Ok(Some(_)) => hub.refresh_or_log().await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "push: storing a pin failed"),
            }
            report.pin = Some(pin);
        } else {
            tracing::warn!(name = %peer.name, "push: ignored a malformed pin (want sha256: and 64 hex digits)");
        }
    }
    let json = serde_json::to_string(&report).ok();
    if let Err(e) = store.record_seen(&peer.id, now, json).await {
        tracing::warn!(error = %e, "push: recording a status report failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins() {
        assert!(valid_pin(&format!("sha256:{}", "0a".repeat(32))));
        assert!(!valid_pin(&format!("sha256:{}", "0A".repeat(32))));
        assert!(!valid_pin("sha256:00"));
    }
}
