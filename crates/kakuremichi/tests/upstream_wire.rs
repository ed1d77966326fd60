//! The gateway's own HTTP/1.1 client (body-less requests to plain `http` upstreams) against
//! a scripted upstream that frames its answers every way HTTP/1.1 allows: lengths, chunks,
//! close-delimited bodies, bodiless statuses, informational answers, kept-alive
//! connections it closes behind the gateway's back, and answers that are not HTTP at all.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{KeepAlive, gateway_with_routes, get, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the upstream does with one request.
struct Answer {
    /// Written in this many pieces, each flushed on its own.
    pieces: Vec<Vec<u8>>,
    /// Close the connection after writing.
    close: bool,
}

fn answer(bytes: impl Into<Vec<u8>>) -> Answer {
    Answer {
        pieces: vec![bytes.into()],
        close: false,
    }
}

type Script = dyn Fn(&str) -> Answer + Send + Sync;

/// A raw TCP upstream: reads request heads and answers each with `script(head)`.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(script: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (c, h) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script.clone(), h.clone()));
            }
        });
        Scripted {
            addr,
            connections,
            heads,
        }
    }

    fn route(&self) -> String {
        format!(
            "[[routes]]\nname = \"wire\"\nupstream = \"http://{}\"\n",
            self.addr
        )
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn last_head(&self) -> String {
        self.heads
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the upstream")
    }
}

async fn serve(mut stream: TcpStream, script: Arc<Script>, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        heads.lock().unwrap().push(head.clone());
        let reply = script(&head);
        for piece in reply.pieces {
            if stream.write_all(&piece).await.is_err() {
                return;
            }
            let _ = stream.flush().await;
            tokio::task::yield_now().await;
        }
        if reply.close {
            return;
        }
    }
}

