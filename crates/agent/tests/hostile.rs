//! Hostile input: garbage on the tunnel's TCP and UDP port, silent connections, and
//! truncated, oversized or garbage stream headers. Nothing may crash or wedge the listener
//! or the agent.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use kakuremichi_agent::TransportMode;
use kakuremichi_tunnel::proto::{Message, StreamHeader, Upstream};
use kakuremichi_tunnel::{Limits, OpenError, RefuseReason, ServerOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn localhost0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn garbage_on_tcp_and_udp_does_not_hurt_the_listener() {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start_with(
        &identity,
        localhost0(),
        ServerOptions {
            limits: Limits {
                handshake_timeout: Duration::from_millis(500),
                ..limits()
            },
            ..ServerOptions::default()
        },
    )
    .await;

    // TCP: HTTP, random bytes, a half-sent TLS record, and a connection that stays silent.
    let mut pseudo = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                pseudo ^= pseudo << 13;
                pseudo ^= pseudo >> 7;
                pseudo ^= pseudo << 17;
                pseudo as u8
            })
            .collect()
    };
    let payloads: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        random(4096),
        vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01],
        vec![0u8; 100_000],
    ];
    for payload in &payloads {
        let mut socket = TcpStream::connect(gateway.addr).await.unwrap();
        let _ = socket.write_all(payload).await;
        let mut sink = Vec::new();
        // The listener closes the connection; it never hangs.
        let _ = within(Duration::from_secs(5), socket.read_to_end(&mut sink)).await;
    }
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    let mut sink = Vec::new();
    let _ = within(Duration::from_secs(5), silent.read_to_end(&mut sink)).await;

    // UDP: datagrams of many sizes, including QUIC-looking long headers.
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for n in [0usize, 1, 20, 100, 1200, 1500, 65_000] {
        let mut datagram = random(n);
        if n > 0 {
            datagram[0] |= 0xc0;
        }
        let _ = udp.send_to(&datagram, gateway.addr).await;
    }

    let registry = gateway.registry.clone();
    wait_until(Duration::from_secs(10), || {
        registry.stats().handshakes_failed >= 5
    })
    .await;

    // The listener still serves agents on both transports.
    let echo = echo_server().await;
    for mode in [TransportMode::Quic, TransportMode::Tcp] {
        let agent = Agent::start(settings(gateway.addr, identity.pin(), mode));
        gateway.wait_connected(1).await;
        let mut stream = gateway
            .registry
            .open(NAME, &echo.to_string(), client())
            .await
            .unwrap();
        ping(&mut stream, "still alive").await;
        drop(stream);
        agent.stop().await;
        gateway.wait_connected(0).await;
    }
    gateway.stop().await;
}

async fn bad_headers(mode: TransportMode) {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let agent = Agent::start(settings(gateway.addr, identity.pin(), mode));
    gateway.wait_connected(1).await;
    let echo = echo_server().await;
    let full = StreamHeader {
        upstream: Upstream::parse(&echo.to_string()).unwrap(),
        client: client(),
    }
    .encode();

    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("truncated body", full[..full.len() - 3].to_vec(), true),
        ("truncated prefix", full[..2].to_vec(), true),
        ("oversized", vec![1, 3, 0xff, 0xff], false),
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec(), false),
        ("never completed", full[..full.len() - 1].to_vec(), false),
    ];
    for (what, bytes, then_close) in cases {
        let started = tokio::time::Instant::now();
        let err = within(
            Duration::from_secs(5),
            gateway.registry.open_raw(NAME, &bytes, then_close),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::Refused {
                    reason: RefuseReason::BadHeader,
                    ..
                }
            ),
            "{what}: {err}"
        );
        if what != "never completed" {
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{what} took {:?}",
                started.elapsed()
            );
        }
    }
    assert!(agent.stats.snapshot().streams_refused >= 5);
    assert_eq!(gateway.registry.stats().streams_open, 0);

    // The agent and the connection are still fine.
    let mut stream = gateway
        .registry
        .open(NAME, &echo.to_string(), client())
        .await
        .unwrap();
    ping(&mut stream, "after bad headers").await;
    drop(stream);
    agent.stop().await;
    gateway.stop().await;
}

#[tokio::test]
async fn bad_stream_headers_close_the_stream_quic() {
    bad_headers(TransportMode::Quic).await;
}

#[tokio::test]
async fn bad_stream_headers_close_the_stream_tcp() {
    bad_headers(TransportMode::Tcp).await;
}

async fn stream_limit(mode: TransportMode) {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start_with(
        &identity,
        localhost0(),
        ServerOptions {
            limits: Limits {
                open_timeout: Duration::from_secs(1),
                ..limits()
            },
            ..ServerOptions::default()
        },
    )
    .await;
    let mut s = settings(gateway.addr, identity.pin(), mode);
    s.limits.max_streams = 4;
    let agent = Agent::start(s);
    gateway.wait_connected(1).await;
    let echo = echo_server().await;

    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = gateway
            .registry
            .open(NAME, &echo.to_string(), client())
            .await
            .unwrap();
        ping(&mut s, &format!("held {i}")).await;
        held.push(s);
    }
    let err = within(
        Duration::from_secs(5),
        gateway.registry.open(NAME, &echo.to_string(), client()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OpenError::Stream { .. }), "{err}");
    assert_eq!(err.http_status(), 502);
    assert_eq!(agent.stats.snapshot().streams_total, 4);

    // A freed slot is usable again.
    held.pop();
    let mut s = within(Duration::from_secs(5), async {
        loop {
            match gateway
                .registry
                .open(NAME, &echo.to_string(), client())
                .await
            {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    ping(&mut s, "in the freed slot").await;
    drop((s, held));
    agent.stop().await;
    gateway.stop().await;
}

#[tokio::test]
async fn streams_per_agent_are_limited_quic() {
    stream_limit(TransportMode::Quic).await;
}

#[tokio::test]
async fn streams_per_agent_are_limited_tcp() {
    stream_limit(TransportMode::Tcp).await;
}
