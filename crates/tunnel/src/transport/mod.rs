//! Transports: how an agent connection carries many byte streams. Two implementations,
//! chosen once per connection so the stream hot path is a plain `match`:
//!
//! - [`quic`]: QUIC (quinn); each proxied connection is one bidirectional QUIC stream.
//! - [`tcp`]: TLS over TCP with HTTP/2 framing (h2) for multiplexing and flow control,
//!   roles reversed: the gateway is the HTTP/2 client, the agent the server.
//!
//! A further transport (WireGuard) is one more variant of [`MuxStream`] and
//! [`Link`](crate::registry) plus its accept and connect code.

pub(crate) mod h2io;
pub(crate) mod quic;
pub(crate) mod tcp;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use h2io::H2Stream;

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Quic,
    Tcp,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Quic => "quic",
            TransportKind::Tcp => "tcp",
        })
    }
}

/// One bidirectional stream of a multiplexed connection.
pub(crate) enum MuxStream {
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    H2(Box<H2Stream>),
}

impl MuxStream {
    /// Abandons the stream: the peer sees a reset rather than a clean end.
    pub(crate) fn abort(&mut self) {
        match self {
            MuxStream::Quic { send, recv } => {
                let _ = send.reset(0u32.into());
                let _ = recv.stop(0u32.into());
            }
            MuxStream::H2(s) => s.abort(),
        }
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MuxStream::Quic { recv, .. } => Pin::new(recv).poll_read(cx, buf),
            MuxStream::H2(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MuxStream::Quic { send, .. } => AsyncWrite::poll_write(Pin::new(send), cx, buf),
            MuxStream::H2(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MuxStream::Quic { send, .. } => AsyncWrite::poll_flush(Pin::new(send), cx),
            MuxStream::H2(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MuxStream::Quic { send, .. } => AsyncWrite::poll_shutdown(Pin::new(send), cx),
            MuxStream::H2(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
