//! Managed mode end to end with the real binary: `kakuremichi control` (SQLite, and one
//! test on PostgreSQL), managed gateways and managed agents as separate processes that start
//! with only a control URL and a token, set up and changed through the REST API.
//!
//! - A route created through the API serves at the gateway within a second, directly and
//!   through the managed agent (`via`); PUT changes it and DELETE removes it just as fast.
//! - A gateway added while everything runs gets every route, and the agent learns it by
//!   push and dials it too without dropping its tunnel to the first.
//! - Deleting the agent disconnects it within a second; a refused token (wrong, or the
//!   gateway deleted) is logged and the gateway goes on serving its last snapshot.
//! - Control killed: the gateway keeps serving, restarts on its saved snapshot, and resyncs
//!   when control comes back.
//! - Status from heartbeats in the API (healthy with pin and connected gateways; down once
//!   a peer dies); validation with the messages of `kakuremichi check`.
//! - `kakuremichi demo` prints working URLs and stops cleanly on Ctrl-C.
//!
//! The tests run one at a time: they measure "within a second".

mod common;
mod managed_support;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{DEADLINE, Origin, get};
use kakuremichi_testkit::postgres::Postgres;
use managed_support::*;
use serde_json::json;

/// Fails if a process wrote a panic message.
fn assert_no_panic(what: &str, output: &str) {
    assert!(!output.contains("panicked"), "{what} panicked:\n{output}");
}

/// Control, one managed gateway, one managed agent named "home" and an echo origin.
struct Setup {
    // Processes first: they stop before their folders go.
    agent: Proc,
    gw: ManagedGateway,
    control: Control,
    api: Api,
    gw_id: String,
    agent_id: String,
    origin: Origin,
    _state: Scratch,
    _agent_dir: Scratch,
    control_dir: Scratch,
}

impl Setup {
    async fn start(database: Option<&str>) -> Setup {
        let control_dir = Scratch::new("managed-control");
        let control = match database {
            Some(db) => Control::start(control_dir.path(), db).await,
            None => Control::sqlite(control_dir.path()).await,
        };
        let api = control.api();
        let tunnel_port = free_tunnel_port();
        let (gw_id, gw_token) = api
            .gateway("gw1", &format!("127.0.0.1:{tunnel_port}"))
            .await;
        let (agent_id, agent_token) = api.agent("home").await;
        let state = Scratch::new("managed-state");
        let gw = ManagedGateway::start(&control.url(), &gw_token, state.path(), tunnel_port).await;
        let agent_dir = Scratch::new("managed-agent");
        let agent = managed_agent(agent_dir.path(), &control.url(), &agent_token);
        let origin = Origin::echo("private").await;
        Setup {
            agent,
            gw,
            control,
            api,
            gw_id,
            agent_id,
            origin,
            _state: state,
            _agent_dir: agent_dir,
            control_dir,
        }
    }

    /// Waits until the gateway reported its pin and the agent has a tunnel to it.
    async fn wait_connected(&self) {
        let pin = self.gw.pin();
        self.api
            .wait_entry(
                "/api/v1/gateways",
                &self.gw_id,
                "gw1 healthy with its pin",
                |g| g["status"] == "healthy" && g["pin"] == pin.as_str(),
            )
            .await;
        self.api
            .wait_entry(
                "/api/v1/agents",
                &self.agent_id,
                "home healthy and connected to gw1",
                |a| a["status"] == "healthy" && a["connected_gateways"] == json!(["gw1"]),
            )
            .await;
        self.gw
            .gw
            .wait_metric(
                "kakuremichi_tunnel_agents_connected",
                &[("agent", "home")],
                |v| v == 1.0,
            )
            .await;
    }

    /// Creates `/direct` (straight to the origin) and `/private` (through "home") and waits
    /// until both serve.
    async fn two_routes(&self) -> (String, String) {
        let direct = self
            .api
            .route(
                json!({"name": "direct", "path": "/direct", "strip_path": true,
                          "upstream": self.origin.url()}),
            )
            .await;
        let private = self
            .api
            .route(
                json!({"name": "private", "path": "/private", "upstream": self.origin.url(),
                          "via": "home"}),
            )
            .await;
        let now = Instant::now();
        wait_for_status(self.gw.http(), "/direct/x", 200, now, DEADLINE).await;
        wait_for_status(self.gw.http(), "/private/x", 200, now, DEADLINE).await;
        (direct, private)
    }

