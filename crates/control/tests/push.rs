//! The push WebSocket: snapshots on connect and after changes, resume, status reports into
//! the API, deletion closing the socket within a second, the client library's reconnect and
//! resume across a control restart, `https` through TLS, and (PostgreSQL) two control
//! instances on one database.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Backend, Server, TempDir, eventually, next_message, push_connect, send_json, sha256_hex,
};
use kakuremichi_config::Secret;
use kakuremichi_control::client::{
    ClientError, FollowOptions, Snapshot, StatusReport, connect_and_follow,
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SOON: Duration = Duration::from_secs(2);

async fn snapshots_changes_and_resume(backend: &Backend) {
    let dir = TempDir::new("push");
    let s = Server::start(&backend.fresh_database(&dir).await, &dir).await;
    let api = s.api();
    let (_, agent_token) = api.agent("home").await;
    let (gw_id, gw_token) = api.gateway("gw1", "127.0.0.1:7844").await;
    api.route(json!({"name": "first", "upstream": "http://127.0.0.1:9", "via": "home"}))
        .await;

    let mut gw = push_connect(&s, &gw_token, "")
        .await
        .expect("gateway connects");
    let snap = next_message(&mut gw, SOON).await.expect("snapshot");
    assert_eq!(snap["type"], "snapshot");
    assert_eq!(snap["role"], "gateway");
    assert_eq!(snap["name"], "gw1");
    assert_eq!(snap["routes"][0]["name"], "first");
    assert_eq!(snap["routes"][0]["via"], "home");
    assert_eq!(
        snap["agents"],
        json!([{"name": "home", "token_sha256": sha256_hex(&agent_token)}])
    );
    let v1 = snap["version"].as_u64().expect("version");
    let epoch = snap["epoch"].as_str().expect("epoch").to_string();

    let mut agent = push_connect(&s, &agent_token, "")
        .await
        .expect("agent connects");
    let asnap = next_message(&mut agent, SOON).await.expect("snapshot");
    assert_eq!(asnap["role"], "agent");
    assert_eq!(asnap["name"], "home");
    assert_eq!(
        asnap["gateways"],
        json!([{"name": "gw1", "address": "127.0.0.1:7844"}])
    );
    assert_eq!(asnap["routes"], json!([]));

    // A change reaches the gateway at once, with the next version.
    let started = Instant::now();
    let rid = api
        .route(json!({"name": "second", "path": "/two", "upstream": "http://127.0.0.1:9"}))
        .await;
    let change = next_message(&mut gw, SOON).await.expect("change pushed");
    let latency = started.elapsed();
    assert_eq!(change["type"], "snapshot");
    assert_eq!(change["version"].as_u64(), Some(v1 + 1));
    assert_eq!(change["routes"].as_array().map(Vec::len), Some(2));
    assert!(latency < Duration::from_secs(1), "push took {latency:?}");
    eprintln!("{}: route change pushed in {latency:?}", backend.name());

    // The gateway reports its pin and certificates; agents learn the pin; the API shows it.
    let pin = format!("sha256:{}", "ab".repeat(32));
    send_json(
        &mut gw,
        json!({"type": "status", "pin": pin, "requests_per_second": 12.5,
               "certificates": [{"hosts": ["app.example"], "state": "valid", "not_after": "2030-01-01T00:00:00Z"}]}),
    )
    .await;
    // For the route change the agent only learns the new version (it carries no routes),
    // unless that change and the pin coalesce; the pin comes in a snapshot.
    let asnap = loop {
        let m = next_message(&mut agent, SOON).await.expect("pushed");
        if m["type"] == "snapshot" {
            break m;
        }
        assert_eq!(m["type"], "current", "{m}");
        assert_eq!(m["epoch"], epoch.as_str());
        assert!(m["version"].as_u64() > Some(v1), "{m}");
    };
    assert_eq!(asnap["type"], "snapshot");
    assert_eq!(asnap["gateways"][0]["pin"], pin.as_str());
    let g = api
        .get(&format!("/api/v1/gateways/{gw_id}"))
        .await
        .expect(200)
        .json();
    assert_eq!(g["status"], "healthy", "{g}");
    assert_eq!(g["pin"], pin.as_str());
    assert_eq!(g["certificates"][0]["hosts"][0], "app.example");
    assert_eq!(g["requests_per_second"], 12.5);
    assert!(g["last_seen"].is_string());
    let _ = next_message(&mut gw, Duration::from_millis(200)).await; // the pin bumped the version

    // An agent reporting fewer gateways than exist is degraded; all of them: healthy.
    api.gateway("gw2", "127.0.0.2:7844").await;
    send_json(
        &mut agent,
        json!({"type": "status", "connected_gateways": ["gw1"]}),
    )
    .await;
    let status = eventually(SOON, || async {
        let a = api.get("/api/v1/agents").await.json();
        (a[0]["status"] == "degraded").then_some(a)
    })
    .await
    .expect("degraded");
    assert_eq!(status[0]["status_reason"], "connected to 1 of 2 gateways");
    send_json(
        &mut agent,
        json!({"type": "status", "connected_gateways": ["gw1", "127.0.0.2:7844"]}),
    )
    .await;
    eventually(SOON, || async {
        let a = api.get("/api/v1/agents").await.json();
        (a[0]["status"] == "healthy").then_some(())
    })
    .await
    .expect("healthy");
    let agents = api.get("/api/v1/agents").await.json();
    assert_eq!(
        agents[0]["connected_gateways"],
        json!(["gw1", "127.0.0.2:7844"])
    );

    // Resume: a current version gets `current`, an old one or another epoch a snapshot.
    api.delete(&format!("/api/v1/routes/{rid}"))
        .await
        .expect(204);
    let latest = loop {
        let m = next_message(&mut gw, SOON).await.expect("delete pushed");
        if m["routes"].as_array().map(Vec::len) == Some(1) {
            break m;
        }
    };
    let v = latest["version"].as_u64().expect("version");
    drop(gw);
    let mut gw = push_connect(&s, &gw_token, &format!("?since={v}&epoch={epoch}"))
        .await
        .expect("reconnect");
    let m = next_message(&mut gw, SOON).await.expect("answer");
    assert_eq!(m, json!({"type": "current", "epoch": epoch, "version": v}));
    drop(gw);
    let mut gw = push_connect(&s, &gw_token, &format!("?since={v1}&epoch={epoch}"))
        .await
        .expect("reconnect");
    let m = next_message(&mut gw, SOON).await.expect("answer");
    assert_eq!(m["type"], "snapshot");
    assert_eq!(m["version"].as_u64(), Some(v));
    let mut gw2 = push_connect(&s, &gw_token, &format!("?since={v}&epoch=other"))
        .await
        .expect("reconnect");
    assert_eq!(
        next_message(&mut gw2, SOON).await.expect("answer")["type"],
        "snapshot"
    );
    drop(gw2);

    // Closing the socket marks the gateway down.
    drop(gw);
    eventually(SOON, || async {
        let g = api.get(&format!("/api/v1/gateways/{gw_id}")).await.json();
        (g["status"] == "down").then_some(())
    })
    .await
    .expect("down after disconnect");
    drop(agent);
    s.stop().await;
}

async fn deletion_disconnects(backend: &Backend) {
    let dir = TempDir::new("push-del");
    let s = Server::start(&backend.fresh_database(&dir).await, &dir).await;
    let api = s.api();
    let (agent_id, agent_token) = api.agent("doomed").await;
    let (gw_id, gw_token) = api.gateway("doomed-gw", "127.0.0.1:1").await;
    let mut agent = push_connect(&s, &agent_token, "").await.expect("agent");
    let mut gw = push_connect(&s, &gw_token, "").await.expect("gateway");
    next_message(&mut agent, SOON).await.expect("snapshot");
    next_message(&mut gw, SOON).await.expect("snapshot");

    let started = Instant::now();
    api.delete(&format!("/api/v1/agents/{agent_id}"))
        .await
        .expect(204);
    let closed = next_message(&mut agent, Duration::from_secs(1))
        .await
        .expect("closed within a second");
    assert_eq!(closed, json!({"type": "close", "code": 4401}));
    assert!(started.elapsed() < Duration::from_secs(1));
    // The gateway learns the agent is gone.
    let m = next_message(&mut gw, SOON).await.expect("agents pushed");
    assert_eq!(m["agents"], json!([]));

    api.delete(&format!("/api/v1/gateways/{gw_id}"))
        .await
        .expect(204);
    let closed = next_message(&mut gw, Duration::from_secs(1))
        .await
        .expect("closed within a second");
    assert_eq!(closed["code"], 4401);
    assert_eq!(push_connect(&s, &gw_token, "").await.err(), Some(401));
    s.stop().await;
}

/// Collects what the client library hands over.
fn collector() -> (
    Arc<Mutex<Vec<Snapshot>>>,
    impl FnMut(Snapshot) + Send + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (seen, move |s: Snapshot| {
        sink.lock().expect("lock").push(s);
    })
}

async fn wait_for<F: Fn(&[Snapshot]) -> bool>(
    seen: &Arc<Mutex<Vec<Snapshot>>>,
    within: Duration,
    f: F,
) -> bool {
    eventually(within, || async {
        f(&seen.lock().expect("lock")).then_some(())
    })
    .await
    .is_some()
}

async fn client_follows_across_a_restart(backend: &Backend) {
    let dir = TempDir::new("client");
    let db = backend.fresh_database(&dir).await;
    let s = Server::start(&db, &dir).await;
    let addr = s.addr;
    let api = s.api();
    let (_, gw_token) = api.gateway("gw", "127.0.0.1:7844").await;
    api.route(json!({"name": "one", "upstream": "http://127.0.0.1:9"}))
        .await;

    let (status_tx, status_rx) = watch::channel(StatusReport {
        pin: Some(format!("sha256:{}", "cd".repeat(32))),
        config_version: Some(0),
        ..Default::default()
    });
    let mut options =
        FollowOptions::new(s.url(), Secret::new(gw_token.clone())).with_status(status_rx);
    options.min_backoff = Duration::from_millis(50);
    options.max_backoff = Duration::from_millis(200);
    let (seen, sink) = collector();
    let stop = CancellationToken::new();
    let follower = tokio::spawn(connect_and_follow(options, stop.clone(), sink));

    assert!(wait_for(&seen, SOON, |s| s.iter().any(|x| x.routes.len() == 1)).await);
    let first = seen.lock().expect("lock")[0].clone();
    assert_eq!(first.name, "gw");
    let toml = first.to_gateway_toml().expect("toml");
    assert!(toml.contains("[[routes]]\nname = \"one\""), "{toml}");

    // Status reports flow: the pin lands in the API.
    let pinned = eventually(SOON, || async {
        let g = api.get("/api/v1/gateways").await.json();
        (g[0]["pin"].is_string() && g[0]["config_version"] == 0).then_some(())
    })
    .await;
    assert!(pinned.is_some(), "status reported");
    status_tx.send_modify(|r| r.config_version = Some(first.version));
    assert!(
        eventually(SOON, || async {
            let g = api.get("/api/v1/gateways").await.json();
            (g[0]["config_version"] == first.version).then_some(())
        })
        .await
        .is_some(),
        "changed status is sent"
    );

    // Control restarts on the same database and port: the client resumes without a
    // duplicate snapshot, then receives the next change.
    let count_before = seen.lock().expect("lock").len();
    s.stop().await;
    let s = Server::start_at(&db, &dir, addr).await;
    let api = s.api();
    // Wait until the client is back (it resumes: nothing is handed over), then change.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let g = api.get("/api/v1/gateways").await.json();
            (g[0]["status"] == "healthy").then_some(())
        })
        .await
        .is_some(),
        "the client reconnects"
    );
    api.route(json!({"name": "two", "path": "/two", "upstream": "http://127.0.0.1:9"}))
        .await;
    assert!(
        wait_for(&seen, Duration::from_secs(5), |s| s
            .iter()
            .any(|x| x.routes.len() == 2))
        .await,
        "the change after the restart arrives"
    );
    let seen_now = seen.lock().expect("lock").clone();
    assert_eq!(
        seen_now[count_before..].len(),
        1,
        "no duplicate snapshot on resume: {:?}",
        seen_now.iter().map(|s| s.version).collect::<Vec<_>>()
    );

    // Deleting the gateway ends the loop with Unauthorized.
    let gid = api.get("/api/v1/gateways").await.json()[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    api.delete(&format!("/api/v1/gateways/{gid}"))
        .await
        .expect(204);
    let ended = tokio::time::timeout(SOON, follower)
        .await
        .expect("the loop ends")
        .expect("task");
    assert!(matches!(ended, Err(ClientError::Unauthorized)), "{ended:?}");

    // A follower started while control is down keeps retrying, then connects.
    let (_, gw2) = api.gateway("gw2", "127.0.0.1:7845").await;
    s.stop().await;
    let mut options = FollowOptions::new(format!("http://{addr}"), Secret::new(gw2));
    options.min_backoff = Duration::from_millis(50);
    options.max_backoff = Duration::from_millis(100);
    let (seen, sink) = collector();
    let stop2 = CancellationToken::new();
    let follower = tokio::spawn(connect_and_follow(options, stop2.clone(), sink));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(seen.lock().expect("lock").is_empty());
    let s = Server::start_at(&db, &dir, addr).await;
    assert!(wait_for(&seen, Duration::from_secs(3), |s| !s.is_empty()).await);
    stop2.cancel();
    tokio::time::timeout(SOON, follower)
        .await
        .expect("stops on cancel")
        .expect("task")
        .expect("Ok on cancel");
    stop.cancel();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_sqlite() {
    let b = Backend::Sqlite;
    snapshots_changes_and_resume(&b).await;
    deletion_disconnects(&b).await;
    client_follows_across_a_restart(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_postgres() {
    let Some(pg) = kakuremichi_testkit::postgres::Postgres::start("PostgreSQL tests") else {
        return;
    };
    let b = Backend::Postgres(pg);
    snapshots_changes_and_resume(&b).await;
    deletion_disconnects(&b).await;
    client_follows_across_a_restart(&b).await;
    two_instances_share_one_database(&b).await;
}

/// Two control instances on one PostgreSQL database: a change made through one reaches a
/// gateway connected to the other (by the version poll), and so does a deletion.
async fn two_instances_share_one_database(backend: &Backend) {
    let dir_a = TempDir::new("pg-a");
    let dir_b = TempDir::new("pg-b");
    let db = backend.fresh_database(&dir_a).await;
    let a = Server::start(&db, &dir_a).await;
    let b = Server::start(&db, &dir_b).await;
    let (gw_id, gw_token) = a.api().gateway("shared", "127.0.0.1:7844").await;
    let mut ws = push_connect(&b, &gw_token, "").await.expect("connect to b");
    let first = next_message(&mut ws, SOON).await.expect("snapshot");
    let started = Instant::now();
    a.api()
        .route(json!({"name": "via-a", "upstream": "http://127.0.0.1:9"}))
        .await;
    let m = next_message(&mut ws, Duration::from_secs(3))
        .await
        .expect("pushed by b");
    assert_eq!(m["routes"][0]["name"], "via-a");
    assert_eq!(
        m["version"].as_u64(),
        first["version"].as_u64().map(|v| v + 1)
    );
    eprintln!(
        "change through another instance pushed in {:?}",
        started.elapsed()
    );
    // The route list is the same through both.
    let la: Value = a.api().get("/api/v1/routes").await.json();
    let lb: Value = b.api().get("/api/v1/routes").await.json();
    assert_eq!(la, lb);
    a.api()
        .delete(&format!("/api/v1/gateways/{gw_id}"))
        .await
        .expect(204);
    let closed = next_message(&mut ws, Duration::from_secs(3))
        .await
        .expect("closed by b");
    assert_eq!(closed["code"], 4401);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_over_https() {
    use std::sync::Arc as StdArc;
    let dir = TempDir::new("tls");
    let db = Backend::Sqlite.fresh_database(&dir).await;
    let s = Server::start(&db, &dir).await;
    let (_, token) = s.api().gateway("tls-gw", "127.0.0.1:7844").await;

    // A TLS terminator in front of control, with a certificate for "localhost".
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cert.cert.pem()).expect("write ca");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let server_config = rustls::ServerConfig::builder_with_provider(StdArc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(StdArc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let tls_port = listener.local_addr().expect("addr").port();
    let backend = s.addr;
    let proxy = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });

    let url = format!("https://localhost:{tls_port}");
    // Without the CA the handshake fails and the client keeps retrying.
    let mut options = FollowOptions::new(url.clone(), Secret::new(token.clone()));
    options.min_backoff = Duration::from_millis(50);
    let (seen, sink) = collector();
    let stop = CancellationToken::new();
    let untrusted = tokio::spawn(connect_and_follow(options, stop.clone(), sink));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        seen.lock().expect("lock").is_empty(),
        "an untrusted certificate is refused"
    );
    stop.cancel();
    untrusted.await.expect("task").expect("ok");

    let mut options = FollowOptions::new(url, Secret::new(token));
    options.ca_roots = Some(ca_file);
    let (seen, sink) = collector();
    let stop = CancellationToken::new();
    let follower = tokio::spawn(connect_and_follow(options, stop.clone(), sink));
    assert!(
        wait_for(&seen, SOON, |s| !s.is_empty()).await,
        "snapshot over https"
    );
    stop.cancel();
    follower.await.expect("task").expect("ok");
    proxy.abort();
    s.stop().await;
}
