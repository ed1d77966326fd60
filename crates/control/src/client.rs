//! The client side of the push socket, for managed gateways and agents:
//! [`connect_and_follow`] connects to control (`http://` or `https://`), hands every
//! [`Snapshot`] to a callback, sends heartbeats and status reports, and reconnects with
//! jittered exponential backoff, resuming from the last version it saw.
//!
//! ```no_run
//! # async fn example(shutdown: tokio_util::sync::CancellationToken) -> Result<(), kakuremichi_control::client::ClientError> {
//! use kakuremichi_control::client::{FollowOptions, connect_and_follow};
//! let token = kakuremichi_config::Secret::new("gtw_...");
//! let options = FollowOptions::new("https://control.example.com", token);
//! connect_and_follow(options, shutdown, |snapshot| {
//!     println!("version {}: {} routes", snapshot.version, snapshot.routes.len());
//! })
//! .await
//! # }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Uri, header};
use kakuremichi_config::Secret;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

pub use crate::protocol::{
    AgentEntry, CLOSE_REVOKED, CertificateStatus, ClientMessage, GatewayEntry, HEARTBEAT_INTERVAL,
    Resume, Role, RouteSpec, SILENCE_LIMIT, ServerMessage, Snapshot, StatusReport,
};

/// Largest message accepted from control (a snapshot with many routes).
const MAX_SNAPSHOT: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Where and how to follow control.
#[derive(Debug)]
pub struct FollowOptions {
    /// Control's base URL (`[control] url`): `http://host:port` or `https://host`, with an
    /// optional path prefix.
    pub url: String,
    /// The gateway's `gtw_...` or agent's `agt_...` token.
    pub token: Secret,
    /// The last snapshot applied (for example the one persisted in `state_dir`): when it is
    /// still current, control answers `current` and no snapshot is handed over.
    pub resume: Option<Resume>,
    /// Extra PEM trust roots for `https` (besides the system's).
    pub ca_roots: Option<PathBuf>,
    /// Status to report: sent on connect and whenever it changes.
    pub status: Option<watch::Receiver<StatusReport>>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl FollowOptions {
    pub fn new(url: impl Into<String>, token: Secret) -> Self {
        FollowOptions {
            url: url.into(),
            token,
            resume: None,
            ca_roots: None,
            status: None,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Resume from a snapshot applied earlier.
    pub fn resume_from(mut self, snapshot: &Snapshot) -> Self {
        self.resume = Some(snapshot.into());
        self
    }

    /// Report status from this channel.
    pub fn with_status(mut self, status: watch::Receiver<StatusReport>) -> Self {
        self.status = Some(status);
        self
    }
}

/// Why [`connect_and_follow`] gave up. Network problems are retried, never returned.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid control URL \"{url}\": {why}")]
    InvalidUrl { url: String, why: &'static str },
    #[error("control refused the token (wrong, or the gateway/agent was deleted)")]
    Unauthorized,
    #[error("reading ca_roots {}: {source}", path.display())]
    CaRoots {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
}

/// Where to connect, from the control URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: String,
    prefix: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why| ClientError::InvalidUrl {
            url: url.to_string(),
            why,
        };
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| bad("write a URL like https://control.example.com"))?;
        let tls = match uri.scheme_str() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Target {
            tls,
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            host,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }

    fn ws_url(&self, resume: Option<&Resume>) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        let query = resume
            .map(|r| format!("?since={}&epoch={}", r.version, r.epoch))
            .unwrap_or_default();
        format!(
            "{scheme}://{}{}{}{query}",
            self.authority,
            self.prefix,
            crate::protocol::CONNECT_PATH
        )
    }
}

fn tls_config(ca_roots: Option<&PathBuf>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_roots {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| ClientError::CaRoots {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        for cert in certs {
            roots.add(cert)?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Socket = WebSocketStream<Box<dyn Io>>;

/// How one connection ended.
enum Ended {
    Unauthorized,
    /// Worth retrying; the text says why (never contains the token).
    Retry(String),
}

async fn open(
    target: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    token: &Secret,
    resume: Option<&Resume>,
) -> Result<Socket, Ended> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| Ended::Retry("connect timed out".into()))?
    .map_err(|e| Ended::Retry(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|_| Ended::Retry(format!("invalid TLS name {}", target.host)))?;
            let tls = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| Ended::Retry("TLS handshake timed out".into()))?
            .map_err(|e| Ended::Retry(format!("TLS: {e}")))?;
            Box::new(tls)
        }
    };
    let mut request = target
        .ws_url(resume)
        .into_client_request()
        .map_err(|e| Ended::Retry(format!("request: {e}")))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| Ended::Unauthorized)?;
    request.headers_mut().insert(header::AUTHORIZATION, auth);
    let config = WebSocketConfig::default().max_message_size(Some(MAX_SNAPSHOT));
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await
    {
        Err(_) => Err(Ended::Retry("WebSocket handshake timed out".into())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) if resp.status() == 401 => Err(Ended::Unauthorized),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            Err(Ended::Retry(format!("control answered {}", resp.status())))
        }
        Ok(Err(e)) => Err(Ended::Retry(format!("handshake: {e}"))),
    }
}

