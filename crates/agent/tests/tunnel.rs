//! End-to-end tests of the tunnel on 127.0.0.1: an in-process gateway listener, agents
//! connecting over QUIC and TLS+TCP, and a TCP echo upstream.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use kakuremichi_agent::{GatewayVerification, TransportMode};
use kakuremichi_tunnel::{OpenError, RefuseReason, ServerOptions, TransportKind};
use sha2::{Digest, Sha256};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

fn localhost0() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// 64 MiB to the echo upstream and back, written and read at once; equal SHA-256.
async fn echo_64_mib(mode: TransportMode, kind: TransportKind) {
    echo_through(mode, kind, 64).await;
}

/// `mib` MiB to the echo upstream and back, written and read at once; equal SHA-256.
async fn echo_through(mode: TransportMode, kind: TransportKind, mib: u64) {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let agent = Agent::start(settings(gateway.addr, identity.pin(), mode));
    gateway.wait_connected(1).await;
    let echo = echo_server().await;

    let mut stream = gateway
        .registry
        .open(NAME, &echo.to_string(), client())
        .await
        .expect("open");
    assert_eq!(stream.transport(), kind);
    assert_eq!(stream.agent_name(), NAME);
    ping(&mut stream, "hello through the tunnel").await;

    let mut block = vec![0u8; MIB];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in block.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async move {
        let mut hash = Sha256::new();
        for i in 0..mib {
            block[..8].copy_from_slice(&i.to_be_bytes());
            hash.update(&block);
            writer.write_all(&block).await.expect("write");
        }
        writer.shutdown().await.expect("half-close");
        (hash.finalize(), writer)
    };
    let read = async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            let n = reader.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        (hash.finalize(), total)
    };
    let started = std::time::Instant::now();
    let ((sent, _writer), (received, total)) = within(Duration::from_secs(600), async {
        tokio::join!(write, read)
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{kind}: {mib} MiB each way in {secs:.2}s = {:.0} MiB/s each way; test process {}",
        mib as f64 / secs,
        peak_rss()
    );
    assert_eq!(total as u64, mib * MIB as u64);
    assert_eq!(sent, received, "the echo differs from what was sent");

    let stats = gateway.registry.stats();
    assert!(stats.bytes_to_agents >= mib * MIB as u64, "{stats:?}");
    assert!(stats.bytes_from_agents >= mib * MIB as u64, "{stats:?}");
    assert_eq!(stats.agents_connected, 1);
    let agent_stats = agent.stats.snapshot();
    wait_until(Duration::from_secs(5), || {
        agent.stats.snapshot().bytes_from_upstreams >= mib * MIB as u64
    })
    .await;
    assert_eq!(agent_stats.gateways_connected, 1);
    agent.stop().await;
    gateway.wait_connected(0).await;
    gateway.stop().await;
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default()
}

