//! One HTTP/2 stream as a byte stream (`AsyncRead + AsyncWrite`): DATA frames carry the
//! bytes, END_STREAM is the half-close, RST_STREAM the abort. Writes wait for HTTP/2 send
//! capacity, reads release receive capacity only as the reader consumes bytes, so a peer
//! that never reads is held to the flow-control windows.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest DATA chunk taken from one write.
const MAX_CHUNK: usize = 64 * 1024;

enum RecvHalf {
    /// Gateway side: the agent's response headers have not arrived yet.
    Pending(h2::client::ResponseFuture),
    Ready(RecvStream),
    Done,
}

pub(crate) struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvHalf,
    buf: Bytes,
    eos_sent: bool,
}

impl H2Stream {
    /// The gateway's end: the response (and so the receive half) comes later.
    pub(crate) fn client(send: SendStream<Bytes>, response: h2::client::ResponseFuture) -> Self {
        H2Stream {
            send,
            recv: RecvHalf::Pending(response),
            buf: Bytes::new(),
            eos_sent: false,
        }
    }

    /// The agent's end, after it sent its response headers.
    pub(crate) fn server(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv: RecvHalf::Ready(recv),
            buf: Bytes::new(),
            eos_sent: false,
        }
    }

    pub(crate) fn abort(&mut self) {
        self.send.send_reset(Reason::CANCEL);
        self.recv = RecvHalf::Done;
    }
}

fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into());
    }
    match e.reason() {
        Some(Reason::NO_ERROR) | Some(Reason::CANCEL) | Some(Reason::STREAM_CLOSED) => {
            io::Error::new(io::ErrorKind::ConnectionReset, e)
        }
        _ => io::Error::other(e),
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.buf.is_empty() {
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                if let RecvHalf::Ready(recv) = &mut this.recv {
                    let _ = recv.flow_control().release_capacity(n);
                }
                return Poll::Ready(Ok(()));
            }
            match &mut this.recv {
                RecvHalf::Done => return Poll::Ready(Ok(())),
                RecvHalf::Pending(response) => {
                    let result = ready!(Pin::new(response).poll(cx));
                    match result {
                        Ok(resp) if resp.status() == http::StatusCode::OK => {
                            this.recv = RecvHalf::Ready(resp.into_body());
                        }
                        Ok(resp) => {
                            this.recv = RecvHalf::Done;
                            return Poll::Ready(Err(io::Error::other(format!(
                                "the agent answered the stream with status {}",
                                resp.status()
                            ))));
                        }
                        Err(e) => {
                            this.recv = RecvHalf::Done;
                            return Poll::Ready(Err(to_io(e)));
                        }
                    }
                }
                RecvHalf::Ready(recv) => match ready!(recv.poll_data(cx)) {
                    None => {
                        this.recv = RecvHalf::Done;
                        return Poll::Ready(Ok(()));
                    }
                    Some(Ok(data)) => this.buf = data,
                    Some(Err(e)) => {
                        this.recv = RecvHalf::Done;
                        return Poll::Ready(match e.reason() {
                            Some(Reason::NO_ERROR) => Ok(()),
                            _ => Err(to_io(e)),
                        });
                    }
                },
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.eos_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if let Poll::Ready(reset) = this.send.poll_reset(cx) {
            return Poll::Ready(Err(match reset {
                Ok(reason) => to_io(h2::Error::from(reason)),
                Err(e) => to_io(e),
            }));
        }
        // Only ask for capacity once there is something to send, so an idle stream does not
        // hold on to the connection's window.
        while this.send.capacity() == 0 {
            this.send.reserve_capacity(buf.len().min(MAX_CHUNK));
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
        let n = this.send.capacity().min(buf.len()).min(MAX_CHUNK);
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes buffered frames out on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.eos_sent {
            this.eos_sent = true;
            this.send.reserve_capacity(0);
            this.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