async fn send(ws: &mut Socket, msg: &ClientMessage) -> Result<(), Ended> {
    let text = serde_json::to_string(msg).map_err(|e| Ended::Retry(e.to_string()))?;
    tokio::time::timeout(Duration::from_secs(10), ws.send(Message::text(text)))
        .await
        .map_err(|_| Ended::Retry("send timed out".into()))?
        .map_err(|e| Ended::Retry(format!("send: {e}")))
}

/// Waits for a new status; never returns once the sender is gone.
async fn next_status(rx: &mut Option<watch::Receiver<StatusReport>>) -> StatusReport {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return r.borrow_and_update().clone();
        }
        *rx = None;
    }
    std::future::pending().await
}

/// One connection: from the handshake until it ends.
async fn follow_once<F: FnMut(Snapshot)>(
    target: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    options: &mut FollowOptions,
    on_snapshot: &mut F,
    connected: &mut Option<Instant>,
) -> Ended {
    let mut ws = match open(target, tls, &options.token, options.resume.as_ref()).await {
        Ok(ws) => ws,
        Err(e) => return e,
    };
    *connected = Some(Instant::now());
    tracing::info!(url = %target.ws_url(None), "control client: connected");
    if let Some(rx) = &mut options.status {
        let report = rx.borrow_and_update().clone();
        if let Err(e) = send(&mut ws, &ClientMessage::Status(report)).await {
            return e;
        }
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > SILENCE_LIMIT {
                    return Ended::Retry("control went silent".into());
                }
                if let Err(e) = send(&mut ws, &ClientMessage::Heartbeat).await {
                    return e;
                }
            }
            report = next_status(&mut options.status) => {
                if let Err(e) = send(&mut ws, &ClientMessage::Status(report)).await {
                    return e;
                }
            }
            msg = ws.next() => {
                last_heard = Instant::now();
                let text = match msg {
                    None => return Ended::Retry("connection closed".into()),
                    Some(Err(e)) => return Ended::Retry(e.to_string()),
                    Some(Ok(Message::Close(frame))) => {
                        return match frame {
                            Some(f) if u16::from(f.code) == CLOSE_REVOKED => Ended::Unauthorized,
                            Some(f) => Ended::Retry(format!("closed by control: {}", f.reason)),
                            None => Ended::Retry("closed by control".into()),
                        };
                    }
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(_)) => continue,
                };
                match serde_json::from_str::<ServerMessage>(text.as_str()) {
                    Ok(ServerMessage::Snapshot(s)) => {
                        tracing::debug!(version = s.version, "control client: snapshot");
                        options.resume = Some((&s).into());
                        on_snapshot(s);
                    }
                    Ok(ServerMessage::Current { epoch, version }) => {
                        tracing::debug!(version, "control client: current, nothing to apply");
                        options.resume = Some(Resume { epoch, version });
                    }
                    Ok(ServerMessage::Heartbeat) => {}
                    Err(e) => tracing::warn!(error = %e, "control client: ignored an unreadable message"),
                }
            }
        }
    }
}

/// A duration between 75% and 125% of `d`.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() {
        f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
    } else {
        0.5
    };
    d.mul_f64(0.75 + r * 0.5)
}

/// Follows control until `shutdown` fires: every snapshot (on connect, after every change)
/// goes to `on_snapshot`; heartbeats and status reports go the other way; dropped
/// connections are retried with jittered exponential backoff and resume from the last
/// version. Returns `Err(Unauthorized)` when control refuses the token (it was deleted),
/// and errors in the options; never for network trouble.
pub async fn connect_and_follow<F>(
    mut options: FollowOptions,
    shutdown: CancellationToken,
    mut on_snapshot: F,
) -> Result<(), ClientError>
where
    F: FnMut(Snapshot) + Send,
{
    let target = Target::parse(&options.url)?;
    let tls = if target.tls {
        Some(tls_config(options.ca_roots.as_ref())?)
    } else {
        None
    };
    let min = options.min_backoff.max(Duration::from_millis(10));
    let max = options.max_backoff.max(min);
    let mut backoff = min;
    loop {
        let mut connected = None;
        let ended = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            e = follow_once(&target, tls.as_ref(), &mut options, &mut on_snapshot, &mut connected) => e,
        };
        match ended {
            Ended::Unauthorized => {
                tracing::error!(url = %options.url, "control client: the token was refused; this gateway or agent was deleted or its token is wrong");
                return Err(ClientError::Unauthorized);
            }
            Ended::Retry(why) => {
                if connected.is_some_and(|t| t.elapsed() >= STABLE_AFTER) {
                    backoff = min;
                }
                let wait = jitter(backoff);
                tracing::warn!(reason = %why, retry_in_ms = wait.as_millis() as u64, "control client: disconnected");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://control.example.com/base/").expect("url");
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "control.example.com".into(),
                port: 443,
                authority: "control.example.com".into(),
                prefix: "/base".into(),
            }
        );
        assert_eq!(
            t.ws_url(Some(&Resume {
                epoch: "e".into(),
                version: 3
            })),
            "wss://control.example.com/base/api/v1/connect?since=3&epoch=e"
        );
        let t = Target::parse("http://[::1]:3000").expect("url");
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 3000, false));
        assert_eq!(t.ws_url(None), "ws://[::1]:3000/api/v1/connect");
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(750) && j <= Duration::from_millis(1250));
        }
    }
}