/// Throughput probe: `KAKUREMICHI_TUNNEL_MIB=1024 cargo test --release -p kakuremichi-agent
/// --test tunnel throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn throughput() {
    let mib = std::env::var("KAKUREMICHI_TUNNEL_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    echo_through(TransportMode::Quic, TransportKind::Quic, mib).await;
    echo_through(TransportMode::Tcp, TransportKind::Tcp, mib).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quic_carries_64_mib_both_ways() {
    echo_64_mib(TransportMode::Quic, TransportKind::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_carries_64_mib_both_ways() {
    echo_64_mib(TransportMode::Tcp, TransportKind::Tcp).await;
}

#[tokio::test]
async fn auto_uses_quic_when_udp_gets_through() {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let agent = Agent::start(settings(gateway.addr, identity.pin(), TransportMode::Auto));
    gateway.wait_connected(1).await;
    let echo = echo_server().await;
    let mut stream = gateway
        .registry
        .open(NAME, &echo.to_string(), client())
        .await
        .unwrap();
    assert_eq!(stream.transport(), TransportKind::Quic);
    ping(&mut stream, "quic").await;
    agent.stop().await;
    gateway.stop().await;
}

#[tokio::test]
async fn auto_falls_back_to_tcp_when_udp_is_blocked() {
    init_logs();
    let identity = identity();
    // UDP datagrams to the port vanish: a socket that never reads holds it. (Its port
    // number may be taken on TCP by another test: pick again then.)
    let mut attempts = 0;
    let (black_hole, gateway) = loop {
        let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = black_hole.local_addr().unwrap();
        let options = ServerOptions {
            limits: limits(),
            quic: false,
            tcp: true,
        };
        match Gateway::try_start_with(&identity, addr, options).await {
            Ok(gateway) => break (black_hole, gateway),
            Err(e) if attempts < 20 => {
                attempts += 1;
                eprintln!("port taken on TCP, trying another: {e}");
            }
            Err(e) => panic!("{e}"),
        }
    };
    let mut s = settings(gateway.addr, identity.pin(), TransportMode::Auto);
    s.quic_fallback_after = Duration::from_millis(500);
    let agent = Agent::start(s);
    gateway.wait_connected(1).await;
    let echo = echo_server().await;
    let mut stream = gateway
        .registry
        .open(NAME, &echo.to_string(), client())
        .await
        .unwrap();
    assert_eq!(stream.transport(), TransportKind::Tcp);
    ping(&mut stream, "tcp fallback").await;
    drop(stream);
    agent.stop().await;
    gateway.stop().await;
    drop(black_hole);
}

#[tokio::test]
async fn no_agent_connected_is_a_503() {
    let identity = identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let err = gateway
        .registry
        .open("nobody", "127.0.0.1:80", client())
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::NoAgent { .. }), "{err}");
    assert_eq!(err.http_status(), 503);
    let err = gateway
        .registry
        .open(NAME, "not a host", client())
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::InvalidUpstream { .. }), "{err}");
    gateway.stop().await;
}

async fn wrong_token(mode: TransportMode) {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let mut s = settings(gateway.addr, identity.pin(), mode);
    s.token = kakuremichi_agent::AgentToken::new("agt_wrong");
    let agent = Agent::start(s);
    let registry = gateway.registry.clone();
    wait_until(Duration::from_secs(10), || {
        agent.stats.snapshot().auth_failures >= 1 && registry.stats().handshakes_refused >= 1
    })
    .await;
    assert_eq!(gateway.registry.connected(NAME), 0);
    assert_eq!(agent.stats.snapshot().connections_total, 0);
    let err = gateway
        .registry
        .open(NAME, "127.0.0.1:80", client())
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 503);
    agent.stop().await;
    gateway.stop().await;
}

#[tokio::test]
async fn wrong_token_is_refused_over_quic() {
    wrong_token(TransportMode::Quic).await;
}

#[tokio::test]
async fn wrong_token_is_refused_over_tcp() {
    wrong_token(TransportMode::Tcp).await;
}

async fn wrong_pin(mode: TransportMode) {
    init_logs();
    let identity = identity();
    let other = support::identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let agent = Agent::start(settings(gateway.addr, other.pin(), mode));
    let registry = gateway.registry.clone();
    wait_until(Duration::from_secs(10), || {
        agent.stats.snapshot().auth_failures >= 1 && registry.stats().handshakes_failed >= 1
    })
    .await;
    assert_eq!(gateway.registry.connected(NAME), 0);
    assert_eq!(agent.stats.snapshot().connections_total, 0);
    agent.stop().await;
    gateway.stop().await;
}

#[tokio::test]
async fn wrong_pin_is_refused_over_quic() {
    wrong_pin(TransportMode::Quic).await;
}

#[tokio::test]
async fn wrong_pin_is_refused_over_tcp() {
    wrong_pin(TransportMode::Tcp).await;
}