fn path_of(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// A body of `n` bytes that is not one repeated byte.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn chunked(body: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let mut pieces = vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()];
    for part in body.chunks(chunk) {
        let mut p = format!("{:x};ext=1\r\n", part.len()).into_bytes();
        p.extend_from_slice(part);
        p.extend_from_slice(b"\r\n");
        pieces.push(p);
    }
    pieces.push(b"0\r\nx-trailer: t\r\n\r\n".to_vec());
    pieces
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_framing_reaches_the_client_whole() {
    let big = pattern(300_000);
    let body = big.clone();
    let up = Scripted::start(move |head| match path_of(head) {
        "/length" => {
            let mut r =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            r.extend_from_slice(&body);
            answer(r)
        }
        "/chunked" => Answer {
            pieces: chunked(&body, 7_777),
            close: false,
        },
        "/close" => {
            let mut r = b"HTTP/1.1 200 OK\r\nX-Framing: none\r\n\r\n".to_vec();
            r.extend_from_slice(&body);
            Answer {
                pieces: vec![r],
                close: true,
            }
        }
        _ => answer("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    })
    .await;
    let gw = gateway_with_routes(&up.route()).start().await;

    let mut client = KeepAlive::connect(gw.http).await;
    for path in ["/length", "/chunked", "/close", "/length", "/chunked"] {
        let r = client.get("h", path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.body.len(), big.len(), "{path}");
        assert!(r.body == big, "{path}: body differs");
        assert!(r.header("transfer-encoding").is_none_or(|v| v == "chunked"));
    }
    // One connection for the first two answers, a fresh one after the close-delimited body
    // (the only way to tell its end was the close).
    assert_eq!(up.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connections_are_reused_and_dead_ones_replaced() {
    let up = Scripted::start(|head| match path_of(head) {
        // Answers, then closes without saying so (an upstream's idle timeout or restart).
        "/then-close" => Answer {
            pieces: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye".to_vec()],
            close: true,
        },
        _ => answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    })
    .await;
    let gw = gateway_with_routes(&up.route()).start().await;
    let mut client = KeepAlive::connect(gw.http).await;

    for _ in 0..5 {
        assert_eq!(client.get("h", "/").await.text(), "ok");
    }
    assert_eq!(up.connections(), 1, "one kept-alive upstream connection");

    // The pooled connection dies right after its answer; the next requests still succeed.
    for round in 1..=3 {
        assert_eq!(client.get("h", "/then-close").await.text(), "bye");
        let r = client.get("h", "/").await;
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(up.connections(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    // The upstream closes each connection right after its answer, without saying so. A
    // POST cannot be sent twice, so it only succeeds if the gateway notices the close
    // before using the pooled connection (it checks connections idle for over a second).
    let up = Scripted::start(|_| Answer {
        pieces: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()],
        close: true,
    })
    .await;
    let gw = gateway_with_routes(&up.route()).start().await;
    let mut client = KeepAlive::connect(gw.http).await;
    assert_eq!(client.get("h", "/").await.text(), "ok");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let r = client.send("POST", "h", "/submit").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_past_the_upstreams_keep_alive_timeout_is_not_reused() {
    // The upstream says how long it keeps idle connections (`Keep-Alive: timeout=`) but
    // does not close them here, so only the connection count tells whether the gateway
    // used one that a real upstream would be closing.
    let up = Scripted::start(|head| match path_of(head) {
        "/short" => {
            answer("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 2\r\n\r\nok")
        }
        _ => answer(
            "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=30, max=100\r\nContent-Length: 2\r\n\r\nok",
        ),
    })
    .await;
    let gw = gateway_with_routes(&up.route()).start().await;
    let mut client = KeepAlive::connect(gw.http).await;
    let pause = std::time::Duration::from_millis(1300);

    assert_eq!(client.get("h", "/long").await.text(), "ok");
    tokio::time::sleep(pause).await;
    assert_eq!(client.get("h", "/long").await.text(), "ok");
    assert_eq!(up.connections(), 1, "30 s announced: reused after 1.3 s");

    // 2 s announced: kept for 1 s, so after 1.3 s idle a new connection is made.
    assert_eq!(client.get("h", "/short").await.text(), "ok");
    assert_eq!(up.connections(), 1);
    tokio::time::sleep(pause).await;
    assert_eq!(client.get("h", "/long").await.text(), "ok");
    assert_eq!(up.connections(), 2, "2 s announced: not reused after 1.3 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_and_informational_ones() {
    let up = Scripted::start(|head| {
        let method = head.split(' ').next().unwrap_or("");
        match (method, path_of(head)) {
            // A HEAD answer announces a length but has no body.
            ("HEAD", _) => answer("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
            (_, "/204") => answer("HTTP/1.1 204 No Content\r\n\r\n"),
            (_, "/304") => answer("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
            (_, "/hints") => Answer {
                pieces: vec![
                    b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n".to_vec(),
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal".to_vec(),
                ],
                close: false,
            },
            _ => answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        }
    })
    .await;
    let gw = gateway_with_routes(&up.route()).start().await;

    let head = request(gw.http, "HEAD", "h", "/", &[], Bytes::new()).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));
    assert!(head.body.is_empty());

    let mut client = KeepAlive::connect(gw.http).await;
    assert_eq!(client.get("h", "/204").await.status, 204);
    let not_modified = client.get("h", "/304").await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some("\"x\""));
    let hinted = client.get("h", "/hints").await;
    assert_eq!((hinted.status, hinted.text().as_str()), (200, "final"));
    assert_eq!(client.get("h", "/").await.text(), "ok");
    // Nothing was left unread on the upstream connection: it carried all four requests.
    assert!(up.connections() <= 2, "{} connections", up.connections());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bodiless_post_says_content_length_zero() {
    let up = Scripted::start(|_| answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
    let gw = gateway_with_routes(&up.route()).start().await;
    let r = request(gw.http, "POST", "h", "/submit", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    let head = up.last_head().to_ascii_lowercase();
    assert!(head.starts_with("post /submit http/1.1\r\n"), "{head}");
    assert_eq!(head.matches("content-length: 0\r\n").count(), 1, "{head}");
    assert!(head.contains("x-request-id: "), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_are_not_http_are_502_and_the_gateway_carries_on() {
    let up = Scripted::start(|head| match path_of(head) {
        "/garbage" => Answer {
            pieces: vec![b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()],
            close: true,
        },
        "/conflict" => Answer {
            pieces: vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(),
            ],
            close: true,
        },
        "/bad-chunk" => Answer {
            pieces: vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec()],
            close: true,
        },
        "/silent" => Answer {
            pieces: Vec::new(),
            close: true,
        },
        _ => answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    })
    .await;
    let gw = gateway_with_routes(&up.route()).start().await;

    for path in ["/garbage", "/conflict", "/silent"] {
        let r = get(gw.http, "h", path).await;
        assert_eq!(r.status, 502, "{path}: {}", r.text());
    }
    // A chunked body that goes wrong after the head: the client gets the head, then a body
    // that does not end cleanly, and the access line says so.
    let stream = TcpStream::connect(gw.http).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get("/bad-chunk")
        .header("host", "h")
        .header("x-request-id", "bad-chunk")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let resp = sender
        .send_request(req)
        .await
        .expect("the response head arrives");
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(body.is_err(), "a broken chunked body must not end cleanly");
    let line = gw.logs.wait_access("bad-chunk").await;
    assert_eq!(line["completed"], false, "{line}");
    assert_eq!(get(gw.http, "h", "/").await.text(), "ok");
}
