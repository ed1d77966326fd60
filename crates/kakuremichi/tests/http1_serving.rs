//! HTTP/1.1 connection handling as a client sees it: the gateway's own loop for common
//! requests and hyper for the rest of a connection after the first request the loop does
//! not take. Pipelined requests, a hand-over in the middle of a pipeline, heads split over
//! several writes, `Connection: close`, HEAD and the `date` field.

mod common;

use std::time::Duration;

use common::{Gateway, Origin, RawConn, gateway};

const WAIT: Duration = Duration::from_secs(10);

async fn start() -> (Origin, Gateway) {
    let origin = Origin::echo("o").await;
    let gw = gateway(
        "",
        &format!(
            "[[routes]]\nname = \"r\"\nhosts = [\"h\"]\nupstream = \"{}\"\n",
            origin.url()
        ),
    )
    .start()
    .await;
    (origin, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_also_past_a_request_body() {
    let (_origin, gw) = start().await;
    let mut c = RawConn::connect(gw.http).await;
    // Two body-less requests, one with a body (hyper takes the connection over there), and
    // one more after it, all in one write.
    c.send(
        b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /two?x=2 HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /three HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc\
          GET /four HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    for (path, body_len) in [("/one", 0), ("/two", 0), ("/three", 3), ("/four", 0)] {
        let r = c
            .read_response(WAIT, false)
            .await
            .unwrap_or_else(|| panic!("no answer for {path}"));
        assert_eq!(r.status, 200, "{path}");
        let echo = r.json();
        assert_eq!(echo["path"], path);
        assert_eq!(echo["body_len"], body_len, "{path}");
    }
    // The connection stays open for more.
    c.send(b"GET /five HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.read_response(WAIT, false).await.expect("an answer");
    assert_eq!(r.json()["path"], "/five");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_split_over_writes_is_served_and_the_connection_goes_on() {
    let (_origin, gw) = start().await;
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"GET /spl").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"it HTTP/1.1\r\nHo").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"st: h\r\n\r\n").await;
    let r = c.read_response(WAIT, false).await.expect("an answer");
    assert_eq!(r.json()["path"], "/split");
    c.send(b"GET /again HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.read_response(WAIT, false).await.expect("an answer");
    assert_eq!(r.json()["path"], "/again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_answered_in_kind_and_the_connection_ends() {
    let (_origin, gw) = start().await;
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"GET /bye HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await;
    let r = c.read_response(WAIT, false).await.expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.closed_within(WAIT).await,
        "the connection stayed open after Connection: close"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_gets_the_length_and_no_body_and_every_answer_has_a_date() {
    let (_origin, gw) = start().await;
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let head = c.read_response(WAIT, true).await.expect("an answer");
    assert_eq!(head.status, 200);
    let length: usize = head
        .header("content-length")
        .expect("content-length on the HEAD answer")
        .parse()
        .expect("a number");
    assert!(length > 0);
    // Had a body followed the HEAD answer, this response would not parse.
    c.send(b"GET /after-head HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.read_response(WAIT, false).await.expect("an answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/after-head");
    for answer in [&head, &r] {
        let date = answer.header("date").expect("a date field");
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date:?}");
    }
    // The gateway's own answers too.
    c.send(b"GET /x HTTP/1.1\r\nHost: no-route.test\r\n\r\n")
        .await;
    let r = c.read_response(WAIT, false).await.expect("an answer");
    assert_eq!(r.status, 404);
    assert!(r.header("date").is_some());
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_deadline_counts_from_the_last_response_and_idle_ends_quietly() {
    let origin = Origin::echo("o").await;
    let gw = gateway(
        "header_timeout = \"1s\"",
        &format!(
            "[[routes]]\nname = \"r\"\nhosts = [\"h\"]\nupstream = \"{}\"\n",
            origin.url()
        ),
    )
    .start()
    .await;
    let mut c = RawConn::connect(gw.http).await;
    // Requests 0.6 s apart: together past one header_timeout from the connection's start,
    // each well within one from the previous response.
    for path in ["/a", "/b", "/c"] {
        c.send(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .await;
        let r = c.read_response(WAIT, false).await.expect("an answer");
        assert_eq!(r.json()["path"], path);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // Idle past the deadline: closed without a 408 (no request was started).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut c.stream, &mut rest),
    )
    .await;
    assert!(read.is_ok(), "the idle connection was not closed");
    assert!(
        rest.is_empty(),
        "an idle connection got {:?}",
        String::from_utf8_lossy(&rest)
    );
}
