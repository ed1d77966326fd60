//! The gateway's registry of connected agents, grouped by name, and the one operation the
//! request path needs: [`AgentRegistry::open`] a stream to an upstream through an agent of a
//! group, spreading streams over the group and trying the next agent when one fails.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::auth::{AgentAuth, TokenHash};
use crate::frame_io::{FrameError, read_message};
use crate::limits::Limits;
use crate::proto::{Message, OpenStatus, ProtoError, RefuseReason, StreamHeader, Upstream};
use crate::stats::{StatsSnapshot, TunnelStats, dec, inc};
use crate::stream::{StreamSlot, TunnelStream};
use crate::transport::{MuxStream, TransportKind, quic, tcp};

/// Why [`AgentRegistry::open`] gave no stream.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No agent of the group is connected: answer 503.
    #[error("no agent named {group:?} is connected")]
    NoAgent { group: String },
    /// The agent would not or could not connect to the upstream: answer 502 (504 for
    /// [`RefuseReason::DialTimeout`]).
    #[error("agent {group:?} refused {upstream}: {reason} ({message})")]
    Refused {
        group: String,
        upstream: String,
        reason: RefuseReason,
        message: String,
    },
    /// No agent of the group answered: the stream could not be opened, the connection broke,
    /// or the answer did not come within the open timeout. Answer 502.
    #[error("no stream to an agent named {group:?}: {source}")]
    Stream {
        group: String,
        #[source]
        source: io::Error,
    },
    /// The upstream is not a valid `host:port` (a configuration error): answer 502.
    #[error("invalid tunnel upstream {upstream:?}: {source}")]
    InvalidUpstream {
        upstream: String,
        #[source]
        source: ProtoError,
    },
}

impl OpenError {
    /// The status a gateway answers with: 503 without an agent, 504 when the agent timed out
    /// connecting to the upstream, 502 otherwise.
    pub fn http_status(&self) -> u16 {
        match self {
            OpenError::NoAgent { .. } => 503,
            OpenError::Refused {
                reason: RefuseReason::DialTimeout,
                ..
            } => 504,
            _ => 502,
        }
    }
}

/// Connections and streams of one agent name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStats {
    pub name: String,
    /// Agent connections of this name up now.
    pub connected: usize,
    /// Streams open now over them.
    pub open_streams: usize,
    /// Connections of this name accepted since start; minus `connected`, the reconnects.
    pub connections_total: u64,
}

/// Shortest wait for a sign of life from an agent before a stream is given up on it.
const MIN_GRACE: Duration = Duration::from_millis(500);

/// The gateway's end of one agent connection.
pub(crate) enum Link {
    Quic(quinn::Connection),
    Tcp {
        send_request: h2::client::SendRequest<Bytes>,
        close: CancellationToken,
    },
}

impl Link {
    async fn open_stream(&self) -> io::Result<MuxStream> {
        match self {
            Link::Quic(conn) => {
                let (send, recv) = conn.open_bi().await.map_err(io::Error::from)?;
                Ok(MuxStream::Quic { send, recv })
            }
            Link::Tcp { send_request, .. } => tcp::open_stream(send_request)
                .await
                .map_err(io::Error::other),
        }
    }

    /// Completes when the agent seems gone: for QUIC, when nothing at all arrived from it
    /// for a grace period after we sent it something (a live peer acknowledges within about
    /// one round trip). Never completes for TCP, whose dead peers reset the connection or
    /// miss pings. Poll it first right after sending.
    async fn unresponsive(&self) {
        match self {
            Link::Quic(conn) => {
                let before = conn.stats().udp_rx.datagrams;
                let grace = (conn.rtt() * 3 + Duration::from_millis(100)).max(MIN_GRACE);
                tokio::time::sleep(grace).await;
                if conn.stats().udp_rx.datagrams != before {
                    std::future::pending::<()>().await;
                }
            }
            Link::Tcp { .. } => std::future::pending().await,
        }
    }

    pub(crate) fn close(&self, reason: &str) {
        match self {
            Link::Quic(conn) => conn.close(quic::CLOSE_NORMAL.into(), reason.as_bytes()),
            Link::Tcp { close, .. } => close.cancel(),
        }
    }
}