    fn check_no_panics(&self) {
        assert_no_panic("control", &self.control.proc.output());
        assert_no_panic("the gateway", &self.gw.output());
        assert_no_panic("the agent", &self.agent.output());
    }
}

/// What `kakuremichi check` says about a managed gateway file with this `[[routes]]` entry
/// (the part after `file:line:column: `).
fn check_message(route_toml: &str) -> String {
    let dir = Scratch::new("managed-check");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[gateway]\nhttp = \"127.0.0.1:8080\"\n\n[control]\nurl = \"http://127.0.0.1:3000\"\ntoken = \"gtw_x\"\n\n{route_toml}"
        ),
    )
    .expect("write gateway.toml");
    let out = common::run_cli(&["check", "--config", file.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(2), "check refuses the file");
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let prefix = format!("{}:", file.display());
    let rest = text
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("file:line:column: message, got {text:?}"));
    // line:column: message
    let mut parts = rest.splitn(3, ':');
    let (line, column) = (parts.next(), parts.next());
    assert!(
        line.is_some_and(|l| l.parse::<u32>().is_ok())
            && column.is_some_and(|c| c.parse::<u32>().is_ok()),
        "file:line:column: message, got {text:?}"
    );
    parts.next().unwrap_or_default().trim().to_string()
}

