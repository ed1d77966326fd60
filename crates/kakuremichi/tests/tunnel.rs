//! The tunnel end to end with the real binary: `kakuremichi gateway` with a tunnel listener
//! and `kakuremichi agent` as separate processes on 127.0.0.1, routes with `via` reaching
//! private origins through the agents.
//!
//! The tests run one at a time (they measure reconnect times and peak memory).

mod common;
mod tunnel_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Origin, WsOrigin, channel_body, get, request, ws_connect};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tunnel_support::*;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// Peak RSS allowed for the gateway and for the agent.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

fn routes(list: &[String]) -> String {
    let mut rest = agents_table(AGENT, TOKEN);
    for r in list {
        rest.push('\n');
        rest.push_str(r);
    }
    rest
}

/// A deterministic xorshift stream for garbage.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// From 1 to `max` bytes.
    fn up_to(&mut self, max: usize) -> Vec<u8> {
        let n = 1 + (self.next() % max as u64) as usize;
        self.bytes(n)
    }
}

// ---------------------------------------------------------------------------------------
// The agent listens on nothing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_owns_no_listening_socket_while_serving() {
    let _serial = serial().await;
    let origin = PeerOrigin::start().await;
    let gw = TunnelGateway::start(&routes(&[via_route("app", "app.test", &origin.url())])).await;
    // One agent over QUIC, one over TLS on TCP.
    let quic = AgentProc::quick(&gw, &["--transport", "quic"]);
    let tcp = AgentProc::quick(&gw, &["--transport", "tcp"]);
    gw.wait_agents(2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, addr) = (stop.clone(), gw.http());
        load.push(tokio::spawn(async move {
            let mut client = LoadClient::new(addr);
            let mut ok = 0usize;
            while !stop.load(Ordering::Relaxed) {
                if let Ok((200, _)) = client.get("app.test", "/").await {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut serving = [false, false];
    let mut samples = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for (i, agent) in [&quic, &tcp].into_iter().enumerate() {
            let sockets = sockets_of(agent.pid());
            let listening: Vec<_> = sockets.iter().filter(|s| s.is_listening()).collect();
            assert!(
                listening.is_empty(),
                "agent {} owns listening sockets: {listening:?}",
                agent.pid()
            );
            // The inode matching works: the agent's connection to the gateway is there.
            let (table, state) = if i == 0 { ("udp", 0x01) } else { ("tcp", 0x01) };
            assert!(
                sockets.iter().any(|s| s.table == table
                    && s.remote_port == gw.tunnel_port
                    && s.state == state),
                "agent {} has no {table} connection to the tunnel port: {sockets:?}",
                agent.pid()
            );
            if sockets
                .iter()
                .any(|s| s.table == "tcp" && s.remote_port == origin.addr.port())
            {
                serving[i] = true;
            }
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for t in load {
        ok += t.await.unwrap();
    }
    assert!(ok > 100, "only {ok} requests served");
    assert_eq!(
        serving,
        [true, true],
        "each agent held a connection to the origin while the sockets were checked"
    );
    eprintln!("{samples} socket samples per agent, {ok} requests through the tunnel");
}

// ---------------------------------------------------------------------------------------
// HTTP, SSE and WebSocket through the tunnel

async fn protocols(transport: &str) {
    let _serial = serial().await;
    let echo = Origin::echo("private").await;
    let release = Arc::new(tokio::sync::Notify::new());
    let sse = {
        let release = release.clone();
        Origin::serve(move |_req| {
            let release = release.clone();
            async move {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                    release.notified().await;
                    let _ = tx.send(Bytes::from_static(b"data: second\n\n")).await;
                });
                let mut resp = hyper::Response::new(body);
                resp.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                resp
            }
        })
        .await
    };
    let ws = WsOrigin::echo().await;
    let gw = TunnelGateway::start(&routes(&[
        via_route("echo", "echo.test", &echo.url()),
        via_route("sse", "sse.test", &sse.url()),
        via_route("ws", "ws.test", &ws.url()),
    ]))
    .await;
    let agent = AgentProc::quick(&gw, &["--transport", transport]);
    gw.wait_agents(1).await;
    let connected = gw
        .gw
        .logs
        .wait_json("the gateway's agent connected line", |v| {
            v["message"] == "agent connected"
        })
        .await;
    assert_eq!(connected["transport"], transport, "{connected}");
    assert_eq!(connected["agent"], AGENT);

    // Plain HTTP, both directions.
    let r = get(gw.http(), "echo.test", "/hello?x=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["origin"], "private");
    assert_eq!(j["path"], "/hello");
    assert_eq!(j["query"], "x=1");
    assert_eq!(j["headers"]["x-forwarded-for"][0], "127.0.0.1");
    let body = vec![b'k'; 300 * 1024];
    let r = request(gw.http(), "POST", "echo.test", "/upload", &[], body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 300 * 1024);

    // SSE: the first event arrives while the origin is still holding the response open.
    let stream = TcpStream::connect(gw.http()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/events")
        .header("host", "sse.test")
        .header("accept", "text/event-stream")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while !String::from_utf8_lossy(&seen).contains("data: first\n\n") {
            let frame = body.frame().await.expect("more frames").expect("frame");
            if let Some(d) = frame.data_ref() {
                seen.extend_from_slice(d);
            }
        }
    })
    .await
    .expect("the first event before the origin finished");
    release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .expect("the end of the event stream")
        .expect("body")
        .to_bytes();
    seen.extend_from_slice(&rest);
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "data: first\n\ndata: second\n\n"
    );

    // WebSocket: text, binary, a 1 MiB message, and the close handshake.
    let mut socket = ws_connect(gw.http(), "ws.test", "/socket").await;
    let timeout = Duration::from_secs(10);
    socket
        .send(Message::text("hello over the tunnel"))
        .await
        .unwrap();
    let back = tokio::time::timeout(timeout, socket.next()).await.unwrap();
    assert_eq!(
        back.unwrap().unwrap(),
        Message::text("hello over the tunnel")
    );
    let small: Vec<u8> = (0..=255u8).collect();
    socket.send(Message::binary(small.clone())).await.unwrap();
    let back = tokio::time::timeout(timeout, socket.next()).await.unwrap();
    assert_eq!(back.unwrap().unwrap(), Message::binary(small));
    let big = Noise(7).bytes(MIB as usize);
    socket.send(Message::binary(big.clone())).await.unwrap();
    let back = tokio::time::timeout(timeout, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(back.len(), big.len());
    assert_eq!(sha256_hex(&back.into_data()), sha256_hex(&big));
    socket.close(None).await.unwrap();
    let closed = tokio::time::timeout(timeout, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => return false,
                Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the close handshake within 10 s");
    assert!(closed, "the origin's close frame came back");

    // The tunnel figures in /metrics.
    let labels = [("agent", AGENT)];
    assert_eq!(
        gw.metric("kakuremichi_tunnel_agents_connected", &labels)
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("kakuremichi_tunnel_agent_connections", &labels)
            .await,
        1.0
    );
    let text = gw.gw.metrics().await;
    assert!(
        common::metric(&text, "kakuremichi_tunnel_streams_open", &labels).is_some(),
        "{text}"
    );
    assert!(gw.metric("kakuremichi_tunnel_bytes_to_agents", &[]).await >= (300 * 1024) as f64);
    assert!(gw.metric("kakuremichi_tunnel_bytes_from_agents", &[]).await >= MIB as f64);
    assert_eq!(
        gw.metric("kakuremichi_tunnel_handshakes_refused", &[])
            .await,
        0.0
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sse_and_websocket_over_quic() {
    protocols("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sse_and_websocket_over_tcp() {
    protocols("tcp").await;
}

// ---------------------------------------------------------------------------------------
// 1 GiB each way

async fn one_gib_each_way(transport: &str) {
    let _serial = serial().await;
    let (source, digest) = Origin::download(GIB).await;
    let sink = Origin::upload_sink().await;
    let gw = TunnelGateway::start(&routes(&[
        via_route("down", "down.test", &source.url()),
        via_route("up", "up.test", &sink.url()),
    ]))
    .await;
    let agent = AgentProc::quick(&gw, &["--transport", transport]);
    gw.wait_agents(1).await;

    let started = Instant::now();
    let (status, n, got) = download(gw.http(), "down.test", "/big").await;
    let down = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(n, GIB);
    assert_eq!(
        Some(got),
        digest.lock().unwrap().clone(),
        "download SHA-256"
    );

    let started = Instant::now();
    let (status, answer, sent) = upload(gw.http(), "up.test", "/big", GIB).await;
    let up = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["bytes"], GIB);
    assert_eq!(answer["sha256"], sent.as_str(), "upload SHA-256");

    let (gw_rss, agent_rss) = (gw.gw.peak_rss_kib(), agent.peak_rss_kib());
    eprintln!(
        "{transport}: 1 GiB down in {down:.1?} ({:.0} MiB/s), up in {up:.1?} ({:.0} MiB/s); \
         peak RSS gateway {} MiB, agent {} MiB",
        1024.0 / down.as_secs_f64(),
        1024.0 / up.as_secs_f64(),
        gw_rss / 1024,
        agent_rss / 1024
    );
    assert!(gw_rss < RSS_LIMIT_KIB, "gateway peak RSS {gw_rss} KiB");
    assert!(agent_rss < RSS_LIMIT_KIB, "agent peak RSS {agent_rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_down_and_up_over_quic_in_bounded_memory() {
    one_gib_each_way("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_down_and_up_over_tcp_in_bounded_memory() {
    one_gib_each_way("tcp").await;
}

// ---------------------------------------------------------------------------------------
// Transport fallback

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_tcp_when_udp_does_not_get_through() {
    let _serial = serial().await;
    let origin = Origin::fixed("private app").await;
    let gw = TunnelGateway::start(&routes(&[via_route("app", "app.test", &origin.url())])).await;
    // The agent is told of a port where only TCP is forwarded to the gateway; UDP sent there
    // vanishes.
    let relay = TcpRelay::start(([127, 0, 0, 1], gw.tunnel_port).into()).await;
    let dir = common::temp_dir("agent-file");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "[agent]\nname = \"{AGENT}\"\ntoken_file = \"token\"\ngateways = [\"127.0.0.1:{}\"]\ngateway_pin = \"{}\"\ntransport = \"auto\"\n",
            relay.port, gw.pin
        ),
    )
    .unwrap();
    let config = dir.join("agent.toml");
    let agent = AgentProc::spawn(&[std::ffi::OsStr::new("--config"), config.as_os_str()]);
    gw.wait_agents(1).await;
    let connected = gw
        .gw
        .logs
        .wait_json("agent connected", |v| v["message"] == "agent connected")
        .await;
    assert_eq!(connected["transport"], "tcp", "{connected}");
    let tried = agent.logs.wait_message("QUIC did not connect").await;
    eprintln!("agent: {tried}");
    let r = get(gw.http(), "app.test", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "private app");
    assert!(relay.connections.load(Ordering::SeqCst) >= 1);
    drop(agent);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------
// Refusals

/// Attempts the agent logged in a window after the first one: a retry storm would log
/// hundreds.
async fn count_attempts(agent: &AgentProc, needle: &str, window: Duration) -> usize {
    agent.logs.wait_message(needle).await;
    tokio::time::sleep(window).await;
    agent.logs.messages_with(needle).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_logged_on_both_sides_and_backed_off() {
    let _serial = serial().await;
    let gw = TunnelGateway::start(&routes(&[via_route(
        "app",
        "app.test",
        "http://127.0.0.1:9",
    )]))
    .await;
    let mut args = agent_flags(&[gw.tunnel_addr()], &gw.pin);
    args[3] = "agt_not_the_right_token".to_string();
    let agent = AgentProc::spawn(&args);

    let refused = gw
        .gw
        .logs
        .wait_json("the gateway's refusal", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("refused an agent"))
        })
        .await;
    assert_eq!(refused["level"], "WARN", "{refused}");
    assert_eq!(refused["agent"], AGENT);
    let window = Duration::from_secs(4);
    let attempts = count_attempts(&agent, "refused this agent", window).await;
    let line = &agent.logs.messages_with("refused this agent")[0];
    assert_eq!(line["level"], "ERROR", "{line}");
    eprintln!("agent: {line}\n{attempts} attempts in {window:?} after the first");
    assert!(
        (2..=7).contains(&attempts),
        "{attempts} attempts in {window:?}: expected a few, growing apart\n{}",
        agent.output()
    );
    let refusals = gw
        .metric("kakuremichi_tunnel_handshakes_refused", &[])
        .await;
    assert!((2.0..=8.0).contains(&refusals), "{refusals}");
    assert_eq!(
        gw.metric("kakuremichi_tunnel_agents_connected", &[("agent", AGENT)])
            .await,
        0.0
    );
    let r = get(gw.http(), "app.test", "/").await;
    assert_eq!(r.status, 503);
}

async fn wrong_pin(transport: &str) {
    let _serial = serial().await;
    let gw = TunnelGateway::start(&routes(&[via_route(
        "app",
        "app.test",
        "http://127.0.0.1:9",
    )]))
    .await;
    let wrong = format!("sha256:{}", "ab".repeat(32));
    assert_ne!(wrong, gw.pin);
    let mut args = agent_flags(&[gw.tunnel_addr()], &wrong);
    args.extend(["--transport".to_string(), transport.to_string()]);
    let agent = AgentProc::spawn(&args);

    let window = Duration::from_secs(4);
    let attempts = count_attempts(&agent, "handshake with", window).await;
    let line = &agent.logs.messages_with("handshake with")[0];
    eprintln!("agent: {line}\n{attempts} attempts in {window:?} after the first");
    assert_eq!(line["level"], "ERROR", "{line}");
    let message = line["message"].as_str().unwrap().to_lowercase();
    assert!(
        message.contains("certificate") || message.contains("pin"),
        "{message}"
    );
    assert!(
        (2..=7).contains(&attempts),
        "{attempts} attempts in {window:?}\n{}",
        agent.output()
    );
    let rejected = gw
        .gw
        .logs
        .wait_json("the gateway's log of the rejected certificate", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("rejected this gateway's certificate"))
        })
        .await;
    assert_eq!(rejected["level"], "WARN", "{rejected}");
    assert_eq!(
        gw.metric("kakuremichi_tunnel_agents_connected", &[("agent", AGENT)])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_refused_logged_on_both_sides_and_backed_off_quic() {
    wrong_pin("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_refused_logged_on_both_sides_and_backed_off_tcp() {
    wrong_pin("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outside_the_allow_list_is_a_502_logged_by_the_agent() {
    let _serial = serial().await;
    let allowed = Origin::fixed("allowed").await;
    let other = Origin::fixed("secret").await;
    let gw = TunnelGateway::start(&routes(&[
        via_route("allowed", "allowed.test", &allowed.url()),
        via_route("other", "other.test", &other.url()),
    ]))
    .await;
    let allow = allowed.addr.to_string();
    let agent = AgentProc::quick(&gw, &["--allow", &allow]);
    gw.wait_agents(1).await;

    let r = get(gw.http(), "allowed.test", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "allowed"));
    let r = get(gw.http(), "other.test", "/").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(other.requests.load(Ordering::SeqCst), 0);
    let line = agent.logs.wait_message("refused a stream").await;
    eprintln!("agent: {line}");
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["upstream"], other.addr.to_string());
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("not in the allow list"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------
// Reconnects

async fn gateway_restart(signal: &str, down: Duration) {
    let _serial = serial().await;
    let origin = Origin::fixed("still here").await;
    let gw = TunnelGateway::start(&routes(&[via_route("app", "app.test", &origin.url())])).await;
    let pin = gw.pin.clone();
    let agent = AgentProc::quick(&gw, &[]);
    gw.wait_agents(1).await;
    assert_eq!(get(gw.http(), "app.test", "/").await.status, 200);

    let (state, port, rest) = match signal {
        "TERM" => gw.terminate().await,
        _ => gw.kill().await,
    };
    // Down for a while, so the agent is in its backoff (after 6 s without an answer it has
    // given the old connection up and is dialing again).
    tokio::time::sleep(down).await;
    let spawned = Instant::now();
    let gw = TunnelGateway::start_on(&state, port, &rest).await;
    let ready = spawned.elapsed();
    assert_eq!(gw.pin, pin, "the pin stays the same across restarts");
    let serving = wait_status(gw.http(), "app.test", "/", 200, Duration::from_secs(15)).await;
    let total = spawned.elapsed();
    eprintln!(
        "SIG{signal}, down {down:?}: gateway ready {ready:?} after its start; the route served {serving:?} \
         after ready ({total:?} after the start)"
    );
    assert!(
        total <= Duration::from_secs(2),
        "the route served {total:?} after the new gateway started\n{}",
        agent.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_serves_within_2s_of_a_gateway_restart() {
    gateway_restart("TERM", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_serves_within_2s_of_a_gateway_restart_after_sigkill() {
    gateway_restart("KILL", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_serves_within_2s_of_a_gateway_back_after_a_long_outage() {
    gateway_restart("KILL", Duration::from_secs(10)).await;
}

async fn agent_restart(kill: bool) {
    let _serial = serial().await;
    let origin = Origin::fixed("still here").await;
    let gw = TunnelGateway::start(&routes(&[via_route("app", "app.test", &origin.url())])).await;
    let mut agent = AgentProc::quick(&gw, &[]);
    gw.wait_agents(1).await;
    // A pooled upstream connection over the first agent.
    assert_eq!(get(gw.http(), "app.test", "/").await.status, 200);
    if kill {
        agent.kill();
    } else {
        assert!(agent.terminate().await, "the agent exits 0 on SIGTERM");
        gw.wait_agents(0).await;
    }
    let spawned = Instant::now();
    let _agent = AgentProc::quick(&gw, &[]);
    let serving = wait_status(gw.http(), "app.test", "/", 200, Duration::from_secs(15)).await;
    eprintln!("the route served {serving:?} after the new agent started");
    assert!(
        spawned.elapsed() <= Duration::from_secs(1),
        "the route served {serving:?} after the new agent started\ngateway log:\n{}",
        gw.gw.logs.text()
    );
    // /metrics counts the reconnect: two connections so far, one up.
    gw.wait_agents(1).await;
    assert_eq!(
        gw.metric("kakuremichi_tunnel_agent_connections", &[("agent", AGENT)])
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_serves_within_1s_of_an_agent_restart() {
    agent_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_serves_within_1s_of_an_agent_restart_after_sigkill() {
    agent_restart(true).await;
}

// ---------------------------------------------------------------------------------------
// Groups and several gateways

const WORKERS: usize = 8;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failures: std::sync::Mutex<Vec<String>>,
}

async fn group_failover(transport: &str) {
    let _serial = serial().await;
    let origin = PeerOrigin::start().await;
    let gw = TunnelGateway::start(&routes(&[via_route("app", "app.test", &origin.url())])).await;
    let mut first = AgentProc::quick(&gw, &["--transport", transport]);
    let second = AgentProc::quick(&gw, &["--transport", transport]);
    gw.wait_agents(2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (stop, tally, addr) = (stop.clone(), tally.clone(), gw.http());
        workers.push(tokio::spawn(async move {
            let mut client = LoadClient::new(addr);
            while !stop.load(Ordering::Relaxed) {
                match client.get("app.test", "/").await {
                    Ok((200, body)) if body == "hello, tunnel" => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => tally
                        .failures
                        .lock()
                        .unwrap()
                        .push(format!("{status}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => tally.failures.lock().unwrap().push(e),
                }
            }
        }));
    }

    // Both agents carry traffic: the origin sees requests from each one's sockets.
    let mut ports = [HashSet::new(), HashSet::new()];
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        for (i, agent) in [&first, &second].into_iter().enumerate() {
            ports[i].extend(ports_towards(agent.pid(), origin.addr.port()));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let per_agent = [
        origin.requests_from(&ports[0]),
        origin.requests_from(&ports[1]),
    ];
    eprintln!(
        "{transport}: requests per agent before the kill: {per_agent:?} (upstream connections {} and {})",
        ports[0].len(),
        ports[1].len()
    );
    assert!(
        per_agent[0] > 0 && per_agent[1] > 0,
        "both agents carry traffic: {per_agent:?}"
    );
    assert!(tally.failures.lock().unwrap().is_empty());

    // SIGKILL one replica under load.
    let ok_before = tally.ok.load(Ordering::Relaxed);
    first.kill();
    let killed = Instant::now();
    gw.wait_agents(1).await;
    let noticed = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let ok_after = tally.ok.load(Ordering::Relaxed) - ok_before;
    let failures = tally.failures.lock().unwrap().clone();
    eprintln!(
        "{transport}: the gateway dropped the killed agent after {noticed:?}; {ok_after} requests \
         served after the kill, {} failed: {failures:?}",
        failures.len()
    );
    assert!(ok_after > 100, "only {ok_after} requests after the kill");
    // At most the requests in flight on the killed replica may fail: one per client.
    assert!(
        failures.len() <= WORKERS,
        "{} failures: {failures:?}",
        failures.len()
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_agents_shares_load_and_survives_a_sigkill_quic() {
    group_failover("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_two_agents_shares_load_and_survives_a_sigkill_tcp() {
    group_failover("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_holds_a_connection_to_each_of_two_gateways() {
    let _serial = serial().await;
    let origin = Origin::fixed("both").await;
    let rest = routes(&[via_route("app", "app.test", &origin.url())]);
    let first = TunnelGateway::start(&rest).await;
    // The second gateway shares the first one's tunnel key pair, so one pin fits both.
    let state = common::temp_dir("tunnel-state");
    for f in ["tunnel.key", "tunnel.crt"] {
        std::fs::copy(first.state_dir.join(f), state.join(f)).unwrap();
    }
    let second = TunnelGateway::start_on(&state, free_tunnel_port(), &rest).await;
    assert_eq!(first.pin, second.pin);
    let agent = AgentProc::spawn(&agent_flags(
        &[first.tunnel_addr(), second.tunnel_addr()],
        &first.pin,
    ));
    first.wait_agents(1).await;
    second.wait_agents(1).await;
    let quic_ports: HashSet<u16> = sockets_of(agent.pid())
        .into_iter()
        .filter(|s| s.table == "udp" && s.state == 0x01)
        .map(|s| s.remote_port)
        .collect();
    assert_eq!(
        quic_ports,
        HashSet::from([first.tunnel_port, second.tunnel_port])
    );
    for gw in [&first, &second] {
        let r = get(gw.http(), "app.test", "/").await;
        assert_eq!((r.status, r.text().as_str()), (200, "both"));
    }
    // One gateway gone: the other still serves.
    first.kill().await;
    let r = get(second.http(), "app.test", "/").await;
    assert_eq!(r.status, 200);
    drop(agent);
}

// ---------------------------------------------------------------------------------------
// No agent, and garbage on the tunnel port

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_connected_agent_the_route_answers_503() {
    let _serial = serial().await;
    let origin = Origin::fixed("up").await;
    let gw = TunnelGateway::start(&routes(&[via_route("app", "app.test", &origin.url())])).await;
    let r = get(gw.http(), "app.test", "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);

    let mut agent = AgentProc::quick(&gw, &[]);
    gw.wait_agents(1).await;
    assert_eq!(get(gw.http(), "app.test", "/").await.status, 200);
    assert!(agent.terminate().await);
    gw.wait_agents(0).await;
    let r = get(gw.http(), "app.test", "/").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_tunnel_port_leaves_the_gateway_serving() {
    let _serial = serial().await;
    let origin = Origin::fixed("unharmed").await;
    let gw = TunnelGateway::start(&routes(&[via_route("app", "app.test", &origin.url())])).await;
    let agent = AgentProc::quick(&gw, &[]);
    gw.wait_agents(1).await;
    let tunnel: std::net::SocketAddr = ([127, 0, 0, 1], gw.tunnel_port).into();
    let mut noise = Noise(0x5eed);

    // TCP: random bytes, a TLS record header announcing a huge record, and idle connections.
    let mut idle = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(tunnel).await.unwrap();
        let mut bytes = match i % 3 {
            0 => noise.up_to(65536),
            1 => [&[0x16, 0x03, 0x01, 0xff, 0xff][..], &noise.bytes(4096)].concat(),
            _ => Vec::new(),
        };
        if bytes.is_empty() {
            idle.push(s);
            continue;
        }
        bytes.truncate(65536);
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
    }
    // UDP: random datagrams, and ones shaped like QUIC long-header packets.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..3000 {
        let mut d = noise.up_to(1400);
        if i % 2 == 0 {
            d.resize(1200, 0);
            d[0] = 0xc0 | (d[0] & 0x0f);
            d[1..5].copy_from_slice(&[0, 0, 0, 1]);
        }
        let _ = udp.send_to(&d, tunnel).await;
    }

    let r = get(gw.http(), "app.test", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "unharmed"));
    // The agent's connection survived: no reconnect.
    assert_eq!(
        gw.metric("kakuremichi_tunnel_agent_connections", &[("agent", AGENT)])
            .await,
        1.0
    );
    drop(idle);
    let mut gw = gw;
    assert!(!gw.gw.has_exited(), "the gateway is alive");
    let r = get(gw.http(), "app.test", "/").await;
    assert_eq!(r.status, 200);
    let rss = gw.gw.peak_rss_kib();
    assert!(rss < RSS_LIMIT_KIB, "gateway peak RSS {rss} KiB");
    drop(agent);
}
