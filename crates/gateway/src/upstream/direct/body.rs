//! The response body read straight off a direct upstream connection, frame by frame as the
//! client takes it. When the body ends cleanly the connection goes back to its pool.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::chunked::{Chunked, Step};
use super::head::Framing;
use super::{Conn, DirectError, Home};

/// Room made for the first body read after the head.
const FIRST_READ: usize = 16 * 1024;
/// Room made per read at most: a read that fills its room doubles the next one's, up to
/// this, so a large body moves in large pieces (fewer reads here, fewer writes to the
/// client) while a small one never takes more than it needs.
const MAX_READ: usize = 512 * 1024;

enum Left {
    /// This many bytes to go (0: done).
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
    /// Cut short (by the upstream, or a framing error).
    Failed,
}

/// A response body being read from a direct upstream connection.
pub struct DirectBody {
    conn: Option<Conn>,
    left: Left,
    reusable: bool,
    home: Home,
    /// An error held back for one poll (see [`DirectBody::fail`]).
    failed: Option<DirectError>,
    /// Room to make for the next read.
    read_size: usize,
}

impl DirectBody {
    pub(super) fn new(conn: Conn, framing: Framing, reusable: bool, home: Home) -> Self {
        let left = match framing {
            Framing::Empty | Framing::Length(0) => Left::Done,
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Chunked::Size),
            Framing::UntilClose => Left::UntilClose,
        };
        let mut body = DirectBody {
            conn: Some(conn),
            left,
            reusable,
            home,
            failed: None,
            read_size: FIRST_READ,
        };
        if matches!(body.left, Left::Done) {
            body.release();
        }
        body
    }

    /// The body is complete: the connection goes back to the pool if it can carry another
    /// request (nothing unread is left on it).
    fn release(&mut self) {
        self.left = Left::Done;
        if let Some(mut conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            // An emptied buffer still holds its whole allocation; one grown for a large
            // body is not worth keeping on an idle connection.
            if self.read_size > FIRST_READ {
                conn.buf = bytes::BytesMut::new();
            }
            self.home.give_back(conn);
        }
    }

    /// Ends the body with `error`, but only on the next poll: hyper's server aborts the
    /// connection as soon as a body fails, dropping what it had not flushed yet, and the
    /// client should see the response head and the bytes that did arrive before the cut.
    fn fail(
        &mut self,
        error: DirectError,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DirectError>>> {
        self.conn = None;
        self.left = Left::Failed;
        self.failed = Some(error);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads more from the upstream into the connection's buffer; `Ok(false)` at the end
    /// of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, DirectError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        if conn.buf.capacity() - conn.buf.len() < self.read_size / 2 {
            conn.buf.reserve(self.read_size);
        }
        let room = conn.buf.capacity() - conn.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut conn.stream),
            cx,
            &mut conn.buf
        ))
        .map_err(DirectError::Io)?;
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n > 0))
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = DirectError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DirectError>>> {
        let this = self.get_mut();
        if let Some(error) = this.failed.take() {
            return Poll::Ready(Some(Err(error)));
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match &mut this.left {
                Left::Done => {
                    this.release();
                    return Poll::Ready(None);
                }
                Left::Length(left) if !buf.is_empty() => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Left::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Left::Chunked(state) => match state.step(buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::End) => {
                        this.release();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => return this.fail(e, cx),
                },
                Left::Failed => return Poll::Ready(None),
                Left::Length(_) | Left::UntilClose => {}
            }
            match ready!(this.poll_fill(cx)) {
                Ok(true) => {}
                Ok(false) => {
                    if matches!(this.left, Left::UntilClose) {
                        this.reusable = false;
                        this.release();
                        return Poll::Ready(None);
                    }
                    return this.fail(DirectError::ClosedMidBody, cx);
                }
                Err(e) => return this.fail(e, cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.left, Left::Done | Left::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Left::Done => SizeHint::with_exact(0),
            Left::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