#[tokio::test]
async fn gateway_verified_by_a_ca_file() {
    init_logs();
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let gw_key = rcgen::KeyPair::generate().unwrap();
    let gw_cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&gw_key, &ca, &ca_key)
        .unwrap();
    let identity = kakuremichi_tunnel::TunnelIdentity::from_der(
        vec![CertificateDer::from(gw_cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(gw_key.serialize_der())),
    )
    .unwrap();
    let dir = temp_dir("ca");
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let gateway = Gateway::start(&identity, localhost0()).await;
    for mode in [TransportMode::Quic, TransportMode::Tcp] {
        let mut s = settings(gateway.addr, identity.pin(), mode);
        s.gateways = vec![format!("localhost:{}", gateway.addr.port())];
        s.verification = GatewayVerification::CaFile(ca_file.clone());
        let agent = Agent::start(s);
        gateway.wait_connected(1).await;
        agent.stop().await;
        gateway.wait_connected(0).await;
    }
    // The same CA does not vouch for another name.
    let mut s = settings(gateway.addr, identity.pin(), TransportMode::Tcp);
    s.gateways = vec![gateway.addr.to_string()];
    s.verification = GatewayVerification::CaFile(ca_file.clone());
    let agent = Agent::start(s);
    wait_until(Duration::from_secs(10), || {
        agent.stats.snapshot().auth_failures >= 1
    })
    .await;
    assert_eq!(gateway.registry.connected(NAME), 0);
    agent.stop().await;
    gateway.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn allow_list_refusals_and_dial_failures_are_502s() {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let echo = echo_server().await;
    let mut s = settings(gateway.addr, identity.pin(), TransportMode::Quic);
    s.allow = allow(&["localhost:1", "10.0.0.0/8"]);
    let agent = Agent::start(s);
    gateway.wait_connected(1).await;

    let err = gateway
        .registry
        .open(NAME, &echo.to_string(), client())
        .await
        .unwrap_err();
    match &err {
        OpenError::Refused { reason, .. } => assert_eq!(*reason, RefuseReason::NotAllowed),
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(err.http_status(), 502);
    // A name outside the list is refused before any DNS lookup.
    let err = gateway
        .registry
        .open(NAME, "localhost:2", client())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Refused {
                reason: RefuseReason::NotAllowed,
                ..
            }
        ),
        "{err}"
    );
    assert!(agent.stats.snapshot().streams_refused >= 2);
    agent.stop().await;
    gateway.wait_connected(0).await;

    // Allowed by network; then a closed port is a dial failure.
    let mut s = settings(gateway.addr, identity.pin(), TransportMode::Tcp);
    s.allow = allow(&["127.0.0.0/8"]);
    let agent = Agent::start(s);
    gateway.wait_connected(1).await;
    let mut stream = gateway
        .registry
        .open(NAME, &echo.to_string(), client())
        .await
        .unwrap();
    ping(&mut stream, "allowed by network").await;
    let closed = closed_port().await;
    let err = gateway
        .registry
        .open(NAME, &closed.to_string(), client())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            OpenError::Refused {
                reason: RefuseReason::DialFailed,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.http_status(), 502);
    drop(stream);
    agent.stop().await;
    gateway.stop().await;
}

async fn group_failover(mode: TransportMode, kill: bool) {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let echo = echo_server().await;
    let first = Agent::start(settings(gateway.addr, identity.pin(), mode));
    let second = Agent::start(settings(gateway.addr, identity.pin(), mode));
    gateway.wait_connected(2).await;

    // Streams held open spread over both agents.
    let mut streams = Vec::new();
    for i in 0..8 {
        let mut s = gateway
            .registry
            .open(NAME, &echo.to_string(), client())
            .await
            .unwrap();
        ping(&mut s, &format!("stream {i}")).await;
        streams.push(s);
    }
    let ids: HashSet<u64> = streams.iter().map(|s| s.agent_connection_id()).collect();
    assert_eq!(ids.len(), 2, "streams did not reach both agents");
    assert!(first.stats.snapshot().streams_total >= 1);
    assert!(second.stats.snapshot().streams_total >= 1);
    let groups = gateway.registry.groups();
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].connected, groups[0].open_streams), (2, 8));
    drop(streams);

    if kill {
        first.kill().await;
    } else {
        first.stop().await;
    }
    gateway.wait_connected(1).await;
    for i in 0..6 {
        let mut s = gateway
            .registry
            .open(NAME, &echo.to_string(), client())
            .await
            .unwrap();
        ping(&mut s, &format!("after failover {i}")).await;
    }
    second.stop().await;
    gateway.stop().await;
}

