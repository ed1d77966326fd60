//! Clients that misbehave: huge heads, slowloris, too many connections, malformed and
//! ambiguous requests. The gateway answers what it can, closes what is unsafe, and keeps
//! serving everyone else.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Gateway, Origin, RawConn, gateway};

async fn start(settings: &str) -> (Origin, Gateway) {
    let origin = Origin::echo("o").await;
    let gw = gateway(
        settings,
        &format!(
            "[[routes]]\nname = \"r\"\nupstream = \"{}\"\n",
            origin.url()
        ),
    )
    .start()
    .await;
    (origin, gw)
}

/// The gateway process is alive and still answers (a closed connection may take a moment
/// to free its slot, hence the retries).
async fn still_serving(gw: &mut Gateway) {
    assert!(!gw.has_exited(), "the gateway process died");
    let addr = gw.http;
    common::eventually(
        "an answer from the gateway",
        common::DEADLINE,
        || async move {
            common::try_request(addr, "GET", "h", "/still-alive", &[], bytes::Bytes::new())
                .await
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .await;
}

/// An answer the gateway wrote itself: JSON `{error, message, request_id}` with `code`, the
/// request id header matching the body, `connection: close`, and an access-log line with
/// that id and status.
async fn assert_own_answer(gw: &Gateway, r: &common::RawResp, status: u16, code: &str) {
    assert_eq!(r.status, status);
    let id = r
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on the {status}: {:?}", r.headers))
        .to_string();
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("connection"), Some("close"));
    let body: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("the {status} body is not JSON ({e}): {:?}", r.body));
    assert_eq!(body["error"], code);
    assert_eq!(body["request_id"], id.as_str());
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    let line = gw.logs.wait_access(&id).await;
    assert_eq!(line["status"], status);
    assert_eq!(line["error"], code);
}

