//! Signals: SIGHUP reloads the file without dropping anything open, an invalid file is
//! refused; SIGTERM/SIGINT drain in-flight work up to the deadline and exit 0.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{
    DEADLINE, Origin, WsOrigin, eventually, gateway, gateway_with_routes, get, respond, ws_connect,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// An origin that answers `name`, on `/slow` only once `release` fires.
async fn gated(name: &'static str, release: Arc<tokio::sync::Notify>) -> Origin {
    Origin::serve(move |req| {
        let release = release.clone();
        async move {
            if req.uri().path() == "/slow" {
                release.notified().await;
            }
            respond(200, name)
        }
    })
    .await
}

async fn wait_until_received(origin: &Origin, n: usize) {
    eventually("the request to reach the origin", DEADLINE, || {
        let got = origin.requests.load(Ordering::SeqCst);
        async move { (got >= n).then_some(()) }
    })
    .await;
}

async fn echo(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an answer within 10 s")
        .expect("the WebSocket is open")
        .expect("a frame");
    assert_eq!(got, Message::text(text));
}

fn log_message_contains(l: &serde_json::Value, words: &[&str]) -> bool {
    let text = l.to_string();
    words.iter().all(|w| text.contains(w))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_file_while_open_work_finishes_on_the_old_one() {
    let release = Arc::new(tokio::sync::Notify::new());
    let old = gated("old", release.clone()).await;
    let new = Origin::fixed("new").await;
    let ws_origin = WsOrigin::echo().await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"main\"\nupstream = \"{}\"\n\n[[routes]]\nname = \"ws\"\npath = \"/ws\"\nupstream = \"{}\"\n",
        old.url(),
        ws_origin.url()
    ))
    .start()
    .await;
    assert_eq!(get(gw.http, "h", "/").await.text(), "old");

    // Open work: a slow request and a WebSocket.
    let addr = gw.http;
    let slow = tokio::spawn(async move {
        common::request(
            addr,
            "GET",
            "h",
            "/slow",
            &[("x-request-id", "in-flight")],
            "",
        )
        .await
    });
    wait_until_received(&old, 2).await;
    let mut ws = ws_connect(gw.http, "h", "/ws").await;
    echo(&mut ws, "before").await;

    // The new file drops both routes.
    gw.rewrite(
        "",
        &format!(
            "[[routes]]\nname = \"main2\"\nupstream = \"{}\"\n",
            new.url()
        ),
    );
    gw.signal("HUP");
    gw.logs
        .wait_json("the reload log line", |l| {
            log_message_contains(l, &["configuration reloaded"])
        })
        .await;

    assert_eq!(get(gw.http, "h", "/").await.text(), "new");
    assert_eq!(get(gw.http, "h", "/ws").await.text(), "new");
    // The WebSocket opened before still works, on the route it started with.
    echo(&mut ws, "after").await;
    // The in-flight request completes from the old upstream.
    release.notify_waiters();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "old");
    assert_eq!(gw.logs.wait_access("in-flight").await["route"], "main");
    echo(&mut ws, "still").await;
    gw.wait_metric("kakuremichi_config_reloads_total", &[], |v| v == 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_on_sighup_is_refused_and_the_old_config_stays() {
    let origin = Origin::fixed("original").await;
    let other = Origin::fixed("other").await;
    let routes = format!(
        "[[routes]]\nname = \"main\"\nupstream = \"{}\"\n",
        origin.url()
    );
    let gw = gateway_with_routes(&routes).start().await;

    // An unknown key: the log names the file, the position and the key.
    gw.rewrite(
        "bogus_key = 1",
        &format!(
            "[[routes]]\nname = \"main\"\nupstream = \"{}\"\n",
            other.url()
        ),
    );
    gw.signal("HUP");
    let config = gw.config.display().to_string();
    let line = gw
        .logs
        .wait_json("the refused-reload log line", |l| {
            log_message_contains(l, &["bogus_key"])
        })
        .await;
    assert_eq!(line["level"], "ERROR", "{line}");
    let text = line.to_string();
    assert!(text.contains(&format!("{config}:4:1")), "{text}");
    assert!(text.contains("previous configuration"), "{text}");
    assert_eq!(get(gw.http, "h", "/").await.text(), "original");

    // Valid TOML, invalid meaning: two routes with one name.
    gw.rewrite(
        "",
        &format!(
            "[[routes]]\nname = \"twin\"\npath = \"/a\"\nupstream = \"{u}\"\n\n[[routes]]\nname = \"twin\"\npath = \"/b\"\nupstream = \"{u}\"\n",
            u = other.url()
        ),
    );
    gw.signal("HUP");
    gw.logs
        .wait_json("the duplicate-name log line", |l| {
            log_message_contains(l, &["duplicate route name", "twin"])
        })
        .await;
    assert_eq!(get(gw.http, "h", "/").await.text(), "original");

    // A file that cannot be read (removed mid-deploy) is refused too.
    std::fs::remove_file(&gw.config).unwrap();
    gw.signal("HUP");
    gw.logs
        .wait_json("the unreadable-file log line", |l| {
            log_message_contains(l, &["cannot read the file", "previous configuration"])
        })
        .await;
    assert_eq!(get(gw.http, "h", "/").await.text(), "original");
    gw.wait_metric("kakuremichi_config_reloads_total", &[], |v| v == 0.0)
        .await;

    // A good file afterwards is applied.
    gw.rewrite(
        "",
        &format!(
            "[[routes]]\nname = \"main\"\nupstream = \"{}\"\n",
            other.url()
        ),
    );
    gw.signal("HUP");
    eventually("the good file to apply", DEADLINE, || async {
        (get(gw.http, "h", "/").await.text() == "other").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() {
    let release = Arc::new(tokio::sync::Notify::new());
    let origin = gated("done", release.clone()).await;
    let mut gw = gateway(
        "drain_timeout = \"20s\"",
        &format!(
            "[[routes]]\nname = \"main\"\nupstream = \"{}\"\n",
            origin.url()
        ),
    )
    .start()
    .await;

    let addr = gw.http;
    let slow = tokio::spawn(async move { get(addr, "h", "/slow").await });
    wait_until_received(&origin, 1).await;
    gw.signal("TERM");

    // New connections are refused once the signal is handled.
    eventually("new connections to be refused", DEADLINE, || async move {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => Some(()),
            Ok(_) => None,
        }
    })
    .await;
    assert!(!gw.has_exited(), "exited with a request in flight");

    release.notify_waiters();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "done");
    let status = gw.wait_exit(DEADLINE).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    gw.logs
        .wait_json("the last log line", |l| {
            log_message_contains(l, &["gateway stopped"])
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_waiting_at_the_drain_deadline_and_exits_0() {
    let release = Arc::new(tokio::sync::Notify::new());
    let origin = gated("never", release.clone()).await;
    let mut gw = gateway(
        "drain_timeout = \"1s\"",
        &format!(
            "[[routes]]\nname = \"main\"\nupstream = \"{}\"\n",
            origin.url()
        ),
    )
    .start()
    .await;
    let addr = gw.http;
    let slow = tokio::spawn(async move {
        common::try_request(addr, "GET", "h", "/slow", &[], bytes::Bytes::new()).await
    });
    wait_until_received(&origin, 1).await;
    let signalled = Instant::now();
    gw.signal("INT");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "exited {took:?} after the signal with a 1 s drain deadline"
    );
    // The stuck request did not get a normal answer.
    let r = slow.await.unwrap();
    assert!(r.is_err() || r.unwrap().status >= 500);
    drop(release);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_websockets_run_until_the_drain_deadline() {
    let ws_origin = WsOrigin::echo().await;
    let mut gw = gateway(
        "drain_timeout = \"2s\"",
        &format!(
            "[[routes]]\nname = \"ws\"\nupstream = \"{}\"\n",
            ws_origin.url()
        ),
    )
    .start()
    .await;
    let mut ws = ws_connect(gw.http, "h", "/").await;
    echo(&mut ws, "before").await;
    let signalled = Instant::now();
    gw.signal("TERM");
    // Wait until the signal was handled, then check the WebSocket still works.
    gw.logs
        .wait_json("the shutdown log line", |l| {
            log_message_contains(l, &["shutting down"])
        })
        .await;
    echo(&mut ws, "during the drain").await;
    // It is closed at the deadline, and the process exits 0.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the WebSocket is closed at the drain deadline");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_)))),
        "unexpected message {end:?}"
    );
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "the WebSocket was cut {took:?} after the signal, before the 2 s deadline"
    );
}
