//! The REST API suite, run against SQLite and against PostgreSQL: authentication, agents,
//! gateways, routes (with the same messages as `kakuremichi check`), bad input of every
//! kind, and persistence across a restart.

mod common;

use std::path::Path;

use common::{Api, Backend, Server, TempDir, str_of};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What `kakuremichi check` says about a managed gateway file holding these routes.
fn check_message(routes_toml: &str) -> String {
    let text = format!("[gateway]\n[control]\nurl = \"http://c\"\n\n{routes_toml}");
    match kakuremichi_config::parse_gateway(Path::new("gw.toml"), &text) {
        Ok(_) => panic!("expected the check to fail for {routes_toml}"),
        Err(kakuremichi_config::ConfigError::Invalid(l)) => l.message,
        Err(e) => panic!("{e}"),
    }
}

async fn auth(s: &Server) {
    let anon = s.api().with_token(None);
    let r = anon.get("/api/v1/agents").await.expect(401);
    assert_eq!(r.json()["error"], "unauthorized");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    s.api()
        .with_token(Some("adm_wrong"))
        .get("/api/v1/routes")
        .await
        .expect(401);
    // A peer token is no admin token.
    let (_, agent_token) = s.api().agent("auth-probe").await;
    s.api()
        .with_token(Some(&agent_token))
        .get("/api/v1/agents")
        .await
        .expect(401);
    anon.get("/api/v1/openapi.json").await.expect(200);
    anon.get("/healthz").await.expect(200);
    let info = s.api().get("/api/v1/info").await.expect(200).json();
    assert_eq!(info["public_url"], format!("http://{}", s.addr));
}