/// One authenticated agent connection.
pub(crate) struct AgentLink {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) remote: SocketAddr,
    pub(crate) kind: TransportKind,
    token: TokenHash,
    link: Link,
    pub(crate) open_streams: AtomicUsize,
    /// QUIC: the earliest send the agent has not shown a sign of life for yet, with the
    /// datagrams received from it by then.
    awaiting: Mutex<Option<(Instant, u64)>>,
}

/// How often [`AgentLink::watch`] looks at a QUIC connection.
const WATCH_EVERY: Duration = Duration::from_millis(100);

impl AgentLink {
    /// Notes that bytes were just sent to the agent over QUIC (a no-op for TCP).
    pub(crate) fn sent(&self) {
        let Link::Quic(conn) = &self.link else {
            return;
        };
        let mut awaiting = self.awaiting.lock().unwrap_or_else(|e| e.into_inner());
        let rx = conn.stats().udp_rx.datagrams;
        // Something arrived since the earlier send: that one is answered, this one waits.
        if awaiting.is_none_or(|(_, rx_then)| rx_then != rx) {
            *awaiting = Some((Instant::now(), rx));
        }
    }

    /// Completes when the agent seems gone: bytes were sent to it over QUIC and nothing at
    /// all came back within a grace period (a live agent acknowledges within about one round
    /// trip, however busy its upstream is). So a killed agent is noticed within a second
    /// rather than at the idle timeout, and requests on pooled connections through it fail
    /// over at once. Never completes for TCP, whose dead peers reset the connection or miss
    /// pings.
    pub(crate) async fn watch(&self) {
        let Link::Quic(conn) = &self.link else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let mut awaiting = self.awaiting.lock().unwrap_or_else(|e| e.into_inner());
            let Some((since, rx_then)) = *awaiting else {
                continue;
            };
            // Every send recorded since `rx_then` came before this datagram arrived.
            if conn.stats().udp_rx.datagrams != rx_then {
                *awaiting = None;
                continue;
            }
            let grace = (conn.rtt() * 3 + Duration::from_millis(100)).max(MIN_GRACE);
            if since.elapsed() > grace {
                return;
            }
        }
    }
}

#[derive(Default)]
struct Group {
    links: Vec<Arc<AgentLink>>,
    connections_total: u64,
}

struct Inner {
    groups: RwLock<HashMap<String, Group>>,
    auth: ArcSwap<AgentAuth>,
    stats: Arc<TunnelStats>,
    limits: Limits,
    next_id: AtomicU64,
    turn: AtomicUsize,
}

/// The connected agents. Cheap to clone; shared by the tunnel listener and the request path.
#[derive(Clone)]
pub struct AgentRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRegistry")
            .field("groups", &self.groups())
            .finish()
    }
}

impl AgentRegistry {
    pub(crate) fn new(auth: AgentAuth, limits: Limits) -> AgentRegistry {
        AgentRegistry {
            inner: Arc::new(Inner {
                groups: RwLock::new(HashMap::new()),
                auth: ArcSwap::from_pointee(auth),
                stats: Arc::new(TunnelStats::default()),
                limits,
                next_id: AtomicU64::new(1),
                turn: AtomicUsize::new(0),
            }),
        }
    }

    /// Opens a stream to `upstream` (`host:port`) through an agent named `group`, telling it
    /// the real `client` address. Returns once the agent has connected to the upstream, so
    /// no request byte has been sent when this fails. Tries every connected agent of the
    /// group (fewest open streams first) before giving up.
    pub async fn open(
        &self,
        group: &str,
        upstream: &str,
        client: SocketAddr,
    ) -> Result<TunnelStream, OpenError> {
        let parsed = Upstream::parse(upstream).map_err(|source| OpenError::InvalidUpstream {
            upstream: upstream.to_string(),
            source,
        })?;
        let header = StreamHeader {
            upstream: parsed,
            client,
        }
        .encode();
        self.open_with(group, upstream, &header, false).await
    }