// ---------------------------------------------------------------------------------------
// Routes through the API, served everywhere within a second

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_the_api_serve_within_a_second_directly_and_through_the_agent() {
    let _serial = serial().await;
    let mut s = Setup::start(None).await;

    // The admin token was created on first start and printed exactly once.
    let token_file = s.control_dir.join("admin.token");
    assert!(s.control.admin.starts_with("adm_") && s.control.admin.len() == 68);
    s.control.proc.stdout.wait_line(&s.control.admin).await;
    let printed: Vec<String> = s
        .control
        .proc
        .stdout
        .all()
        .into_iter()
        .chain(s.control.proc.stderr.all())
        .filter(|l| l.contains(&s.control.admin))
        .collect();
    assert_eq!(
        printed.len(),
        1,
        "the admin token is printed once: {printed:?}"
    );
    assert!(printed[0].contains("admin token"), "{}", printed[0]);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)
            .expect("admin.token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "admin.token is private");
    }
    // The API wants that token.
    let wrong = s.api.with_token("adm_wrong");
    assert_eq!(wrong.get("/api/v1/routes").await.status, 401);

    // Status from heartbeats: the gateway's pin, the agent's connected gateways.
    s.wait_connected().await;
    let gws = Api::expect(
        s.api.get("/api/v1/gateways").await,
        200,
        "GET /api/v1/gateways",
    );
    assert_eq!(gws[0]["name"], "gw1");
    assert_eq!(gws[0]["address"], s.gw.tunnel_addr());
    assert!(gws[0]["last_seen"].is_string(), "{gws}");
    let agents = Api::expect(s.api.get("/api/v1/agents").await, 200, "GET /api/v1/agents");
    assert_eq!(agents[0]["name"], "home");
    assert!(agents[0]["last_seen"].is_string(), "{agents}");

    // A direct route: from POST to served in under a second.
    let started = Instant::now();
    let direct = s
        .api
        .route(
            json!({"name": "direct", "path": "/direct", "strip_path": true,
                      "upstream": s.origin.url()}),
        )
        .await;
    let took = wait_for_status(s.gw.http(), "/direct/hello", 200, started, PUSH_LIMIT).await;
    eprintln!("direct route served {took:?} after the POST");
    let r = get(s.gw.http(), "app.test", "/direct/hello").await;
    assert_eq!(r.json()["path"], "/hello", "strip_path applies");

    // A route through the managed agent: the same.
    let started = Instant::now();
    let private = s
        .api
        .route(
            json!({"name": "private", "path": "/private", "upstream": s.origin.url(),
                      "via": "home"}),
        )
        .await;
    let took = wait_for_status(s.gw.http(), "/private/x", 200, started, PUSH_LIMIT).await;
    eprintln!("via route served {took:?} after the POST");
    let r = get(s.gw.http(), "app.test", "/private/x").await;
    assert_eq!(r.json()["origin"], "private");

    // The gateway reports the version it runs, and saved it in state_dir.
    let version = s.api.version().await;
    s.api
        .wait_entry(
            "/api/v1/gateways",
            &s.gw_id,
            "the gateway's config_version",
            |g| g["config_version"] == version,
        )
        .await;
    let saved =
        s.gw.saved_snapshot()
            .expect("control-snapshot.json in state_dir");
    assert_eq!(saved["version"], version);
    assert_eq!(saved["routes"].as_array().map(Vec::len), Some(2));

    // PUT changes a route: the new path serves within a second, the old one is gone.
    let mut edited = Api::expect(
        s.api.get(&format!("/api/v1/routes/{direct}")).await,
        200,
        "GET the route",
    );
    edited["path"] = json!("/moved");
    let started = Instant::now();
    Api::expect(
        s.api.put(&format!("/api/v1/routes/{direct}"), edited).await,
        200,
        "PUT the route",
    );
    let took = wait_for_status(s.gw.http(), "/moved/hello", 200, started, PUSH_LIMIT).await;
    eprintln!("changed route served {took:?} after the PUT");
    assert_eq!(
        status_of(s.gw.http(), "app.test", "/direct/hello").await,
        Some(404)
    );

    // DELETE removes it: 404 within a second.
    let started = Instant::now();
    Api::expect(
        s.api.delete(&format!("/api/v1/routes/{direct}")).await,
        204,
        "DELETE the route",
    );
    let took = wait_for_status(s.gw.http(), "/moved/hello", 404, started, PUSH_LIMIT).await;
    eprintln!("deleted route gone {took:?} after the DELETE");
    Api::expect(
        s.api.get(&format!("/api/v1/routes/{direct}")).await,
        404,
        "GET a deleted route",
    );

    // Validation: the messages of `kakuremichi check`, naming the field; nothing pushed.
    let before = s.api.version().await;
    let bad = s
        .api
        .post(
            "/api/v1/routes",
            json!({"name": "slow", "upstream": s.origin.url(),
                   "timeouts": {"connect": "5 parsecs"}}),
        )
        .await;
    let e = Api::expect(bad, 400, "a route with a bad duration");
    let expected = check_message(&format!(
        "[[routes]]\nname = \"slow\"\nupstream = \"{}\"\ntimeouts = {{ connect = \"5 parsecs\" }}\n",
        s.origin.url()
    ));
    // Where check says file:line:column, the API names the field.
    assert_eq!(e["field"], "timeouts.connect", "{e}");
    assert_eq!(
        e["message"],
        format!("timeouts.connect: {expected}").as_str(),
        "{e}"
    );
    let e = Api::expect(
        s.api
            .post(
                "/api/v1/routes",
                json!({"name": "typo", "upstream": s.origin.url(), "strip_pth": true}),
            )
            .await,
        400,
        "a route with an unknown field",
    );
    let expected = check_message(&format!(
        "[[routes]]\nname = \"typo\"\nupstream = \"{}\"\nstrip_pth = true\n",
        s.origin.url()
    ));
    assert_eq!(e["message"], expected.as_str(), "{e}");
    assert_eq!(e["field"], "strip_pth", "{e}");
    let e = Api::expect(
        s.api
            .post(
                "/api/v1/routes",
                json!({"name": "lost", "upstream": s.origin.url(), "via": "nobody"}),
            )
            .await,
        400,
        "a route through an unknown agent group",
    );
    assert_eq!(e["field"], "via", "{e}");
    assert_eq!(
        s.api.version().await,
        before,
        "refused input changes nothing"
    );

    // A second gateway joins while everything runs: it gets every route, the agent learns
    // its address and pin by push and dials it too; the tunnel to gw1 stays up meanwhile.
    let tunnel2 = free_tunnel_port();
    let (gw2_id, gw2_token) = s.api.gateway("gw2", &format!("127.0.0.1:{tunnel2}")).await;
    let state2 = Scratch::new("managed-state2");
    // Requests to gw1 from before gw2 starts until gw2 serves through the agent.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stop, gw1) = (stop.clone(), s.gw.http());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                answers.push(status_of(gw1, "app.test", "/private/x").await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        })
    };
    let joined = Instant::now();
    let gw2 = ManagedGateway::start(&s.control.url(), &gw2_token, state2.path(), tunnel2).await;
    let took = wait_for_status(gw2.http(), "/private/x", 200, joined, DEADLINE).await;
    eprintln!("gw2 served through the agent {took:?} after it was started");
    // The agent's tunnels are restarted on a change of gateways; give gw1 a moment to show
    // an interruption, if any.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let gw1_answers = watcher.await.expect("watcher");
    let failed: Vec<_> = gw1_answers.iter().filter(|a| **a != Some(200)).collect();
    assert!(gw1_answers.len() > 10, "{gw1_answers:?}");
    assert!(
        failed.is_empty(),
        "gw1 kept its tunnel while the agent joined gw2 ({} of {} requests failed: {failed:?})",
        failed.len(),
        gw1_answers.len(),
    );
    let pin2 = gw2.pin();
    s.api
        .wait_entry(
            "/api/v1/gateways",
            &gw2_id,
            "gw2 healthy with its pin",
            |g| g["status"] == "healthy" && g["pin"] == pin2.as_str(),
        )
        .await;
    let a = s
        .api
        .wait_entry(
            "/api/v1/agents",
            &s.agent_id,
            "home healthy and connected to both gateways",
            |a| {
                a["status"] == "healthy"
                    && a["connected_gateways"].as_array().map(Vec::len) == Some(2)
            },
        )
        .await;
    let mut connected: Vec<&str> = a["connected_gateways"]
        .as_array()
        .map(|l| l.iter().filter_map(|g| g.as_str()).collect())
        .unwrap_or_default();
    connected.sort_unstable();
    assert_eq!(connected, ["gw1", "gw2"]);

    // Deleting the agent disconnects it within a second: the via route answers 503 at
    // every gateway.
    let started = Instant::now();
    Api::expect(
        s.api
            .delete(&format!("/api/v1/agents/{}", s.agent_id))
            .await,
        204,
        "DELETE the agent",
    );
    let took = wait_for_status(s.gw.http(), "/private/x", 503, started, PUSH_LIMIT).await;
    wait_for_status(gw2.http(), "/private/x", 503, started, PUSH_LIMIT).await;
    eprintln!("deleted agent disconnected {took:?} after the DELETE");
    // The agent hears its token was revoked and stops, saying why.
    let status = s.agent.wait_exit(DEADLINE).await;
    assert!(!status.success(), "a revoked agent exits with an error");
    assert!(
        s.agent.output().contains("refused"),
        "the agent says its token was refused:\n{}",
        s.agent.output()
    );
    // The route stays (it names a group that may come back) and answers 503 meanwhile.
    Api::expect(
        s.api.get(&format!("/api/v1/routes/{private}")).await,
        200,
        "GET the route through the deleted agent",
    );
    s.check_no_panics();
    assert_no_panic("gw2", &gw2.output());
    drop(gw2);
    drop(state2);
}

