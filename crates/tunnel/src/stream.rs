//! [`TunnelStream`]: the gateway's end of one proxied connection, returned by
//! [`AgentRegistry::open`](crate::AgentRegistry::open) once the agent has connected to the
//! upstream. It counts bytes and open streams, and resets the stream if dropped before a
//! clean shutdown.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::registry::AgentLink;
use crate::stats::{TunnelStats, dec, inc};
use crate::transport::{MuxStream, TransportKind};

/// One stream counted as open on an agent connection, from the first attempt to open it
/// until the [`TunnelStream`] holding it is dropped.
pub(crate) struct StreamSlot {
    link: Arc<AgentLink>,
    stats: Arc<TunnelStats>,
}

impl StreamSlot {
    pub(crate) fn take(link: Arc<AgentLink>, stats: Arc<TunnelStats>) -> StreamSlot {
        link.open_streams.fetch_add(1, Ordering::Relaxed);
        inc(&stats.streams_open);
        StreamSlot { link, stats }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.link.open_streams.fetch_sub(1, Ordering::Relaxed);
        dec(&self.stats.streams_open);
    }
}

/// A byte stream to an upstream, through an agent.
pub struct TunnelStream {
    inner: MuxStream,
    slot: StreamSlot,
    shut_down: bool,
}

impl TunnelStream {
    pub(crate) fn new(inner: MuxStream, slot: StreamSlot) -> Self {
        TunnelStream {
            inner,
            slot,
            shut_down: false,
        }
    }

    /// The name (group) of the agent carrying the stream.
    pub fn agent_name(&self) -> &str {
        &self.slot.link.name
    }

    /// Identifies the agent connection carrying the stream (unique per gateway run).
    pub fn agent_connection_id(&self) -> u64 {
        self.slot.link.id
    }

    /// The agent's address as the gateway sees it.
    pub fn agent_addr(&self) -> SocketAddr {
        self.slot.link.remote
    }

    pub fn transport(&self) -> TransportKind {
        self.slot.link.kind
    }
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("agent", &self.slot.link.name)
            .field("agent_addr", &self.slot.link.remote)
            .field("transport", &self.slot.link.kind)
            .finish()
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        if !self.shut_down {
            self.inner.abort();
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.slot
                .stats
                .bytes_from_agents
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.slot
                .stats
                .bytes_to_agents
                .fetch_add(n as u64, Ordering::Relaxed);
            this.slot.link.sent();
        }
        result
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
