//! Body wrappers on the request path. Bodies are streamed frame by frame in both directions
//! and never collected: [`UpstreamBody`] counts and limits what the client sends and can be
//! taken back for a retry if no byte of it was read yet; [`ResponseBody`] counts what reaches
//! the client and writes the access-log line when it is done.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::access_log::AccessRecord;
use crate::conn::ConnPhase;
use crate::error::BoxError;
use crate::upstream::direct::DirectBody;
use crate::upstream::select::InFlight;

/// Raised by [`UpstreamBody`] when the client sends more than `max_body`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the route's max_body")]
pub struct BodyTooLarge;

/// Counters shared between the request body and the handler.
#[derive(Default)]
pub struct RequestBodyState {
    pub bytes: Arc<AtomicU64>,
    pub too_large: AtomicBool,
    pub client_error: AtomicBool,
}

/// A client's request body: what hyper read, or none at all for a request the gateway's
/// own HTTP/1.1 loop parsed (it only takes requests without a body).
pub enum ClientBody {
    Hyper(Incoming),
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(inner) => Pin::new(inner).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(inner) => inner.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(inner) => inner.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The client's request body on its way upstream.
pub struct UpstreamBody {
    slot: Arc<Mutex<Option<ClientBody>>>,
    state: Arc<RequestBodyState>,
    limit: Option<u64>,
    seen: u64,
}

impl UpstreamBody {
    /// A body with nothing in it (health checks, retries of body-less requests).
    pub fn empty() -> Self {
        UpstreamBody {
            slot: Arc::new(Mutex::new(None)),
            state: Arc::default(),
            limit: None,
            seen: 0,
        }
    }

    pub fn new(
        slot: Arc<Mutex<Option<ClientBody>>>,
        state: Arc<RequestBodyState>,
        limit: Option<u64>,
    ) -> Self {
        UpstreamBody {
            slot,
            state,
            limit,
            seen: 0,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut slot = match this.slot.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(inner) = slot.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.seen += n;
                    this.state.bytes.fetch_add(n, Ordering::Relaxed);
                    if this.limit.is_some_and(|max| this.seen > max) {
                        this.state.too_large.store(true, Ordering::Relaxed);
                        *slot = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.state.client_error.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self.slot.lock() {
            Ok(g) => g.as_ref().is_none_or(|b| b.is_end_stream()),
            Err(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.slot.lock() {
            Ok(g) => g
                .as_ref()
                .map(|b| b.size_hint())
                .unwrap_or_else(|| SizeHint::with_exact(0)),
            Err(_) => SizeHint::with_exact(0),
        }
    }
}

/// An upstream's response body, from the `hyper` client or the direct one. The direct body
/// (its connection inline) is the common and the large variant; boxing it would cost an
/// allocation per request to save a few hundred bytes of moves.
#[allow(clippy::large_enum_variant)]
pub enum Upstreamed {
    Hyper(Incoming),
    Direct(DirectBody),
}

#[allow(clippy::large_enum_variant)] // as `Upstreamed`
enum Inner {
    Upstream(Incoming),
    Direct(DirectBody),
    Full(Option<Bytes>),
}

/// What the gateway sends to the client: an upstream's body or one it made itself.
pub struct ResponseBody {
    inner: Inner,
    sent: u64,
    done: bool,
    record: Option<AccessRecord>,
    phase: Option<Arc<ConnPhase>>,
    in_flight: Option<InFlight>,
}

impl ResponseBody {
    /// `in_flight` keeps the upstream counted as busy (for `least_requests`) until the
    /// body is done.
    pub fn upstream(
        body: Upstreamed,
        record: AccessRecord,
        phase: Arc<ConnPhase>,
        in_flight: InFlight,
    ) -> Self {
        ResponseBody {
            inner: match body {
                Upstreamed::Hyper(b) => Inner::Upstream(b),
                Upstreamed::Direct(b) => Inner::Direct(b),
            },
            sent: 0,
            done: false,
            record: Some(record),
            phase: Some(phase),
            in_flight: Some(in_flight),
        }
    }

    pub fn full(bytes: Bytes, record: Option<AccessRecord>, phase: Option<Arc<ConnPhase>>) -> Self {
        ResponseBody {
            inner: Inner::Full(if bytes.is_empty() { None } else { Some(bytes) }),
            sent: 0,
            done: false,
            record,
            phase,
            in_flight: None,
        }
    }

    fn finish(&mut self) {
        let complete = self.done || self.is_end_stream();
        // One clock read for both.
        let now = std::time::Instant::now();
        if let Some(record) = self.record.take() {
            record.finish(self.sent, complete, now);
        }
        if let Some(phase) = self.phase.take() {
            phase.response_finished(now);
        }
        self.in_flight = None;
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A polled frame with its error boxed, as [`ResponseBody`] reports them.
fn boxed_errors<E: std::error::Error + Send + Sync + 'static>(
    polled: Poll<Option<Result<Frame<Bytes>, E>>>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    polled.map(|frame| frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(body) => boxed_errors(Pin::new(body).poll_frame(cx)),
            Inner::Direct(body) => boxed_errors(Pin::new(body).poll_frame(cx)),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                this.done = true;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
            Inner::Direct(b) => b.size_hint(),
        }
    }
}
