//! The OpenAPI document matches the server: every documented path and method answers (not
//! 404 or 405) with a documented status, undocumented methods on those paths are 405, and a
//! route using every documented route field is accepted.

mod common;

use std::collections::BTreeSet;

use common::{Api, Backend, Server, TempDir, str_of};
use serde_json::{Value, json};

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "options", "head"];

/// Creates what `{id}` stands for under `path`; returns its id.
async fn fresh_id(api: &Api, path: &str, n: usize) -> String {
    if path.starts_with("/api/v1/agents") {
        api.agent(&format!("walk-agent-{n}")).await.0
    } else if path.starts_with("/api/v1/gateways") {
        api.gateway(&format!("walk-gw-{n}"), "127.0.0.1:7844")
            .await
            .0
    } else if path.starts_with("/api/v1/routes") {
        api.route(json!({"name": format!("walk-route-{n}"), "path": format!("/walk/{n}"), "upstream": "http://127.0.0.1:1"}))
            .await
    } else {
        panic!("no fixture for {{id}} in {path}")
    }
}

fn sample_body(path: &str, n: usize) -> Value {
    if path.starts_with("/api/v1/agents") {
        json!({"name": format!("walk-new-agent-{n}")})
    } else if path.starts_with("/api/v1/gateways") {
        json!({"name": format!("walk-new-gw-{n}"), "address": "gw.example:7844"})
    } else {
        json!({"name": format!("walk-new-route-{n}"), "path": format!("/walk-new/{n}"), "upstream": "http://127.0.0.1:1"})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_exists() {
    let dir = TempDir::new("openapi");
    let s = Server::start(&Backend::Sqlite.fresh_database(&dir).await, &dir).await;
    let api = s.api();
    let doc = api
        .with_token(None)
        .get("/api/v1/openapi.json")
        .await
        .expect(200)
        .json();
    assert!(str_of(&doc["openapi"]).starts_with("3."), "OpenAPI 3");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 8, "the document lists the API");
    let mut walked = 0;
    let mut n = 0;
    for (path, item) in paths {
        for method in METHODS {
            n += 1;
            let concrete = if path.contains("{id}") {
                path.replace("{id}", &fresh_id(&api, path, n).await)
            } else {
                path.clone()
            };
            let documented = item.get(*method);
            let body = matches!(*method, "post" | "put")
                .then(|| sample_body(path, n).to_string().into_bytes());
            let r = api.send(&method.to_uppercase(), &concrete, body).await;
            let status = r.status.as_u16();
            match documented {
                Some(op) => {
                    walked += 1;
                    assert!(
                        status != 404 && status != 405,
                        "{method} {path} → {status}: {:?}",
                        r.body
                    );
                    assert!(
                        op["responses"].get(status.to_string()).is_some(),
                        "{method} {path} answered {status}, which the document does not list"
                    );
                }
                None => assert_eq!(
                    status, 405,
                    "{method} {path} is not documented but answered {status}"
                ),
            }
        }
    }
    assert!(walked >= 13, "walked {walked} operations");
    s.stop().await;
}

/// Dotted names of every property of a schema, recursively.
fn properties(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = schema["properties"].as_object() {
        for (k, v) in props {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.insert(name.clone());
            properties(v, &name, out);
        }
    }
}

fn keys(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let Some(obj) = v.as_object() {
        for (k, v) in obj {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.insert(name.clone());
            // Maps of names to values hold entries, not fields.
            if !matches!(
                k.as_str(),
                "forward_claims" | "request_set" | "response_set"
            ) {
                keys(v, &name, out);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_field_is_accepted() {
    let dir = TempDir::new("openapi-route");
    let s = Server::start(&Backend::Sqlite.fresh_database(&dir).await, &dir).await;
    let api = s.api();
    api.agent("home").await;
    let doc = api.get("/api/v1/openapi.json").await.expect(200).json();
    let mut documented = BTreeSet::new();
    properties(
        &doc["components"]["schemas"]["RouteInput"],
        "",
        &mut documented,
    );

    let everything = json!({
        "name": "everything",
        "hosts": ["app.example", "*.app.example"],
        "path": "/all",
        "strip_path": true,
        "methods": ["GET", "POST"],
        "upstream": "https://origin.example",
        "via": "home",
        "host_header": "origin.example",
        "tls_verify": false,
        "max_body": "500MiB",
        "timeouts": {"connect": "5s", "response": "60s", "idle": "24h"},
        "load_balance": "least_requests",
        "health_check": {"path": "/healthz", "interval": "5s", "timeout": "1s"},
        "enabled": true,
        "jwt": {
            "jwks_uri": "https://idp.example/.well-known/jwks.json",
            "secret_file": "hs256.key",
            "issuer": "https://idp.example",
            "audiences": ["client-id"],
            "algorithms": ["RS256"],
            "roles_claim": "cognito:groups",
            "require_roles": ["admin"],
            "scopes_claim": "scope",
            "require_scopes": ["service/user.read"],
            "forward_claims": {"x-user-sub": "sub"}
        },
        "rate_limit": {"key": "ip", "requests": 100, "per": "1m", "burst": 20, "store": "redis://127.0.0.1:6379", "on_store_error": "deny"},
        "api_keys": {"header": "x-api-key", "keys_file": "api-keys.toml"},
        "cors": {
            "allow_origins": ["https://app.example"],
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["content-type"],
            "expose_headers": ["x-request-id"],
            "allow_credentials": true,
            "max_age": "10m"
        },
        "ip": {"allow": ["203.0.113.0/24"], "deny": ["203.0.113.7"]},
        "headers": {
            "request_set": {"x-from": "edge"},
            "request_remove": ["x-internal"],
            "response_set": {"strict-transport-security": "max-age=31536000"},
            "response_remove": ["server"]
        }
    });
    let mut sent = BTreeSet::new();
    keys(&everything, "", &mut sent);
    sent.insert("upstreams".into());
    assert_eq!(
        sent, documented,
        "the sample covers exactly the documented fields"
    );
    let stored = api
        .post("/api/v1/routes", everything.clone())
        .await
        .expect(201)
        .json();
    for (k, v) in everything.as_object().expect("object") {
        assert_eq!(&stored[k], v, "{k} is stored as sent");
    }
    api.route(json!({"name": "many", "path": "/many", "upstreams": ["http://127.0.0.1:1", "http://127.0.0.1:2"]}))
        .await;
    s.stop().await;
}
