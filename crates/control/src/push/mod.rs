//! The push side of control. [`Hub`](hub::Hub) holds the current state (a `watch` channel
//! fed from the store after every local change and by a once-a-second version poll, which
//! picks up changes made by other control instances); [`upgrade`] authenticates a gateway's
//! or agent's token and hands the WebSocket to [`session`](session::session): snapshot (or
//! `current`) on connect, after every change a snapshot when what this peer sees changed
//! and `current` otherwise, heartbeats both ways, status reports into the store, and a close
//! with [`CLOSE_REVOKED`](crate::protocol::CLOSE_REVOKED) as soon as the peer is deleted.

mod hub;
mod session;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};

pub(crate) use hub::Hub;

use crate::api::{ApiError, App};
use crate::protocol::Resume;
use crate::tokens;

/// Largest message a peer may send (status reports are small).
const MAX_PEER_MESSAGE: usize = 256 << 10;

/// Whether a header holds `token` in its comma-separated list (case-insensitive).
fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

fn parse_resume(query: Option<&str>) -> Result<Option<Resume>, ApiError> {
    let mut since = None;
    let mut epoch = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "since" => {
                since = Some(v.parse::<u64>().map_err(|_| {
                    ApiError::invalid(
                        "since",
                        format!("since must be a version number, not \"{v}\""),
                    )
                })?)
            }
            "epoch" => epoch = Some(v.to_string()),
            _ => {}
        }
    }
    Ok(match (since, epoch) {
        (Some(version), Some(epoch)) => Some(Resume { epoch, version }),
        _ => None,
    })
}

/// `GET /api/v1/connect`: authenticates the peer's token and upgrades to the push socket.
pub(crate) async fn upgrade(
    app: &Arc<App>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let token = crate::api::bearer(&req).ok_or(ApiError::Unauthorized(
        "send the gateway's or agent's token as Authorization: Bearer gtw_... / agt_...",
    ))?;
    if !tokens::peer_prefix_ok(token) {
        return Err(ApiError::Unauthorized(
            "this endpoint takes a gateway (gtw_...) or agent (agt_...) token",
        ));
    }
    let peer = app
        .store
        .peer_by_token(&tokens::sha256_hex(token))
        .await?
        .ok_or(ApiError::Unauthorized("unknown or deleted token"))?;
    let resume = parse_resume(req.uri().query())?;
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true, true, true) = (
        key,
        version_ok,
        header_has(&req, header::CONNECTION, "upgrade"),
        header_has(&req, header::UPGRADE, "websocket"),
    ) else {
        return Err(ApiError::UpgradeRequired);
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let hub = app.hub.clone();
    let store = app.store.clone();
    let shutdown = app.shutdown.child_token();
    app.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default().max_message_size(Some(MAX_PEER_MESSAGE));
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    WsRole::Server,
                    Some(config),
                )
                .await;
                session::session(hub, store, ws, peer, resume, shutdown).await;
            }
            Err(e) => tracing::debug!(error = %e, "push: upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_points() {
        assert_eq!(
            parse_resume(Some("since=4&epoch=ab")).ok().flatten(),
            Some(Resume {
                epoch: "ab".into(),
                version: 4
            })
        );
        assert_eq!(parse_resume(Some("since=4")).ok().flatten(), None);
        assert!(parse_resume(Some("since=x&epoch=a")).is_err());
    }
}