async fn agents_and_gateways(s: &Server) {
    let api = s.api();
    let created = api
        .post("/api/v1/agents", json!({"name": "home"}))
        .await
        .expect(201);
    let location = created.headers["location"]
        .to_str()
        .expect("location")
        .to_string();
    let v = created.json();
    let token = str_of(&v["token"]);
    assert!(token.starts_with("agt_") && token.len() == 68, "{token}");
    assert!(str_of(&v["config"]).contains(&token));
    assert!(str_of(&v["config"]).contains(&format!("url = \"http://{}\"", s.addr)));
    assert_eq!(v["command"], "kakuremichi agent --config agent.toml");
    let id = str_of(&v["id"]);
    assert_eq!(location, format!("/api/v1/agents/{id}"));

    let one = api.get(&location).await.expect(200).json();
    assert_eq!(one["name"], "home");
    assert_eq!(one["status"], "down");
    assert_eq!(one["last_seen"], Value::Null);
    assert!(one.get("token").is_none(), "tokens are shown once");
    let list = api.get("/api/v1/agents").await.expect(200).json();
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|a| a["id"] == id.as_str())
    );

    let dup = api
        .post("/api/v1/agents", json!({"name": "home"}))
        .await
        .expect(409)
        .json();
    assert_eq!(dup["error"], "conflict");
    assert_eq!(dup["field"], "name");
    assert!(str_of(&dup["message"]).contains("home"));

    for (body, field) in [
        (json!({"name": "has space"}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": 5}), "name"),
        (json!({}), "name"),
        (json!({"name": "x", "colour": "red"}), "colour"),
    ] {
        let e = api
            .post("/api/v1/agents", body.clone())
            .await
            .expect(400)
            .json();
        assert_eq!(e["field"], field, "{body} → {e}");
        assert!(str_of(&e["message"]).contains(field), "{e}");
    }

    let g = api
        .post(
            "/api/v1/gateways",
            json!({"name": "gw1", "address": "gw1.example.com:7844"}),
        )
        .await
        .expect(201)
        .json();
    assert!(str_of(&g["token"]).starts_with("gtw_"));
    assert!(str_of(&g["config"]).contains("tunnel = \"0.0.0.0:7844\""));
    let gid = str_of(&g["id"]);
    let one = api
        .get(&format!("/api/v1/gateways/{gid}"))
        .await
        .expect(200)
        .json();
    assert_eq!(one["address"], "gw1.example.com:7844");
    assert_eq!(one["status"], "down");
    assert_eq!(one["certificates"], json!([]));
    for (body, field) in [
        (json!({"name": "gw2", "address": "nowhere"}), "address"),
        (json!({"name": "gw2", "address": "gw:99999"}), "address"),
        (json!({"name": "gw2"}), "address"),
        (json!({"address": "a:1"}), "name"),
    ] {
        let e = api
            .post("/api/v1/gateways", body.clone())
            .await
            .expect(400)
            .json();
        assert_eq!(e["field"], field, "{body} → {e}");
    }
    api.post(
        "/api/v1/gateways",
        json!({"name": "gw1", "address": "other:1"}),
    )
    .await
    .expect(409);
    // An agent and a gateway may share a name: they are different kinds.
    api.post("/api/v1/agents", json!({"name": "gw1"}))
        .await
        .expect(201);

    api.delete(&format!("/api/v1/gateways/{gid}"))
        .await
        .expect(204);
    api.get(&format!("/api/v1/gateways/{gid}"))
        .await
        .expect(404);
    api.delete(&format!("/api/v1/gateways/{gid}"))
        .await
        .expect(404);
    // Agent ids are not gateway ids.
    api.get(&format!("/api/v1/gateways/{id}")).await.expect(404);
    api.delete(&location).await.expect(204);
    api.get(&location).await.expect(404);
}

async fn routes(s: &Server) {
    let api = s.api();
    api.agent("office").await;
    let created = api
        .post(
            "/api/v1/routes",
            json!({
                "name": "app", "hosts": ["app.example"], "path": "/app", "strip_path": true,
                "upstream": "http://10.0.0.5:8080", "via": "office",
                "timeouts": {"connect": "2s"},
                "cors": {"allow_origins": ["https://app.example"], "allow_credentials": true},
                "rate_limit": {"requests": 10, "per": "1s"},
                "note": null
            }),
        )
        .await
        .expect(201);
    let v = created.json();
    let id = str_of(&v["id"]);
    assert_eq!(v["name"], "app");
    assert_eq!(v["via"], "office");
    assert!(v.get("note").is_none(), "null fields are dropped");
    assert_eq!(
        created.headers["location"],
        format!("/api/v1/routes/{id}").as_str()
    );

    let got = api
        .get(&format!("/api/v1/routes/{id}"))
        .await
        .expect(200)
        .json();
    assert_eq!(got, v);
    let list = api.get("/api/v1/routes").await.expect(200).json();
    assert_eq!(list.as_array().expect("array").len(), 1);

    // PUT replaces; the GET output can be sent back as it is.
    let mut edited = got.clone();
    edited["path"] = json!("/app2");
    edited["enabled"] = json!(false);
    let put = api
        .put(&format!("/api/v1/routes/{id}"), edited.clone())
        .await
        .expect(200)
        .json();
    assert_eq!(put["path"], "/app2");
    assert_eq!(
        api.get(&format!("/api/v1/routes/{id}")).await.json()["enabled"],
        false
    );
    edited["id"] = json!("someone-else");
    let e = api
        .put(&format!("/api/v1/routes/{id}"), edited)
        .await
        .expect(400)
        .json();
    assert_eq!(e["field"], "id");
    api.put(
        "/api/v1/routes/doesnotexist",
        json!({"name": "x", "upstream": "http://a"}),
    )
    .await
    .expect(404);

    // The same messages as `kakuremichi check`.
    let e = api
        .post(
            "/api/v1/routes",
            json!({"name": "bad", "upstream": "ftp://x"}),
        )
        .await
        .expect(400)
        .json();
    assert_eq!(e["error"], "invalid_route");
    assert_eq!(e["field"], "upstream");
    let expected = check_message("[[routes]]\nname = \"bad\"\nupstream = \"ftp://x\"\n");
    assert!(
        str_of(&e["message"]).contains(&expected),
        "{e} vs {expected}"
    );

    let e = api
        .post(
            "/api/v1/routes",
            json!({"name": "bad", "upstream": "http://x", "methods": ["GE T"]}),
        )
        .await
        .expect(400)
        .json();
    let expected = check_message(
        "[[routes]]\nname = \"bad\"\nupstream = \"http://x\"\nmethods = [\"GE T\"]\n",
    );
    assert_eq!(e["field"], "methods");
    assert!(
        str_of(&e["message"]).contains(&expected),
        "{e} vs {expected}"
    );

    let e = api
        .post("/api/v1/routes", json!({"name": "bad"}))
        .await
        .expect(400)
        .json();
    assert_eq!(
        str_of(&e["message"]),
        check_message("[[routes]]\nname = \"bad\"\n")
    );

    for (body, field) in [
        (
            json!({"name": "bad", "upstream": "http://x", "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "timeouts": {"connect": "5"}}),
            "timeouts.connect",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "jwt": {"jwks": "x"}}),
            "jwt.jwks",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "hosts": "a.example"}),
            "hosts",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "max_body": "lots"}),
            "max_body",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "ip": {"allow": ["nope"]}}),
            "ip.allow",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "hosts": [null]}),
            "hosts",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "max_body": 18446744073709551615u64}),
            "max_body",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "path": "nope"}),
            "path",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "via": "nobody"}),
            "via",
        ),
        (
            json!({"name": "bad", "upstream": "http://x", "id": "x"}),
            "id",
        ),
    ] {
        let e = api
            .post("/api/v1/routes", body.clone())
            .await
            .expect(400)
            .json();
        assert_eq!(e["field"], field, "{body} → {e}");
        let last = field.rsplit('.').next().expect("segment");
        assert!(str_of(&e["message"]).contains(last), "{body} → {e}");
    }

    // Conflicts with other routes.
    let e = api
        .post(
            "/api/v1/routes",
            json!({"name": "app", "path": "/other", "upstream": "http://x"}),
        )
        .await
        .expect(409)
        .json();
    assert!(
        str_of(&e["message"]).contains("duplicate route name"),
        "{e}"
    );
    let e = api
        .post(
            "/api/v1/routes",
            json!({"name": "twin", "hosts": ["app.example"], "path": "/app2/", "upstream": "http://x"}),
        )
        .await
        .expect(409)
        .json();
    assert!(str_of(&e["message"]).contains("same hosts and path"), "{e}");
    // Disjoint methods may share hosts and path, as in a file.
    api.route(json!({"name": "m1", "path": "/m", "methods": ["GET"], "upstream": "http://x"}))
        .await;
    let other = api
        .route(json!({"name": "m2", "path": "/m", "methods": ["POST"], "upstream": "http://x"}))
        .await;
    // Renaming onto another route's name is a conflict too.
    let e = api
        .put(
            &format!("/api/v1/routes/{other}"),
            json!({"name": "app", "path": "/z", "upstream": "http://x"}),
        )
        .await
        .expect(409)
        .json();
    assert_eq!(e["error"], "conflict");

    api.delete(&format!("/api/v1/routes/{id}"))
        .await
        .expect(204);
    api.get(&format!("/api/v1/routes/{id}")).await.expect(404);
    api.delete(&format!("/api/v1/routes/{id}"))
        .await
        .expect(404);
}