    /// Opens a stream whose first bytes are `raw_header` as given, unchecked, then (with
    /// `then_close`) ends the gateway's side: for tests of the agent's handling of
    /// truncated, oversized or garbage headers.
    #[cfg(feature = "testing")]
    pub async fn open_raw(
        &self,
        group: &str,
        raw_header: &[u8],
        then_close: bool,
    ) -> Result<TunnelStream, OpenError> {
        self.open_with(group, "(raw)", raw_header, then_close).await
    }

    async fn open_with(
        &self,
        group: &str,
        upstream: &str,
        header: &[u8],
        then_close: bool,
    ) -> Result<TunnelStream, OpenError> {
        let mut tried: Vec<u64> = Vec::new();
        let mut last_error = None;
        while let Some(link) = self.pick(group, &tried) {
            tried.push(link.id);
            match self.open_on(&link, header, then_close).await {
                Ok(stream) => {
                    inc(&self.inner.stats.streams_opened_total);
                    return Ok(stream);
                }
                Err(error) => {
                    inc(&self.inner.stats.stream_open_failures);
                    let error = match error {
                        Attempt::Refused(reason, message) => {
                            tracing::info!(
                                agent = %link.name, agent_addr = %link.remote, %upstream,
                                "agent refused the stream: {reason} ({message})"
                            );
                            OpenError::Refused {
                                group: group.to_string(),
                                upstream: upstream.to_string(),
                                reason,
                                message,
                            }
                        }
                        Attempt::Failed(source) => {
                            tracing::info!(
                                agent = %link.name, agent_addr = %link.remote, %upstream,
                                "cannot open a stream through the agent: {source}"
                            );
                            OpenError::Stream {
                                group: group.to_string(),
                                source,
                            }
                        }
                    };
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| OpenError::NoAgent {
            group: group.to_string(),
        }))
    }

    /// The agent of `group` with the fewest open streams among those not tried yet;
    /// ties go round robin.
    fn pick(&self, group: &str, tried: &[u64]) -> Option<Arc<AgentLink>> {
        let groups = self.inner.groups.read().unwrap_or_else(|e| e.into_inner());
        let links = &groups.get(group)?.links;
        if links.is_empty() {
            return None;
        }
        let start = self.inner.turn.fetch_add(1, Ordering::Relaxed) % links.len();
        let mut best: Option<&Arc<AgentLink>> = None;
        for i in 0..links.len() {
            let link = &links[(start + i) % links.len()];
            if tried.contains(&link.id) {
                continue;
            }
            let load = link.open_streams.load(Ordering::Relaxed);
            if best.is_none_or(|b| load < b.open_streams.load(Ordering::Relaxed)) {
                best = Some(link);
            }
        }
        best.cloned()
    }

    async fn open_on(
        &self,
        link: &Arc<AgentLink>,
        header: &[u8],
        then_close: bool,
    ) -> Result<TunnelStream, Attempt> {
        // Counted from the start, so concurrent opens spread over the group.
        let slot = StreamSlot::take(link.clone(), self.inner.stats.clone());
        let timeout = self.inner.limits.open_timeout;
        match tokio::time::timeout(timeout, handshake(&link.link, header, then_close, timeout))
            .await
        {
            Ok(Ok(mux)) => Ok(TunnelStream::new(mux, slot)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Attempt::Failed(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the agent did not answer within {timeout:?}"),
            ))),
        }
    }

    /// Connected agents named `group`.
    pub fn connected(&self, group: &str) -> usize {
        let groups = self.inner.groups.read().unwrap_or_else(|e| e.into_inner());
        groups.get(group).map_or(0, |g| g.links.len())
    }

