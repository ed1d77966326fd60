//! The gateway's own HTTP/1.1 server loop for the common request: a complete, body-less
//! HTTP/1.1 request head (see [`request`]). It reads heads, calls the handler and writes
//! responses itself, head and a small body in one write. At the first request it does not
//! take (a body, an upgrade, HTTP/1.0, `Expect`, a head that is incomplete in one read,
//! unusual or invalid) or when the header deadline passes, it hands the connection, with
//! every byte it read, to hyper, which serves the rest of it. So each less common
//! behaviour (request bodies, 100-continue, upgrades, the gateway's own 400/408/414/431
//! answers, pipelined partial heads) has one implementation, hyper's with `conn.rs`.
//!
//! Like hyper's server it cancels a request whose client closes the connection before the
//! response, ends an idle connection on graceful shutdown and closes after the response
//! in flight, and aborts the connection when a response body fails midway.

mod request;
mod response;
mod rewind;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::ResponseBody;
use crate::conn::ConnInfo;
use crate::handler::{self, Shared};
use crate::lazy_deadline::LazyDeadline;
use crate::stop_signal::StopSignal;
use response::Framing;
pub use rewind::Rewind;

/// Bytes asked for per read of request heads.
const READ_SIZE: usize = 8 * 1024;
/// Body chunks up to this size are copied after the head (or the chunk size line) to go
/// out in one write; larger ones go out with what waits in one gathered write.
const COALESCE: usize = 4 * 1024;
/// How long a closing connection's TLS close_notify and FIN may take to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How the loop ended.
pub enum Ending<S> {
    /// The connection is finished.
    Closed,
    /// hyper serves the rest of the connection, starting with the bytes already read.
    HandOver(Rewind<S>),
}

/// What the loop needs besides the socket.
pub struct Serving<'a> {
    pub shared: &'a Arc<Shared>,
    pub info: &'a Arc<ConnInfo>,
    pub header_timeout: Duration,
    pub max_head: usize,
    pub shutdown: &'a StopSignal,
}

/// Serves requests on `stream` until it closes or is handed over.
pub async fn serve<S>(mut stream: S, serving: Serving<'_>) -> Ending<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let phase = serving.info.phase.clone();
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    // The header deadline moves with every response: a lazy timer costs nothing per request.
    let mut deadline = LazyDeadline::new(phase.head_deadline(serving.header_timeout).into());
    let mut stopping = std::pin::pin!(serving.shutdown.fired());
    loop {
        if buf.is_empty() {
            deadline.set(phase.head_deadline(serving.header_timeout).into());
            let waited = poll_fn(|cx| {
                if buf.capacity() - buf.len() < READ_SIZE / 4 {
                    buf.reserve(READ_SIZE);
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut stream), cx, &mut buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wait::Closed),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Wait::Bytes),
                    Poll::Pending => {}
                }
                if stopping.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Closed);
                }
                deadline.poll_passed(cx).map(|_| Wait::Deadline)
            })
            .await;
            match waited {
                Wait::Bytes => {}
                Wait::Closed => return close_connection(stream).await,
                // hyper's reader (`conn.rs`) sees the same deadline passed and answers as
                // it would have: 408 for a first request, a quiet close otherwise.
                Wait::Deadline => return hand_over(stream, buf),
            }
        }
        let Some(head) = request::take(&mut buf, serving.max_head) else {
            return hand_over(stream, buf);
        };
        let method = head.request.method().clone();
        // Pinned where it is made: the request's future is large, and every move of it
        // is a copy.
        let handling = std::pin::pin!(handler::handle(
            serving.shared.clone(),
            serving.info.clone(),
            head.request
        ));
        let Some(response) = respond_unless_gone(handling, &mut stream, &mut buf).await else {
            // The client closed its side: the request is dropped, as hyper's server does.
            return Ending::Closed;
        };
        let last = head.close || serving.shutdown.is_fired();
        match write_response(&mut stream, &mut out, response, &method, last).await {
            Ok(true) if !last => {}
            _ => return close_connection(stream).await,
        }
    }
}

enum Wait {
    Bytes,
    Closed,
    Deadline,
}

fn hand_over<S>(stream: S, buf: BytesMut) -> Ending<S> {
    Ending::HandOver(Rewind::new(buf.freeze(), stream))
}

async fn close_connection<S: AsyncWrite + Unpin>(mut stream: S) -> Ending<S> {
    let _ = tokio::time::timeout(CLOSE_WAIT, stream.shutdown()).await;
    Ending::Closed
}

