//! A minimal Redis client for the shared rate-limit store: RESP2 over a tokio
//! `TcpStream`, just enough for `AUTH`, `SELECT` and `EVALSHA`/`EVAL` of the limiter
//! scripts. Connections come from a small pool (capped, reused while healthy); every
//! operation, connecting included, is bounded by one timeout; after a failure a breaker
//! answers "unavailable" at once for a short, growing pause instead of making every request
//! wait for the timeout. The password is never logged.

use std::fmt;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Largest bulk string or array accepted in a reply (ours are a few integers).
const MAX_BULK: usize = 1 << 20;
const MAX_ARRAY: usize = 1024;
const MAX_LINE: usize = 64 * 1024;
const MAX_DEPTH: usize = 4;
/// Idle connections kept per store.
const MAX_IDLE: usize = 16;
const BREAKER_FIRST: Duration = Duration::from_millis(500);
const BREAKER_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("server error: {0}")]
    Server(String),
    #[error("timed out")]
    Timeout,
    #[error("store marked unavailable after a recent failure")]
    Down,
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn ints(&self) -> Option<Vec<i64>> {
        match self {
            Reply::Array(Some(items)) => items.iter().map(Reply::int).collect(),
            _ => None,
        }
    }
}

/// A `redis://[[user]:password@]host[:port][/db]` URL.
#[derive(Clone)]
pub(crate) struct RedisUrl {
    original: String,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: u32,
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl RedisUrl {
    /// Error messages never repeat the URL, which may hold a password.
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let rest = if let Some(r) = text.strip_prefix("redis://") {
            r
        } else if text.starts_with("rediss://") {
            return Err("store: rediss:// (TLS) is not supported yet; use redis://".into());
        } else {
            return Err("store must be a redis://host:port URL".into());
        };
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((hp, "")) => (hp, 0),
            Some((hp, db)) => (
                hp,
                db.parse()
                    .map_err(|_| "store: the database after / must be a number".to_string())?,
            ),
            None => (rest, 0),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| "store: unclosed [ in the host".to_string())?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| "store: invalid port".to_string())?,
                None if after.is_empty() => 6379,
                None => return Err("store: invalid host".into()),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| "store: invalid port".to_string())?,
                ),
                None => (hostport.to_string(), 6379),
            }
        };
        if host.is_empty() {
            return Err("store: the URL has no host".into());
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (
                    (!user.is_empty()).then(|| percent_decode(user)),
                    Some(percent_decode(pass)),
                ),
                None => (None, Some(percent_decode(u))),
            },
        };
        Ok(RedisUrl {
            original: text.to_string(),
            host,
            port,
            username,
            password,
            db,
        })
    }

    /// Identifies the store (credentials included) for sharing one client; never logged.
    pub fn identity(&self) -> String {
        self.original.clone()
    }

    /// The URL without credentials, for logs.
    pub fn redacted(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("redis://{host}:{}/{}", self.port, self.db)
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Lua script and its SHA-1, run with `EVALSHA` (falling back to `EVAL` once per
/// connection when the server does not know it yet).
pub(crate) struct Script {
    source: &'static str,
    sha1: String,
}

impl Script {
    pub fn new(source: &'static str) -> Script {
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, source.as_bytes());
        let sha1 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Script { source, sha1 }
    }
}

/// One connection: a buffered reader over the socket, written through `get_mut`.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn connect(url: &RedisUrl) -> Result<Conn, RedisError> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn {
            stream: BufReader::new(tcp),
        };
        if let Some(password) = &url.password {
            let reply = match &url.username {
                Some(user) => {
                    conn.command(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                        .await?
                }
                None => conn.command(&[b"AUTH", password.as_bytes()]).await?,
            };
            if let Reply::Error(_) = reply {
                // The server's message could echo input; keep it out of logs.
                return Err(RedisError::Server("AUTH was refused".into()));
            }
        }
        if url.db != 0 {
            let db = url.db.to_string();
            if let Reply::Error(e) = conn.command(&[b"SELECT", db.as_bytes()]).await? {
                return Err(RedisError::Server(e));
            }
        }
        Ok(conn)
    }

    async fn command(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let mut buf = Vec::with_capacity(64 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            buf.extend_from_slice(arg);
            buf.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&buf).await?;
        read_reply(&mut self.stream).await
    }

    async fn eval(
        &mut self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Reply, RedisError> {
        let numkeys = keys.len().to_string();
        let mut cmd: Vec<&[u8]> = Vec::with_capacity(3 + keys.len() + args.len());
        cmd.extend_from_slice(&[b"EVALSHA", script.sha1.as_bytes(), numkeys.as_bytes()]);
        cmd.extend_from_slice(keys);
        cmd.extend_from_slice(args);
        match self.command(&cmd).await? {
            Reply::Error(e) if e.starts_with("NOSCRIPT") => {
                cmd[0] = b"EVAL";
                cmd[1] = script.source.as_bytes();
                match self.command(&cmd).await? {
                    Reply::Error(e) => Err(RedisError::Server(e)),
                    reply => Ok(reply),
                }
            }
            Reply::Error(e) => Err(RedisError::Server(e)),
            reply => Ok(reply),
        }
    }
}

async fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, RedisError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(RedisError::Protocol("connection closed"));
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..=i]);
                r.consume(i + 1);
                break;
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                r.consume(n);
            }
        }
        if line.len() > MAX_LINE {
            return Err(RedisError::Protocol("reply line too long"));
        }
    }
    if !line.ends_with(b"\r\n") {
        return Err(RedisError::Protocol("line not ended by CRLF"));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| RedisError::Protocol("reply line not UTF-8"))
}

async fn read_reply(r: &mut BufReader<TcpStream>) -> Result<Reply, RedisError> {
    read_reply_at(r, 0).await
}

fn read_reply_at(
    r: &mut BufReader<TcpStream>,
    depth: usize,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Reply, RedisError>> + Send + '_>> {
    Box::pin(async move {
        let line = read_line(r).await?;
        let (kind, rest) = line
            .split_at_checked(1)
            .ok_or(RedisError::Protocol("empty reply line"))?;
        let number = || -> Result<i64, RedisError> {
            rest.parse()
                .map_err(|_| RedisError::Protocol("invalid number in reply"))
        };
        match kind {
            "+" => Ok(Reply::Status(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Int(number()?)),
            "$" => {
                let len = number()?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= MAX_BULK)
                    .ok_or(RedisError::Protocol("bulk reply too large"))?;
                let mut data = vec![0; len + 2];
                r.read_exact(&mut data).await?;
                if !data.ends_with(b"\r\n") {
                    return Err(RedisError::Protocol("bulk reply not ended by CRLF"));
                }
                data.truncate(len);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let len = number()?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                if depth >= MAX_DEPTH {
                    return Err(RedisError::Protocol("reply nested too deeply"));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= MAX_ARRAY)
                    .ok_or(RedisError::Protocol("array reply too large"))?;
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(read_reply_at(r, depth + 1).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(RedisError::Protocol("unknown reply type")),
        }
    })
}

struct Breaker {
    open_until: Option<Instant>,
    backoff: Duration,
    failing: bool,
}

/// A pooled client for one store URL.
pub(crate) struct RedisClient {
    url: RedisUrl,
    timeout: Duration,
    idle: Mutex<Vec<Conn>>,
    slots: Semaphore,
    breaker: Mutex<Breaker>,
}

impl RedisClient {
    pub fn new(url: RedisUrl, timeout: Duration, max_connections: usize) -> RedisClient {
        RedisClient {
            url,
            timeout,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(max_connections.max(1)),
            breaker: Mutex::new(Breaker {
                open_until: None,
                backoff: BREAKER_FIRST,
                failing: false,
            }),
        }
    }

    pub fn redacted_url(&self) -> String {
        self.url.redacted()
    }

    /// Runs a script; fails fast while the breaker is open.
    pub async fn eval(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Reply, RedisError> {
        {
            let breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            if breaker.open_until.is_some_and(|t| Instant::now() < t) {
                return Err(RedisError::Down);
            }
        }
        let result =
            match tokio::time::timeout(self.timeout, self.eval_pooled(script, keys, args)).await {
                Ok(r) => r,
                Err(_) => Err(RedisError::Timeout),
            };
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                if breaker.failing {
                    tracing::info!(
                        target: "kakuremichi::policy",
                        store = %self.url.redacted(),
                        "rate-limit store reachable again"
                    );
                }
                breaker.failing = false;
                breaker.open_until = None;
                breaker.backoff = BREAKER_FIRST;
            }
            Err(e) => {
                if !breaker.failing {
                    tracing::warn!(
                        target: "kakuremichi::policy",
                        store = %self.url.redacted(),
                        "rate-limit store failed: {e}; on_store_error applies until it answers again"
                    );
                }
                breaker.failing = true;
                breaker.open_until = Some(Instant::now() + breaker.backoff);
                breaker.backoff = (breaker.backoff * 2).min(BREAKER_MAX);
            }
        }
        result
    }

    async fn eval_pooled(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Reply, RedisError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| RedisError::Protocol("client closed"))?;
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => Conn::connect(&self.url).await?,
        };
        let reply = conn.eval(script, keys, args).await;
        // A connection is reused only after a complete exchange (a server error reply is a
        // complete exchange too).
        if matches!(reply, Ok(_) | Err(RedisError::Server(_))) {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        reply
    }
}

/// The scripts, hashed once.
pub(crate) static GCRA_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("rate_limit/gcra.lua")));
pub(crate) static QUOTA_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("rate_limit/quota.lua")));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let u = RedisUrl::parse("redis://127.0.0.1:6380").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6380, 0));
        assert!(u.password.is_none());
        let u = RedisUrl::parse("redis://:p%40ss@cache.internal/2").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("cache.internal", 6379, 2));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert!(!format!("{u:?}").contains("p@ss"));
        let u = RedisUrl::parse("redis://user:pw@[::1]:7000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 7000));
        assert_eq!(u.username.as_deref(), Some("user"));
        assert_eq!(u.redacted(), "redis://[::1]:7000/0");
        for bad in [
            "http://x",
            "rediss://x",
            "redis://",
            "redis://h:port",
            "redis://h/x",
        ] {
            let err = RedisUrl::parse(bad).unwrap_err();
            assert!(!err.contains("pw"));
        }
    }

    #[test]
    fn script_sha1() {
        // SHA-1 of "return 1", as SCRIPT LOAD would answer.
        assert_eq!(
            Script::new("return 1").sha1,
            "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
        );
    }
}
