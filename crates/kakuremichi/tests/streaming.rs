//! Bodies stream through the gateway and are never buffered whole: 1 GiB each way with a
//! small peak RSS, max_body counted as the body streams, server-sent events delivered as
//! they are written.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{GenBody, Origin, RawConn, channel_body, gateway_with_routes, hex, pattern};
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

const GIB: u64 = 1 << 30;
const RSS_LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_through_with_small_rss() {
    let sink = Origin::upload_sink().await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"up\"\nupstream = \"{}\"\n",
        sink.url()
    ))
    .start()
    .await;
    let before = gw.peak_rss_kib();

    let stream = TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let sent_digest = Arc::new(Mutex::new(None));
    let body = GenBody::new(pattern(GIB, 256 << 10, sent_digest.clone()), Some(GIB));
    let req = Request::post("/upload")
        .header("host", "h")
        .header("content-length", GIB.to_string())
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(600), sender.send_request(req))
        .await
        .expect("upload finished within 10 minutes")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["bytes"], GIB);
    let sent = sent_digest.lock().unwrap().clone().expect("all sent");
    assert_eq!(v["sha256"], sent.as_str(), "the origin got the same bytes");

    let peak = gw.peak_rss_kib();
    eprintln!("gateway peak RSS: {before} KiB at start, {peak} KiB after a 1 GiB upload");
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB after a 1 GiB upload"
    );
    let line = gw
        .logs
        .wait_json("the upload's access-log line", |l| {
            l["target"] == "kakuremichi::access" && l["path"] == "/upload"
        })
        .await;
    assert_eq!(line["bytes_in"], GIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_through_with_small_rss() {
    let (origin, digest) = Origin::download(GIB).await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"down\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;

    let stream = TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/download")
        .header("host", "h")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let read_all = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body frame");
            if let Some(d) = frame.data_ref() {
                n += d.len() as u64;
                hasher.update(d);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(600), read_all)
        .await
        .expect("download finished within 10 minutes");
    assert_eq!(n, GIB);
    let expected = digest.lock().unwrap().clone().expect("origin finished");
    assert_eq!(hex(&hasher.finalize()), expected);

    let peak = gw.peak_rss_kib();
    eprintln!("gateway peak RSS after a 1 GiB download: {peak} KiB");
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB after a 1 GiB download"
    );
    let line = gw
        .logs
        .wait_json("the download's access-log line", |l| {
            l["target"] == "kakuremichi::access" && l["path"] == "/download"
        })
        .await;
    assert_eq!(line["bytes_out"], GIB);
}

fn limited(sink: &Origin) -> String {
    format!(
        "[[routes]]\nname = \"small\"\nmax_body = \"1KiB\"\nupstream = \"{}\"\n",
        sink.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_refuses_a_declared_length_before_reading_it() {
    let sink = Origin::upload_sink().await;
    let gw = gateway_with_routes(&limited(&sink)).start().await;

    // Only the head is sent: the answer comes from the declared length alone.
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n")
        .await;
    let r = c
        .read_response(Duration::from_secs(10), false)
        .await
        .expect("a response");
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    assert_eq!(sink.requests.load(Ordering::SeqCst), 0);

    // At the limit is fine.
    let r = common::request(gw.http, "POST", "h", "/up", &[], vec![7u8; 1024]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bytes"], 1024);
    let r = common::request(gw.http, "POST", "h", "/up", &[], vec![7u8; 1025]).await;
    assert_eq!(r.status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_counts_a_chunked_body_as_it_streams() {
    let sink = Origin::upload_sink().await;
    let gw = gateway_with_routes(&limited(&sink)).start().await;

    // 2 KiB in chunks, and the body never ends: the count alone must trigger the 413.
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    let chunk = format!("200\r\n{}\r\n", "x".repeat(512));
    for _ in 0..4 {
        c.send(chunk.as_bytes()).await;
    }
    let r = c
        .read_response(Duration::from_secs(10), false)
        .await
        .expect("a response");
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "the connection is closed after a 413 mid-body"
    );

    // A chunked body under the limit passes.
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    c.send(b"200\r\n").await;
    c.send(&[b'y'; 512]).await;
    c.send(b"\r\n1f4\r\n").await;
    c.send(&[b'z'; 500]).await;
    c.send(b"\r\n0\r\n\r\n").await;
    let r = c
        .read_response(Duration::from_secs(10), false)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bytes"], 1012);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_before_the_upstream_finishes() {
    let go_on = Arc::new(tokio::sync::Notify::new());
    let release = go_on.clone();
    let origin = Origin::serve(move |_| {
        let go_on = go_on.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"id: 1\ndata: first\n\n")).await;
                // The rest only once the test saw the first event through the gateway.
                go_on.notified().await;
                let _ = tx
                    .send(Bytes::from_static(b"id: 2\ndata: second\n\n"))
                    .await;
            });
            let mut r = hyper::Response::new(body);
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r.headers_mut()
                .insert("cache-control", "no-cache".parse().unwrap());
            r
        }
    })
    .await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"sse\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;

    let stream = TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/events")
        .header("host", "h")
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("response head while the stream is open")
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();
    let mut got = String::new();
    let first = async {
        while !got.contains("data: first\n\n") {
            let frame = body.frame().await.expect("more").expect("frame");
            if let Some(d) = frame.data_ref() {
                got.push_str(std::str::from_utf8(d).unwrap());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the first event arrives while the upstream is still writing");
    assert!(!got.contains("second"));

    release.notify_one();
    let rest = async {
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame.expect("frame").data_ref() {
                got.push_str(std::str::from_utf8(d).unwrap());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), rest)
        .await
        .expect("the stream ends");
    assert_eq!(got, "id: 1\ndata: first\n\nid: 2\ndata: second\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let sink = Origin::upload_sink().await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"up\"\nupstream = \"{}\"\n",
        sink.url()
    ))
    .start()
    .await;
    let mut c = RawConn::connect(gw.http).await;
    c.send(
        b"PUT /file HTTP/1.1\r\nHost: h\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    // Like curl: wait for the interim answer before sending the body.
    let interim = c
        .read_response(Duration::from_secs(5), true)
        .await
        .expect("100 Continue");
    assert_eq!(interim.status, 100);
    c.send(&[9u8; 4096]).await;
    let r = c
        .read_response(Duration::from_secs(10), false)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bytes"], 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_does_not_cut_a_long_stream() {
    let origin = Origin::serve(|_| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for i in 0..3 {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                }
                let _ = tx.send(Bytes::from(format!("data: {i}\n\n"))).await;
            }
        });
        hyper::Response::new(body)
    })
    .await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"sse\"\ntimeouts = {{ response = \"500ms\" }}\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    let r = common::get(gw.http, "h", "/events").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "data: 0\n\ndata: 1\n\ndata: 2\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_upstream_body_is_not_passed_off_as_complete() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An origin that promises 1000 bytes, sends 500 and hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
                    .await;
                let _ = s.write_all(&[b'x'; 500]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"cut\"\nupstream = \"http://{addr}\"\n"
    ))
    .start()
    .await;

    let stream = TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/file")
        .header("host", "h")
        .header("x-request-id", "truncated")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("response head");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the body ends one way or another");
    assert!(
        body.is_err(),
        "a body cut short upstream must not end cleanly for the client"
    );
    let line = gw.logs.wait_access("truncated").await;
    assert_eq!(line["completed"], false, "{line}");
    origin.abort();
}