/// Awaits the handler's response while watching the client: bytes that arrive (a pipelined
/// request) are kept in `buf`; the end of the stream or an error cancels the request.
fn respond_unless_gone<S, F>(
    mut handling: Pin<&mut F>,
    stream: &mut S,
    buf: &mut BytesMut,
) -> impl Future<Output = Option<Response<ResponseBody>>>
where
    S: AsyncRead + Unpin,
    F: Future<Output = Result<Response<ResponseBody>, std::convert::Infallible>>,
{
    poll_fn(move |cx| {
        if let Poll::Ready(Ok(response)) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        // Only while nothing is buffered: a pipelined request waits its turn.
        if buf.is_empty() {
            if buf.capacity() < READ_SIZE / 4 {
                buf.reserve(READ_SIZE);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) | Poll::Pending => {}
            }
        }
        Poll::Pending
    })
}

/// Writes the response; true when it ended cleanly and the connection may carry another.
async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    response: Response<ResponseBody>,
    method: &Method,
    close: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    out.clear();
    let (mut framing, must_close) =
        response::encode_head(out, parts.status, &parts.headers, &body, method, close);
    drop(parts);
    if framing == Framing::None {
        // Not polled, as hyper does not poll a body it will not send.
        drop(body);
        stream.write_all(out).await?;
        stream.flush().await?;
        return Ok(!must_close);
    }
    loop {
        // A frame that is ready joins what is waiting to be written; otherwise what is
        // waiting goes out first, so the client is not kept waiting for the head.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    stream.write_all(out).await?;
                    stream.flush().await?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => {
                // The client gets what arrived, then the connection is cut.
                let _ = stream.write_all(out).await;
                let _ = stream.flush().await;
                return Ok(false);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers are not sent on HTTP/1.1
            },
        };
        if data.is_empty() {
            continue;
        }
        match &mut framing {
            Framing::Length(left) => {
                let n = data.len() as u64;
                if n > *left {
                    // More than the head promised: send what was promised and end.
                    let data = data.slice(..*left as usize);
                    put(stream, out, data).await?;
                    stream.write_all(out).await?;
                    stream.flush().await?;
                    return Ok(false);
                }
                *left -= n;
                put(stream, out, data).await?;
            }
            Framing::Chunked => {
                response::push_chunk_size(out, data.len());
                put(stream, out, data).await?;
                out.extend_from_slice(b"\r\n");
            }
            Framing::UntilClose => put(stream, out, data).await?,
            Framing::None => {}
        }
    }
    let complete = match framing {
        Framing::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            true
        }
        Framing::Length(left) => left == 0,
        Framing::UntilClose => false,
        Framing::None => true,
    };
    drop(body);
    stream.write_all(out).await?;
    stream.flush().await?;
    out.clear();
    Ok(complete && !must_close)
}

/// Adds `data` to what is waiting in `out` when it is small; otherwise writes both with one
/// gathered write, without copying `data`.
async fn put<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    data: Bytes,
) -> io::Result<()> {
    if data.len() <= COALESCE && out.len() + data.len() <= COALESCE * 4 {
        out.extend_from_slice(&data);
        return Ok(());
    }
    let (mut first, mut second) = (0, 0);
    while first < out.len() || second < data.len() {
        let bufs = [
            io::IoSlice::new(&out[first..]),
            io::IoSlice::new(&data[second..]),
        ];
        let n = poll_fn(|cx| Pin::new(&mut *stream).poll_write_vectored(cx, &bufs)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(out.len() - first);
        first += from_first;
        second += n - from_first;
    }
    out.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Writes `response` through a pipe that takes at most 1 KiB at a time and returns
    /// what came out, with `write_response`'s verdict.
    async fn written(response: Response<ResponseBody>, method: Method) -> (Vec<u8>, bool) {
        let (mut near, mut far) = tokio::io::duplex(1024);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.map(|_| all)
        });
        let mut out = Vec::new();
        let clean = write_response(&mut near, &mut out, response, &method, false)
            .await
            .expect("written");
        drop(near);
        (reader.await.expect("reader").expect("read"), clean)
    }

    #[tokio::test]
    async fn a_large_body_goes_out_whole_through_partial_writes() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let response = Response::new(ResponseBody::full(Bytes::from(body.clone()), None, None));
        let (bytes, clean) = written(response, Method::GET).await;
        assert!(clean);
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head")
            + 4;
        let head = String::from_utf8_lossy(&bytes[..split]);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-length: 100000\r\n"), "{head}");
        assert_eq!(&bytes[split..], &body[..]);
    }

    #[tokio::test]
    async fn head_answers_stop_after_the_head() {
        let response = Response::new(ResponseBody::full(Bytes::from_static(b"hello"), None, None));
        let (bytes, clean) = written(response, Method::HEAD).await;
        assert!(clean);
        let text = String::from_utf8(bytes).expect("text");
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
