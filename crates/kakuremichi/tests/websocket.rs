//! WebSocket (HTTP/1.1 Upgrade) through the gateway: messages both ways, a 1 MiB message,
//! the close handshake, and the route's idle timeout.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{WsOrigin, gateway, gateway_with_routes, ws_connect};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message within 10 s")
        .expect("the connection is open")
        .expect("a valid frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_pass_both_ways_and_the_close_handshake_completes() {
    let origin = WsOrigin::echo().await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"ws\"\npath = \"/socket\"\nstrip_path = true\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    let mut ws = ws_connect(gw.http, "app.example", "/socket/chat").await;

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello"));
    let binary = Bytes::from_static(&[0u8, 1, 2, 254, 255]);
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(binary));

    // 1 MiB, both ways.
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next(&mut ws).await {
        Message::Binary(b) => assert!(b[..] == big[..], "1 MiB message changed on the way"),
        other => panic!("expected the 1 MiB binary message back, got {other:?}"),
    }
    let big_text = "ü".repeat(1 << 19);
    ws.send(Message::text(big_text.clone())).await.unwrap();
    match next(&mut ws).await {
        Message::Text(t) => assert_eq!(t.as_str(), big_text),
        other => panic!("expected the 1 MiB text message back, got {other:?}"),
    }

    // The metrics see one upgraded connection while it is open.
    gw.wait_metric("kakuremichi_open_upgraded_connections", &[], |v| v == 1.0)
        .await;

    // Close handshake: our Close is answered with a Close, then the stream ends.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected the close reply, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the stream ends after the close handshake");
    assert!(
        end.is_none() || matches!(end, Some(Err(_))),
        "nothing after the close: {end:?}"
    );
    drop(ws);
    gw.wait_metric("kakuremichi_open_upgraded_connections", &[], |v| v == 0.0)
        .await;

    // The upgrade is logged as a 101 of the route.
    let line = gw
        .logs
        .wait_json("the access-log line of the upgrade", |l| {
            l["target"] == "kakuremichi::access" && l["status"] == 101
        })
        .await;
    assert_eq!(line["route"], "ws");
    assert_eq!(line["path"], "/socket/chat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_after_the_routes_idle_timeout() {
    let origin = WsOrigin::echo().await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"ws\"\ntimeouts = {{ idle = \"1s\" }}\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    let mut ws = ws_connect(gw.http, "h", "/").await;

    // Traffic every 300 ms for 2 s keeps it open past the idle timeout.
    let busy_until = Instant::now() + Duration::from_secs(2);
    let quiet_since = loop {
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text("ping"));
        if Instant::now() >= busy_until {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    // Then silence: the gateway closes it about 1 s after the last byte.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the gateway closes an idle WebSocket");
    let waited = quiet_since.elapsed();
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "unexpected message {end:?}"
    );
    assert!(
        waited >= Duration::from_millis(800),
        "closed too early, after {waited:?} of silence"
    );
    assert!(
        waited < Duration::from_secs(5),
        "closed too late, after {waited:?}"
    );
    gw.logs
        .wait_json("the idle-timeout log line", |l| {
            l["message"].as_str().is_some_and(|m| m.contains("idle"))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_24h_idle_timeout_is_accepted_and_the_connection_stays() {
    let origin = WsOrigin::echo().await;
    let gw = gateway(
        "header_timeout = \"1s\"",
        &format!(
            "[[routes]]\nname = \"ws\"\ntimeouts = {{ idle = \"24h\" }}\nupstream = \"{}\"\n",
            origin.url()
        ),
    )
    .start()
    .await;
    let mut ws = ws_connect(gw.http, "h", "/").await;
    ws.send(Message::text("a")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("a"));
    // Quiet for twice the header timeout: neither it nor anything else closes the upgraded
    // connection.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .is_err(),
        "the connection must stay silent and open"
    );
    ws.send(Message::text("b")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_count_against_max_connections() {
    let origin = WsOrigin::echo().await;
    let gw = gateway(
        "max_connections = 2",
        &format!(
            "[[routes]]\nname = \"ws\"\nupstream = \"{}\"\n",
            origin.url()
        ),
    )
    .start()
    .await;
    let mut a = ws_connect(gw.http, "h", "/").await;
    let mut b = ws_connect(gw.http, "h", "/").await;
    a.send(Message::text("a")).await.unwrap();
    assert_eq!(next(&mut a).await, Message::text("a"));
    b.send(Message::text("b")).await.unwrap();
    assert_eq!(next(&mut b).await, Message::text("b"));
    gw.wait_metric("kakuremichi_open_connections", &[], |v| v == 2.0)
        .await;

    // A third connection is over the cap while both WebSockets are open.
    let mut extra = common::RawConn::connect(gw.http).await;
    let _ = extra.stream.try_write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(
        extra
            .read_response(Duration::from_secs(5), false)
            .await
            .is_none(),
        "a connection past max_connections was served"
    );
    gw.wait_metric("kakuremichi_rejected_connections_total", &[], |v| v >= 1.0)
        .await;

    // Closing one frees its slot.
    drop(a);
    gw.wait_metric("kakuremichi_open_connections", &[], |v| v == 1.0)
        .await;
    let mut c = ws_connect(gw.http, "h", "/").await;
    c.send(Message::text("c")).await.unwrap();
    assert_eq!(next(&mut c).await, Message::text("c"));
}