async fn raw_request(s: &Server, head: &str, body: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    let _ = tcp.write_all(body).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("answer in time")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

async fn bad_input(s: &Server) {
    let api = s.api();
    for (path, body) in [
        ("/api/v1/routes", &b"{not json"[..]),
        ("/api/v1/routes", b""),
        ("/api/v1/agents", b"[1, 2"),
        ("/api/v1/agents", b"\xff\xfe"),
        ("/api/v1/gateways", b"null"),
        ("/api/v1/routes", b"[]"),
        ("/api/v1/routes", b"\"text\""),
    ] {
        let r = api.send("POST", path, Some(body.to_vec())).await;
        assert_eq!(r.status, 400, "{path} {body:?}: {:?}", r.body);
        let e = r.json();
        assert!(e["error"].is_string() && e["message"].is_string(), "{e}");
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    api.send("POST", "/api/v1/routes", Some(deep.into_bytes()))
        .await
        .expect(400);
    let deep_obj = format!(
        "{{\"name\":\"d\",\"upstream\":\"http://x\",\"jwt\":{}1{}}}",
        "{\"a\":".repeat(100),
        "}".repeat(100)
    );
    api.send("POST", "/api/v1/routes", Some(deep_obj.into_bytes()))
        .await
        .expect(400);

    // Oversized bodies: declared, and streamed without a length.
    let big = vec![b' '; 2 << 20];
    let r = api
        .send("POST", "/api/v1/routes", Some(big))
        .await
        .expect(413);
    assert_eq!(r.json()["error"], "payload_too_large");
    let head = format!(
        "POST /api/v1/agents HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\n",
        s.admin
    );
    let mut chunked = Vec::new();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend(std::iter::repeat_n(b' ', 64 << 10));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_request(s, &head, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Unknown paths and wrong methods.
    let r = api.get("/api/v1/nothing").await.expect(404);
    assert_eq!(r.json()["error"], "not_found");
    api.get("/nothing").await.expect(404);
    let r = api.send("PATCH", "/api/v1/routes", None).await.expect(405);
    assert_eq!(r.headers["allow"], "GET, POST");
    let r = api.send("PUT", "/api/v1/agents/x", None).await.expect(405);
    assert_eq!(r.headers["allow"], "GET, DELETE");
    api.send("POST", "/api/v1/openapi.json", None)
        .await
        .expect(405);
    api.get("/api/v1/agents/a/b").await.expect(404);
    // The push endpoint without an upgrade.
    let (_, token) = api.agent("plain-get").await;
    let r = api
        .with_token(Some(&token))
        .get("/api/v1/connect")
        .await
        .expect(426);
    assert_eq!(r.json()["error"], "upgrade_required");
    api.with_token(Some("agt_nope"))
        .get("/api/v1/connect")
        .await
        .expect(401);
    api.get("/api/v1/connect").await.expect(401);
    // Garbage on the wire does not take the server down.
    let answer = raw_request(s, "\x16\x03\x01garbage\r\n\r\n", b"").await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    api.get("/healthz").await.expect(200);
}

async fn deleted_tokens(s: &Server) {
    let api = s.api();
    let (id, token) = api.agent("doomed").await;
    let ws = common::push_connect(s, &token, "").await.expect("connects");
    drop(ws);
    api.delete(&format!("/api/v1/agents/{id}"))
        .await
        .expect(204);
    assert_eq!(common::push_connect(s, &token, "").await.err(), Some(401));
    // A new agent with the same name gets a new token; the old one stays dead.
    let (_, new_token) = api.agent("doomed").await;
    assert_ne!(new_token, token);
    assert_eq!(common::push_connect(s, &token, "").await.err(), Some(401));
    assert!(common::push_connect(s, &new_token, "").await.is_ok());
}

/// Everything is still there after a restart on the same database, and the admin token
/// file is reused, not replaced.
async fn restart(backend: &Backend) {
    let dir = TempDir::new("restart");
    let db = backend.fresh_database(&dir).await;
    let s = Server::start(&db, &dir).await;
    let api = s.api();
    api.agent("persist").await;
    let rid = api
        .route(json!({"name": "kept", "upstream": "http://127.0.0.1:1"}))
        .await;
    let admin = s.admin.clone();
    let version = api.get("/api/v1/info").await.json()["config_version"].clone();
    s.stop().await;
    let s = Server::start(&db, &dir).await;
    assert_eq!(s.admin, admin, "the admin token file is kept");
    let api = s.api();
    api.get(&format!("/api/v1/routes/{rid}")).await.expect(200);
    let agents = api.get("/api/v1/agents").await.json();
    assert_eq!(agents[0]["name"], "persist");
    assert_eq!(
        api.get("/api/v1/info").await.json()["config_version"],
        version
    );
    s.stop().await;
}

async fn suite(backend: Backend) {
    eprintln!("API suite against {}", backend.name());
    let dir = TempDir::new("api");
    let db = backend.fresh_database(&dir).await;
    let s = Server::start(&db, &dir).await;
    auth(&s).await;
    agents_and_gateways(&s).await;
    routes(&s).await;
    bad_input(&s).await;
    deleted_tokens(&s).await;
    s.stop().await;
    restart(&backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_suite_sqlite() {
    suite(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_suite_postgres() {
    let Some(pg) = kakuremichi_testkit::postgres::Postgres::start("PostgreSQL tests") else {
        return;
    };
    suite(Backend::Postgres(pg)).await;
}

#[tokio::test]
async fn unsupported_databases_are_refused_with_a_message() {
    let dir = TempDir::new("baddb");
    let settings = kakuremichi_control::ControlSettings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database: "mysql://u:secret@h/db".into(),
        public_url: None,
        admin_token_file: dir.path().join("admin.token"),
    };
    let debug = format!("{settings:?}");
    assert!(!debug.contains("secret"), "{debug}");
    let err = kakuremichi_control::bind(settings)
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("unsupported database") && !text.contains("secret"),
        "{text}"
    );
}

#[tokio::test]
async fn settings_from_a_control_file_resolve_relative_paths() {
    let file: kakuremichi_config::control::ControlFile =
        toml::from_str("[control]\nlisten = \"127.0.0.1:0\"\ndatabase = \"sqlite://data/k.db\"\n")
            .expect("parse");
    let s =
        kakuremichi_control::ControlSettings::from_file(&file, Path::new("/etc/km/control.toml"));
    assert_eq!(s.database, "sqlite:///etc/km/data/k.db");
    assert_eq!(s.admin_token_file, Path::new("/etc/km/admin.token"));
    let _ = Api::new(String::new(), None);
}