/// Reads the gateway's 431 on `c` and sees the connection closed after it.
async fn expect_431_and_close(gw: &Gateway, c: &mut RawConn) {
    let r = c
        .read_response(Duration::from_secs(10), false)
        .await
        .expect("a 431 response, not a reset");
    assert_own_answer(gw, &r, 431, "header_too_large").await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_max_header_size_gets_431() {
    let (_o, mut gw) = start("max_header_size = \"16KiB\"").await;
    // Under the limit: fine.
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8 << 10)
    );
    let r = common::raw(gw.http, ok.as_bytes()).await;
    assert_eq!(r.status, 200);
    // Over it, in one header or in many.
    for head in [
        format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20 << 10)
        ),
        format!(
            "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
            (0..200)
                .map(|i| format!("X-H{i}: {}\r\n", "b".repeat(100)))
                .collect::<String>()
        ),
    ] {
        let mut c = RawConn::connect(gw.http).await;
        c.send(head.as_bytes()).await;
        expect_431_and_close(&gw, &mut c).await;
    }
    still_serving(&mut gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_under_8_kib_holds_for_first_and_later_requests() {
    // hyper's own parser cannot be set below 8 KiB; the gateway counts the head itself.
    let (_o, mut gw) = start("max_header_size = \"2KiB\"").await;
    let big = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n",
            "a".repeat(4 << 10)
        )
    };
    // As the first request, complete in one write.
    let mut c = RawConn::connect(gw.http).await;
    c.send(big("/first").as_bytes()).await;
    expect_431_and_close(&gw, &mut c).await;
    // After a request with a body (served by hyper), and after one without.
    for first in [
        "POST /one HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
        "GET /one HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let mut c = RawConn::connect(gw.http).await;
        c.send(first.as_bytes()).await;
        let r = c
            .read_response(Duration::from_secs(10), false)
            .await
            .expect("an answer");
        assert_eq!(r.status, 200, "{first:?}");
        c.send(big("/later").as_bytes()).await;
        expect_431_and_close(&gw, &mut c).await;
    }
    still_serving(&mut gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_connection_gets_408_and_is_closed() {
    let (origin, mut gw) = start("header_timeout = \"1s\"").await;

    // Half a head, then nothing.
    let started = Instant::now();
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: 1\r\n").await;
    let r = c
        .read_response(Duration::from_secs(10), false)
        .await
        .expect("a 408 response");
    let took = started.elapsed();
    assert_own_answer(&gw, &r, 408, "request_timeout").await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "408 after {took:?}"
    );
    assert!(c.closed_within(Duration::from_secs(5)).await);

    // Trickling bytes does not extend the deadline: it counts from the connection's start.
    // The trickle alone would take 5 s; the answer (408, then the close) comes after ~1 s.
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let head = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Trickle: {}", "a".repeat(80));
        for b in head.bytes() {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wr
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("a trickling client was never cut off"),
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "a trickling client was cut after {took:?}"
    );
    if !got.is_empty() {
        assert!(
            got.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    trickle.abort();
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no partial request reached the upstream"
    );

    // A kept-alive connection that goes quiet after a response is closed without a 408.
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c
        .read_response(Duration::from_secs(5), false)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let quiet = Instant::now();
    assert!(
        c.read_response(Duration::from_secs(5), false)
            .await
            .is_none(),
        "no 408 on an idle kept-alive connection"
    );
    assert!(quiet.elapsed() >= Duration::from_millis(900));

    still_serving(&mut gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_at_once_and_counted() {
    let (_o, mut gw) = start("max_connections = 3").await;
    // Three kept-alive connections, each proven served.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = RawConn::connect(gw.http).await;
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let r = c
            .read_response(Duration::from_secs(5), false)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        held.push(c);
    }
    gw.wait_metric("kakuremichi_open_connections", &[], |v| v == 3.0)
        .await;

    // The fourth is closed without an answer.
    let mut extra = RawConn::connect(gw.http).await;
    let _ = extra.stream.try_write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    let started = Instant::now();
    assert!(
        extra
            .read_response(Duration::from_secs(5), false)
            .await
            .is_none(),
        "a connection past the cap got an answer"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    gw.wait_metric("kakuremichi_rejected_connections_total", &[], |v| v >= 1.0)
        .await;

    // The held ones still work.
    for c in held.iter_mut() {
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let r = c
            .read_response(Duration::from_secs(5), false)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    // Once one closes, a new connection is served.
    held.pop();
    common::eventually("a free connection slot", common::DEADLINE, || async {
        let r = common::try_request(gw.http, "GET", "h", "/", &[], bytes::Bytes::new()).await;
        r.ok().filter(|r| r.status == 200)
    })
    .await;
    drop(held);
    still_serving(&mut gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_gateway_keeps_serving() {
    let (origin, mut gw) = start("").await;
    let cases: [&[u8]; 8] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nNo colon here\r\n\r\n",
        b"GET /a b c HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Bad\x01: v\r\n\r\n",
        b"GET /x\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    for case in cases {
        let mut c = RawConn::connect(gw.http).await;
        c.send(case).await;
        let r = c
            .read_response(Duration::from_secs(5), false)
            .await
            .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(case)));
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(case));
        assert_own_answer(&gw, &r, 400, "bad_request").await;
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "connection left open after {:?}",
            String::from_utf8_lossy(case)
        );
        still_serving(&mut gw).await;
    }
    // A request line too long for the parser.
    let mut c = RawConn::connect(gw.http).await;
    c.send(format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "u".repeat(70_000)).as_bytes())
        .await;
    let r = c
        .read_response(Duration::from_secs(5), false)
        .await
        .expect("an answer to a 70 000-byte request line");
    assert!(r.status == 414 || r.status == 431, "{}", r.status);
    assert!(r.header("x-request-id").is_some());
    assert!(c.closed_within(Duration::from_secs(5)).await);
    // Bytes that are not HTTP at all (a TLS ClientHello on the plain port).
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .await;
    if let Some(r) = c.read_response(Duration::from_secs(5), false).await {
        assert_eq!(r.status, 400);
    }
    assert!(c.closed_within(Duration::from_secs(5)).await);
    still_serving(&mut gw).await;
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        9,
        "only the liveness probes reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_could_be_smuggled_are_refused_and_the_connection_closed() {
    let (origin, mut gw) = start("").await;
    let cases: [&[u8]; 4] = [
        // Content-Length first, then Transfer-Encoding, and a second request behind it.
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        // Transfer-Encoding first.
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        // Two different lengths.
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\nhello!",
    ];
    for case in cases {
        let mut c = RawConn::connect(gw.http).await;
        c.send(case).await;
        let r = c
            .read_response(Duration::from_secs(5), false)
            .await
            .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(case)));
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(case));
        assert!(
            c.read_response(Duration::from_secs(5), false)
                .await
                .is_none(),
            "a second response came after {:?}",
            String::from_utf8_lossy(case)
        );
    }
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    still_serving(&mut gw).await;
}