    /// Every agent name seen since start, with its connections and streams.
    pub fn groups(&self) -> Vec<GroupStats> {
        let groups = self.inner.groups.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<GroupStats> = groups
            .iter()
            .map(|(name, g)| GroupStats {
                name: name.clone(),
                connected: g.links.len(),
                open_streams: g
                    .links
                    .iter()
                    .map(|l| l.open_streams.load(Ordering::Relaxed))
                    .sum(),
                connections_total: g.connections_total,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The tunnel's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Swaps in a new list of allowed agents (on reload). Connected agents whose name and
    /// token are no longer allowed are disconnected.
    pub fn replace_auth(&self, auth: AgentAuth) {
        self.inner.auth.store(Arc::new(auth));
        let auth = self.inner.auth.load();
        let groups = self.inner.groups.read().unwrap_or_else(|e| e.into_inner());
        for link in groups.values().flat_map(|g| g.links.iter()) {
            if !auth.still_allows(&link.name, &link.token) {
                tracing::warn!(
                    agent = %link.name, agent_addr = %link.remote,
                    "disconnecting agent: its token is no longer allowed"
                );
                link.link.close("agent no longer allowed");
            }
        }
    }

    pub(crate) fn auth(&self) -> Arc<AgentAuth> {
        self.inner.auth.load_full()
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn stats_ref(&self) -> &TunnelStats {
        &self.inner.stats
    }

    /// Adds an authenticated connection.
    pub(crate) fn register(
        &self,
        name: String,
        token: TokenHash,
        remote: SocketAddr,
        kind: TransportKind,
        link: Link,
    ) -> Arc<AgentLink> {
        let link = Arc::new(AgentLink {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            name: name.clone(),
            remote,
            kind,
            token,
            link,
            open_streams: AtomicUsize::new(0),
            awaiting: Mutex::new(None),
        });
        let mut groups = self.inner.groups.write().unwrap_or_else(|e| e.into_inner());
        let group = groups.entry(name).or_default();
        group.links.push(link.clone());
        group.connections_total += 1;
        inc(&self.inner.stats.agents_connected);
        inc(&self.inner.stats.agent_connections_total);
        tracing::info!(
            agent = %link.name, agent_addr = %remote, transport = %kind,
            connected = group.links.len(), "agent connected"
        );
        link
    }

    /// Removes a connection that ended.
    pub(crate) fn remove(&self, link: &AgentLink, why: &str) {
        let mut groups = self.inner.groups.write().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = groups.get_mut(&link.name) {
            let before = group.links.len();
            group.links.retain(|l| l.id != link.id);
            if group.links.len() < before {
                dec(&self.inner.stats.agents_connected);
                tracing::info!(
                    agent = %link.name, agent_addr = %link.remote, transport = %link.kind,
                    connected = group.links.len(), "agent disconnected: {why}"
                );
            }
        }
    }

    /// Closes every agent connection (shutdown).
    pub(crate) fn close_all(&self, reason: &str) {
        let groups = self.inner.groups.read().unwrap_or_else(|e| e.into_inner());
        for link in groups.values().flat_map(|g| g.links.iter()) {
            link.link.close(reason);
        }
    }
}

enum Attempt {
    Refused(RefuseReason, String),
    Failed(io::Error),
}

/// Opens a stream, sends the header, and waits for the agent's status.
async fn handshake(
    link: &Link,
    header: &[u8],
    then_close: bool,
    timeout: Duration,
) -> Result<MuxStream, Attempt> {
    let mut stream = link.open_stream().await.map_err(Attempt::Failed)?;
    let sent = async {
        stream.write_all(header).await?;
        if then_close {
            stream.shutdown().await?;
        }
        stream.flush().await
    };
    sent.await.map_err(Attempt::Failed)?;
    let status = tokio::select! {
        status = read_message::<OpenStatus, _>(&mut stream, timeout) => status,
        () = link.unresponsive() => {
            stream.abort();
            link.close("the agent stopped responding");
            return Err(Attempt::Failed(io::Error::new(
                io::ErrorKind::TimedOut,
                "the agent stopped responding; its connection is closed",
            )));
        }
    };
    match status {
        Ok(OpenStatus::Connected) => Ok(stream),
        Ok(OpenStatus::Refused { reason, message }) => {
            stream.abort();
            Err(Attempt::Refused(reason, message))
        }
        Err(FrameError::Io(e)) => Err(Attempt::Failed(e)),
        Err(e) => {
            stream.abort();
            Err(Attempt::Failed(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad answer from the agent: {e}"),
            )))
        }
    }
}
