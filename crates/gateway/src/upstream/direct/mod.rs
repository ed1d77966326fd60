//! The direct HTTP/1.1 client for the commonest forwarded request: no request body, no
//! upgrade, to a plain `http` upstream. The request's own task writes the head to a pooled
//! TCP connection and reads the response straight off it; there is no connection task and
//! no channel between the two, which is most of what a general-purpose client costs per
//! request. Everything else (request bodies, upgrades, `https` upstreams, tunnels) goes
//! through the pooled `hyper` client.
//!
//! Pools are per serving thread like the `hyper` client's: a connection is only ever used
//! by the thread that made it. Idle connections are kept up to [`IDLE_TIMEOUT`]; a reaper
//! task per pool closes those past it and those the upstream closed.

mod body;
mod chunked;
mod head;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{HeaderMap, Method, Uri};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub use body::DirectBody;

use super::connector::{ConnectError, Connector};
use crate::lazy_deadline::LazyDeadline;

/// How long an idle connection is kept (less when the upstream's `Keep-Alive: timeout=`
/// says it closes sooner).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An idle connection older than this is checked for a close by the upstream before use.
const CHECK_AFTER: Duration = Duration::from_secs(1);
/// How often the reaper looks at a pool.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// Idle connections kept per upstream and thread.
const MAX_IDLE: usize = 1024;
/// Largest response head accepted.
const MAX_HEAD: usize = 256 * 1024;
/// A connection's read buffer is kept across requests up to this capacity (the body
/// drops one it grew for a large response).
const KEEP_BUFFER: usize = 32 * 1024;

/// Why a direct request failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the upstream sent a malformed response: {0}")]
    BadResponse(&'static str),
    #[error("the upstream's response head is larger than 256 KiB")]
    HeadTooLarge,
    #[error("the upstream closed the connection before it answered")]
    ClosedBeforeHead,
    #[error("the upstream closed the connection in the middle of the response body")]
    ClosedMidBody,
    #[error("the upstream answered 101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("upstream connection failed: {0}")]
    Io(#[source] io::Error),
    #[error("the upstream did not answer within the response timeout")]
    TimedOut,
}

/// An upstream connection with what was read from it but not consumed.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The response timeout of the request on it; kept with the connection so that its
    /// timer is set once, not per request.
    deadline: LazyDeadline,
    /// How long it may wait idle in the pool.
    keep_idle: Duration,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One thread's idle connections, by upstream origin (`http://host:port`).
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle>>>,
    reaping: std::sync::atomic::AtomicBool,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used live connection to `origin`, if any, at `now`.
    fn take(&self, origin: &str, now: Instant) -> Option<Conn> {
        let mut map = self.lock();
        let list = map.get_mut(origin)?;
        while let Some(idle) = list.pop() {
            let age = now.saturating_duration_since(idle.since);
            if age >= IDLE_TIMEOUT {
                // Everything below is older still.
                list.clear();
                return None;
            }
            if age >= idle.conn.keep_idle {
                continue;
            }
            if age < CHECK_AFTER || still_open(&idle.conn.stream) {
                return Some(idle.conn);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, origin: &Arc<str>, mut conn: Conn) {
        if conn.buf.capacity() > KEEP_BUFFER {
            conn.buf = BytesMut::new();
        }
        {
            let mut map = self.lock();
            let list = map.entry(origin.clone()).or_default();
            if list.len() >= MAX_IDLE {
                list.remove(0);
            }
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
        if !self
            .reaping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.start_reaper();
        }
    }

    /// Drops every idle connection to `origin` (one of them turned out dead: the upstream
    /// probably restarted).
    fn forget(&self, origin: &str) {
        if let Some(list) = self.lock().get_mut(origin) {
            list.clear();
        }
    }

    /// Starts the reaper on the calling thread's runtime; it ends with the pool.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaping
                .store(false, std::sync::atomic::Ordering::Relaxed);
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(reap(pool));
    }
}

async fn reap(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(REAP_EVERY).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut map = pool.lock();
        for list in map.values_mut() {
            list.retain(|idle| {
                idle.since.elapsed() < idle.conn.keep_idle && still_open(&idle.conn.stream)
            });
        }
        map.retain(|_, list| !list.is_empty());
    }
}

/// How long a connection whose upstream announced `Keep-Alive: timeout=` may wait idle:
/// a margin short of it (the upstream counts from when it wrote the answer, a little before
/// the gateway finished reading it), so a request is not sent just as the upstream closes.
fn idle_limit(announced: Duration) -> Duration {
    let margin = (announced / 2).min(Duration::from_secs(1));
    (announced - margin).min(IDLE_TIMEOUT)
}

/// Whether an idle connection is still usable: nothing arrived on it (an idle upstream has
/// nothing to say; a close or stray bytes both make it useless).
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        // Readiness can be left over from the last response; a read tells.
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// Where a connection goes back to when its response is read.
pub(crate) struct Home {
    pool: Weak<Pool>,
    origin: Arc<str>,
}

impl Home {
    fn give_back(&self, conn: Conn) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(&self.origin, conn);
        }
    }
}

/// Direct HTTP/1.1 requests to plain `http` upstreams, with one pool per serving thread.
#[derive(Clone)]
pub struct DirectClient {
    connector: Connector,
    pools: Arc<[Arc<Pool>]>,
}