// ---------------------------------------------------------------------------------------
// Resilience: control down, gateway restarted, control back

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_rides_out_a_control_outage_and_resyncs() {
    let _serial = serial().await;
    let s = Setup::start(None).await;
    s.wait_connected().await;
    s.two_routes().await;
    let Setup {
        mut agent,
        gw,
        control,
        api,
        gw_id,
        agent_id,
        origin,
        _state,
        _agent_dir,
        control_dir,
    } = s;

    // Control dies without a goodbye; the gateway and the agent keep serving.
    let (dir, database, addr) = control.kill().await;
    gw.wait_message("control client: disconnected").await;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(
            status_of(gw.http(), "app.test", "/direct/x").await,
            Some(200)
        );
        assert_eq!(
            status_of(gw.http(), "app.test", "/private/x").await,
            Some(200)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The gateway restarts while control is still down: it serves its saved snapshot, and
    // the agent (also cut off from control) finds it again by address and pin.
    let pin = gw.pin();
    let gw = gw.restart().await;
    assert_eq!(gw.pin(), pin, "the pin survives the restart");
    gw.wait_message("starting from the last snapshot pushed by control")
        .await;
    assert_eq!(
        status_of(gw.http(), "app.test", "/direct/x").await,
        Some(200),
        "served from the saved snapshot at once"
    );
    wait_for_status(gw.http(), "/private/x", 200, Instant::now(), DEADLINE).await;
    assert!(
        gw.messages_with("control client: connected").is_empty(),
        "control is still down"
    );

    // Control comes back on the same port and database: nothing lost, no new admin token,
    // and the gateway resyncs: a route added now serves within a second of its POST once
    // the gateway is back.
    let control = Control::restart(&dir, &database, addr).await;
    assert!(
        control
            .proc
            .stdout
            .all()
            .iter()
            .all(|l| !l.contains("admin token")),
        "the admin token is printed on the first start only"
    );
    assert_eq!(control.admin, api.token, "the same admin token");
    let routes = Api::expect(api.get("/api/v1/routes").await, 200, "GET /api/v1/routes");
    assert_eq!(routes.as_array().map(Vec::len), Some(2), "{routes}");
    let reconnect = Instant::now();
    gw.wait_message("control client: connected").await;
    eprintln!(
        "the gateway reconnected {:?} after control came back",
        reconnect.elapsed()
    );
    let started = Instant::now();
    api.route(json!({"name": "after", "path": "/after", "upstream": origin.url()}))
        .await;
    let took = wait_for_status(gw.http(), "/after", 200, started, PUSH_LIMIT).await;
    eprintln!("route added after the control restart served in {took:?}");
    // The restarted gateway resumed from its saved version: control answered `current` on
    // reconnect, and the only snapshot it applied is the one with the new route.
    gw.wait_message("configuration reloaded").await;
    let applied = gw
        .messages_with("configuration reloaded")
        .into_iter()
        .filter(|m| m["trigger"] == "snapshot from control")
        .count();
    assert_eq!(applied, 1, "{}", gw.output());
    api.wait_entry(
        "/api/v1/gateways",
        &gw_id,
        "the gateway healthy again",
        |g| g["status"] == "healthy",
    )
    .await;

    // The agent is back on control too; killed, it is shown down at once (its push socket
    // closed), with no connected gateways.
    common::eventually("the agent reconnects to control", DEADLINE, || {
        let n = agent
            .stdout
            .messages_with("control client: connected")
            .len();
        async move { (n >= 2).then_some(()) }
    })
    .await;
    assert_no_panic("the agent", &agent.output());
    agent.kill().await;
    let a = api
        .wait_entry(
            "/api/v1/agents",
            &agent_id,
            "the killed agent shown down",
            |a| a["status"] == "down",
        )
        .await;
    assert_eq!(a["connected_gateways"], json!([]), "{a}");

    assert_no_panic("control", &control.proc.output());
    assert_no_panic("the gateway", &gw.output());
    drop((agent, gw, control));
    drop((_state, _agent_dir, control_dir));
}

// ---------------------------------------------------------------------------------------
// Refused tokens

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_logged_and_the_last_snapshot_keeps_serving() {
    let _serial = serial().await;
    let s = Setup::start(None).await;
    s.wait_connected().await;
    s.two_routes().await;
    let Setup {
        agent,
        gw,
        control,
        api,
        gw_id,
        _state,
        _agent_dir,
        control_dir,
        ..
    } = s;
    let good = gw.token.clone();

    // A wrong token: the gateway says so and serves what it saved.
    let wrong = format!("gtw_{}", "0".repeat(64));
    let gw = gw.restart_with(&wrong).await;
    gw.wait_message("token was refused").await;
    assert!(
        !gw.gw.logs.text().contains(&wrong),
        "the token is not logged"
    );
    assert_eq!(
        status_of(gw.http(), "app.test", "/direct/x").await,
        Some(200)
    );
    wait_for_status(gw.http(), "/private/x", 200, Instant::now(), DEADLINE).await;

    // Back with the right token, then the gateway is deleted: refused again, and its last
    // snapshot still serves; the agents, told by control that the gateway is gone, stop
    // dialing it, so routes through them answer 503.
    let mut gw = gw.restart_with(&good).await;
    gw.wait_message("control client: connected").await;
    Api::expect(
        api.delete(&format!("/api/v1/gateways/{gw_id}")).await,
        204,
        "DELETE the gateway",
    );
    gw.wait_message("token was refused").await;
    assert_eq!(
        status_of(gw.http(), "app.test", "/direct/x").await,
        Some(200)
    );
    wait_for_status(gw.http(), "/private/x", 503, Instant::now(), DEADLINE).await;
    assert_eq!(
        status_of(gw.http(), "app.test", "/direct/x").await,
        Some(200)
    );
    assert!(!gw.gw.has_exited(), "the gateway keeps running");

    assert_no_panic("control", &control.proc.output());
    assert_no_panic("the gateway", &gw.output());
    drop((agent, gw, control));
    drop((_state, _agent_dir, control_dir));
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_gateway_follows_control_on_postgres() {
    let _serial = serial().await;
    let Some(pg) = Postgres::start("PostgreSQL managed-gateway test") else {
        return;
    };
    let database = pg.create_database("managed");
    let s = Setup::start(Some(&database)).await;
    let info = Api::expect(s.api.get("/api/v1/info").await, 200, "GET /api/v1/info");
    assert_eq!(info["database"], "postgres", "{info}");
    s.wait_connected().await;

    let started = Instant::now();
    s.api
        .route(json!({"name": "pg", "path": "/pg", "upstream": s.origin.url(), "via": "home"}))
        .await;
    let took = wait_for_status(s.gw.http(), "/pg", 200, started, PUSH_LIMIT).await;
    eprintln!("postgres: via route served {took:?} after the POST");

    // Control restarts on the same database: the gateway resyncs.
    let Setup {
        agent,
        gw,
        control,
        api,
        origin,
        _state,
        _agent_dir,
        control_dir,
        ..
    } = s;
    let (dir, database, addr) = control.kill().await;
    gw.wait_message("control client: disconnected").await;
    assert_eq!(status_of(gw.http(), "app.test", "/pg").await, Some(200));
    let control = Control::restart(&dir, &database, addr).await;
    let connected = gw.messages_with("control client: connected").len();
    common::eventually("the gateway reconnects", DEADLINE, || {
        let n = gw.messages_with("control client: connected").len();
        async move { (n > connected).then_some(()) }
    })
    .await;
    let started = Instant::now();
    api.route(json!({"name": "pg-after", "path": "/pg-after", "upstream": origin.url()}))
        .await;
    wait_for_status(gw.http(), "/pg-after", 200, started, PUSH_LIMIT).await;

    assert_no_panic("control", &control.proc.output());
    assert_no_panic("the gateway", &gw.output());
    drop((agent, gw, control));
    drop((_state, _agent_dir, control_dir, pg));
}

// ---------------------------------------------------------------------------------------
// The demo

/// The URL right after `label` in a line the demo printed.
fn url_after(line: &str, label: &str) -> String {
    line.split_once(label)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .filter(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL after {label:?} in {line:?}"))
        .to_string()
}

fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no host:port in {url:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_prints_working_urls_and_stops_on_ctrl_c() {
    let _serial = serial().await;
    let mut demo = Proc::spawn(&[OsStr::new("demo"), OsStr::new("--port"), OsStr::new("0")]);

    let through = demo.stdout.wait_line("through the agent:").await;
    let gateway = addr_of(&url_after(&through, "through the agent:"));
    assert_ne!(
        gateway.port(),
        0,
        "the demo prints the port it picked: {through}"
    );
    let ui_line = demo.stdout.wait_line("web UI:").await;
    let ui = addr_of(&url_after(&ui_line, "web UI:"));
    let admin = ui_line
        .split_whitespace()
        .find(|w| w.starts_with("adm_"))
        .unwrap_or_else(|| panic!("the admin token is printed: {ui_line}"))
        .to_string();
    let files = demo.stdout.wait_line("files:").await;
    let files = files
        .split_once("files:")
        .map(|(_, p)| p.trim().to_string())
        .expect("a folder");

    // The sample app answers through the agent, and directly.
    wait_for_status(gateway, "/", 200, Instant::now(), DEADLINE).await;
    let page = get(gateway, "127.0.0.1", "/").await;
    assert!(
        page.text().contains("came through the kakuremichi gateway"),
        "{}",
        page.text()
    );
    assert!(
        page.text().contains("x-forwarded-for"),
        "the app saw the gateway's forwarding headers: {}",
        page.text()
    );
    wait_for_status(gateway, "/direct/api/hello", 200, Instant::now(), DEADLINE).await;

    // The web UI and the API with the printed token.
    let r = get(ui, "127.0.0.1", "/").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        r.header("content-type")
    );
    assert!(r.text().to_ascii_lowercase().contains("<html"));
    let api = Api {
        addr: ui,
        token: admin,
    };
    let routes = Api::expect(api.get("/api/v1/routes").await, 200, "GET /api/v1/routes");
    assert_eq!(routes.as_array().map(Vec::len), Some(2), "{routes}");
    let agents = Api::expect(api.get("/api/v1/agents").await, 200, "GET /api/v1/agents");
    assert_eq!(agents[0]["name"], "demo-agent", "{agents}");

    // Ctrl-C: exit 0, temporary folder gone.
    demo.signal("INT");
    let status = demo.wait_exit(DEADLINE).await;
    assert!(
        status.success(),
        "exit 0 on SIGINT: {status}\n{}",
        demo.output()
    );
    assert!(
        !std::path::Path::new(&files).exists(),
        "the demo removes {files}"
    );
    assert_no_panic("the demo", &demo.output());
}