#[tokio::test]
async fn group_spreads_and_fails_over_quic() {
    group_failover(TransportMode::Quic, true).await;
}

#[tokio::test]
async fn group_spreads_and_fails_over_tcp() {
    group_failover(TransportMode::Tcp, false).await;
}

async fn restart(mode: TransportMode) {
    init_logs();
    let identity = identity();
    let echo = echo_server().await;
    let gateway = Gateway::start(&identity, localhost0()).await;
    let addr = gateway.addr;
    let agent = Agent::start(settings(addr, identity.pin(), mode));
    gateway.wait_connected(1).await;
    gateway.stop().await;
    wait_until(Duration::from_secs(10), || {
        agent.stats.snapshot().gateways_connected == 0
    })
    .await;

    let gateway = Gateway::start(&identity, addr).await;
    let listening = tokio::time::Instant::now();
    gateway.wait_connected(1).await;
    assert!(
        listening.elapsed() < Duration::from_secs(3),
        "reconnected after {:?}",
        listening.elapsed()
    );
    let mut stream = gateway
        .registry
        .open(NAME, &echo.to_string(), client())
        .await
        .unwrap();
    ping(&mut stream, "after restart").await;
    assert!(agent.stats.snapshot().reconnects >= 1);
    assert_eq!(gateway.registry.groups()[0].connections_total, 1);
    drop(stream);
    agent.stop().await;
    gateway.stop().await;
}

#[tokio::test]
async fn reconnects_after_gateway_restart_quic() {
    restart(TransportMode::Quic).await;
}

#[tokio::test]
async fn reconnects_after_gateway_restart_tcp() {
    restart(TransportMode::Tcp).await;
}

#[tokio::test]
async fn revoked_agents_are_disconnected_on_reload() {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let agent = Agent::start(settings(gateway.addr, identity.pin(), TransportMode::Quic));
    gateway.wait_connected(1).await;
    gateway
        .registry
        .replace_auth(kakuremichi_tunnel::AgentAuth::new());
    gateway.wait_connected(0).await;
    wait_until(Duration::from_secs(10), || {
        agent.stats.snapshot().auth_failures >= 1
    })
    .await;
    gateway.registry.replace_auth(auth());
    gateway.wait_connected(1).await;
    agent.stop().await;
    gateway.stop().await;
}

/// Starts an agent on a runtime of its own; sending on the returned channel freezes that
/// runtime: the agent's sockets stay open but nothing answers, like a host that vanished.
fn freezable_agent(settings: kakuremichi_agent::AgentSettings) -> tokio::sync::oneshot::Sender<()> {
    let (freeze, frozen) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let _agent = Agent::start(settings);
            let _ = frozen.await;
            std::thread::sleep(Duration::from_secs(120));
        });
    });
    freeze
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_agent_is_detected_and_streams_go_to_the_other() {
    init_logs();
    let identity = identity();
    let gateway = Gateway::start(&identity, localhost0()).await;
    let echo = echo_server().await;
    let freeze = freezable_agent(settings(gateway.addr, identity.pin(), TransportMode::Quic));
    let healthy = Agent::start(settings(gateway.addr, identity.pin(), TransportMode::Quic));
    gateway.wait_connected(2).await;
    let _ = freeze.send(());

    for i in 0..6 {
        let started = tokio::time::Instant::now();
        let mut s = gateway
            .registry
            .open(NAME, &echo.to_string(), client())
            .await
            .unwrap();
        ping(&mut s, &format!("despite a frozen agent {i}")).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "open {i} took {:?}",
            started.elapsed()
        );
    }
    gateway.wait_connected(1).await;
    assert!(gateway.registry.stats().stream_open_failures >= 1);
    assert!(healthy.stats.snapshot().streams_total >= 6);
    healthy.stop().await;
    gateway.stop().await;
}