impl DirectClient {
    /// `pools`: one per serving thread plus one for every other thread.
    pub fn new(connector: Connector, pools: usize) -> Self {
        DirectClient {
            connector,
            pools: (0..pools.max(1))
                .map(|_| Arc::new(Pool::default()))
                .collect(),
        }
    }

    fn pool(&self) -> &Arc<Pool> {
        let last = self.pools.len() - 1;
        let i = crate::workers::index().map_or(last, |i| i.min(last));
        &self.pools[i]
    }

    /// Sends a request without body to `origin` (`http://host:port`, also the pool's key)
    /// for `target` (origin-form: path and query). Returns the response head and its body,
    /// or [`DirectError::TimedOut`] when the head is not there within `timeout`.
    pub async fn send(
        &self,
        method: &Method,
        origin: &Arc<str>,
        target: &str,
        headers: &HeaderMap,
        timeout: Duration,
    ) -> Result<http::Response<DirectBody>, DirectError> {
        let now = tokio::time::Instant::now();
        let due = now + timeout;
        let mut request = Vec::with_capacity(256 + headers.len() * 32);
        head::write_request(&mut request, method, target, headers);
        let pool = self.pool();
        let idempotent = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);

        let mut pooled = pool.take(origin, now.into_std());
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(mut conn) => {
                    conn.deadline.set(due);
                    conn
                }
                None => {
                    let uri = Uri::try_from(&**origin)
                        .map_err(|_| ConnectError::NoHost(origin.to_string()))?;
                    let mut deadline = LazyDeadline::new(due);
                    // Boxed: dialing is the rare path, and its future would otherwise
                    // weigh on every request's future (which is moved as it is built).
                    let dialing = Box::pin(self.connector.dial_tcp(&uri));
                    let stream = deadline
                        .bound(dialing)
                        .await
                        .map_err(|_| DirectError::TimedOut)??;
                    Conn {
                        stream,
                        buf: BytesMut::new(),
                        deadline,
                        keep_idle: IDLE_TIMEOUT,
                    }
                }
            };
            let Conn {
                stream,
                buf,
                deadline,
                ..
            } = &mut conn;
            let exchanged = deadline
                .bound(exchange(stream, buf, &request, method))
                .await
                .unwrap_or(Err(Failure::Other(DirectError::TimedOut)));
            match exchanged {
                Ok(head) => {
                    conn.keep_idle = head.idle_timeout.map_or(IDLE_TIMEOUT, idle_limit);
                    let home = Home {
                        pool: Arc::downgrade(pool),
                        origin: origin.clone(),
                    };
                    let body = DirectBody::new(conn, head.framing, head.reusable, home);
                    return Ok(http::Response::from_parts(head.parts, body));
                }
                // A kept-alive connection the upstream had closed (restart, idle timeout):
                // the request never reached it, or (idempotent) may safely go again.
                Err(Failure::Unsent(_)) if reused => pool.forget(origin),
                Err(Failure::NoAnswer(_)) if reused && idempotent => pool.forget(origin),
                Err(Failure::Unsent(e) | Failure::NoAnswer(e) | Failure::Other(e)) => {
                    return Err(e);
                }
            }
        }
    }
}

/// How far a request got before it failed.
enum Failure {
    /// The head could not be written.
    Unsent(DirectError),
    /// Written, but the connection ended before any byte of an answer.
    NoAnswer(DirectError),
    Other(DirectError),
}

/// Writes the request head and reads the final response head into `buf`.
async fn exchange(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    request: &[u8],
    method: &Method,
) -> Result<head::ResponseHead, Failure> {
    stream
        .write_all(request)
        .await
        .map_err(|e| Failure::Unsent(DirectError::Io(e)))?;
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            answered = true;
            match head::parse_response(buf, method).map_err(Failure::Other)? {
                Some(head) => {
                    if head.parts.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Err(Failure::Other(DirectError::UnaskedUpgrade));
                    }
                    // 100 Continue, 103 Early Hints: the final answer follows.
                    if head.parts.status.is_informational() {
                        continue;
                    }
                    return Ok(head);
                }
                None if buf.len() >= MAX_HEAD => {
                    return Err(Failure::Other(DirectError::HeadTooLarge));
                }
                None => {}
            }
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(8192);
        }
        let read = std::future::poll_fn(|cx| {
            tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf)
        })
        .await;
        match read {
            Ok(0) if answered => return Err(Failure::Other(DirectError::ClosedBeforeHead)),
            Ok(0) => return Err(Failure::NoAnswer(DirectError::ClosedBeforeHead)),
            Ok(_) => {}
            Err(e) if answered => return Err(Failure::Other(DirectError::Io(e))),
            Err(e) => return Err(Failure::NoAnswer(DirectError::Io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_keep_alive_timeouts_keep_a_margin() {
        let secs = |s: u64| idle_limit(Duration::from_secs(s));
        assert_eq!(secs(5), Duration::from_secs(4));
        assert_eq!(secs(1), Duration::from_millis(500));
        assert_eq!(secs(0), Duration::ZERO);
        assert_eq!(secs(300), IDLE_TIMEOUT);
    }
}
