//! `[routes.cors]`: preflights answered at the edge, headers on actual responses, and CORS
//! headers on the gateway's own refusals.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::HeaderMap;
use kakuremichi_config::policy::{ApiKeysPolicy, CorsPolicy};
use kakuremichi_config::units::ConfigDuration;
use kakuremichi_policy::{Outcome, PolicyEnv, RoutePolicies};

const APP: &str = "https://cloud.example.tech";

fn cors(origins: &[&str], credentials: bool) -> CorsPolicy {
    CorsPolicy {
        allow_origins: origins.iter().map(|s| s.to_string()).collect(),
        allow_methods: ["GET", "POST", "PUT", "DELETE", "OPTIONS"]
            .map(String::from)
            .to_vec(),
        allow_headers: vec!["content-type".into(), "authorization".into()],
        expose_headers: vec!["x-correlation-id".into()],
        allow_credentials: credentials,
        max_age: Some(ConfigDuration(Duration::from_secs(600))),
    }
}

fn route(p: &CorsPolicy, env: &Arc<PolicyEnv>) -> RoutePolicies {
    RoutePolicies::build("app", None, None, None, Some(p), env).unwrap()
}

fn preflight(origin: &str) -> http::request::Parts {
    head(
        "OPTIONS",
        "/ai-interview/api/v1/answers",
        &[
            ("origin", origin),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "content-type, x-custom"),
        ],
    )
}

fn vary(map: &HeaderMap) -> String {
    map.get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn preflight_allowed_origin_gets_204() {
    let env = PolicyEnv::new(None).unwrap();
    let r = route(&cors(&[APP, "https://*.example.tech"], true), &env);
    for origin in [APP, "https://admin.example.tech"] {
        let mut h = preflight(origin);
        let a = expect_respond(r.check(&mut h, CLIENT).await, 204);
        assert!(!a.has_body());
        let hs = &a.headers;
        assert_eq!(header(hs, "access-control-allow-origin"), Some(origin));
        assert_eq!(header(hs, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            header(hs, "access-control-allow-methods"),
            Some("GET, POST, PUT, DELETE, OPTIONS")
        );
        assert_eq!(
            header(hs, "access-control-allow-headers"),
            Some("content-type, authorization")
        );
        assert_eq!(header(hs, "access-control-max-age"), Some("600"));
        assert!(vary(hs).contains("Origin"));
    }
}

#[tokio::test]
async fn preflight_from_another_origin_is_403() {
    let env = PolicyEnv::new(None).unwrap();
    let r = route(&cors(&[APP, "https://*.example.tech"], true), &env);
    for origin in [
        "https://evil.example",
        "http://cloud.example.tech",
        "https://cloud.example.tech.evil.example",
        "https://example.tech",
        "null",
    ] {
        let mut h = preflight(origin);
        let a = expect_respond(r.check(&mut h, CLIENT).await, 403);
        assert_eq!(a.code, "cors_origin_denied", "{origin}");
        assert!(a.headers.get("access-control-allow-origin").is_none());
    }
}

#[tokio::test]
async fn preflight_is_answered_before_authentication() {
    let dir = temp_dir("cors-auth");
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"k\"\nkey_sha256 = \"{}\"\n",
            kakuremichi_policy::key_sha256_hex("key")
        ),
    )
    .unwrap();
    let api = ApiKeysPolicy {
        header: "x-api-key".into(),
        keys_file: keys,
    };
    let env = PolicyEnv::new(None).unwrap();
    let r = RoutePolicies::build(
        "app",
        None,
        Some(&api),
        None,
        Some(&cors(&[APP], true)),
        &env,
    )
    .unwrap();
    let mut h = preflight(APP);
    expect_respond(r.check(&mut h, CLIENT).await, 204);

    // A refused actual request still carries CORS headers, so the browser can read the 401.
    let mut h = head("GET", "/x", &[("origin", APP)]);
    let a = expect_respond(r.check(&mut h, CLIENT).await, 401);
    assert_eq!(header(&a.headers, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&a.headers, "access-control-allow-credentials"),
        Some("true")
    );
    assert!(vary(&a.headers).contains("Origin"));

    // Without CORS on the route, OPTIONS is just another request and needs the key.
    let r = RoutePolicies::build("app", None, Some(&api), None, None, &env).unwrap();
    let mut h = preflight(APP);
    expect_respond(r.check(&mut h, CLIENT).await, 401);
}

#[tokio::test]
async fn actual_requests_get_origin_headers() {
    let env = PolicyEnv::new(None).unwrap();
    let r = route(&cors(&[APP], true), &env);
    let mut h = head("POST", "/api", &[("origin", APP)]);
    let o = expect_continue(r.check(&mut h, CLIENT).await);
    let hs = &o.response_headers;
    assert_eq!(header(hs, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(hs, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        header(hs, "access-control-expose-headers"),
        Some("x-correlation-id")
    );
    assert_eq!(vary(hs), "Origin");

    // Applying to an upstream response: Vary is appended, CORS headers replace the upstream's.
    let mut upstream = HeaderMap::new();
    upstream.insert("vary", "Accept-Encoding".parse().unwrap());
    upstream.insert("access-control-allow-origin", "*".parse().unwrap());
    o.apply_to_response(&mut upstream);
    assert_eq!(vary(&upstream), "Accept-Encoding, Origin");
    let acao: Vec<_> = upstream
        .get_all("access-control-allow-origin")
        .iter()
        .collect();
    assert_eq!(acao, [APP]);

    // A disallowed origin: forwarded, but nothing that would let the browser read it.
    let mut h = head("GET", "/api", &[("origin", "https://evil.example")]);
    let o = expect_continue(r.check(&mut h, CLIENT).await);
    assert!(
        o.response_headers
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(vary(&o.response_headers), "Origin");

    // No Origin at all (same-origin navigation, curl): no CORS headers but Vary.
    let mut h = head("GET", "/api", &[]);
    let o: Outcome = expect_continue(r.check(&mut h, CLIENT).await);
    assert!(
        o.response_headers
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn wildcard_without_credentials() {
    let env = PolicyEnv::new(None).unwrap();
    let r = route(&cors(&["*"], false), &env);
    let mut h = head("GET", "/api", &[("origin", "https://anyone.example")]);
    let o = expect_continue(r.check(&mut h, CLIENT).await);
    assert_eq!(
        header(&o.response_headers, "access-control-allow-origin"),
        Some("*")
    );
    assert!(
        o.response_headers
            .get("access-control-allow-credentials")
            .is_none()
    );
    let mut h = preflight("https://anyone.example");
    let a = expect_respond(r.check(&mut h, CLIENT).await, 204);
    assert_eq!(header(&a.headers, "access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn any_header_echoes_the_request() {
    let env = PolicyEnv::new(None).unwrap();
    let mut p = cors(&[APP], false);
    p.allow_headers = vec!["*".into()];
    let r = route(&p, &env);
    let mut h = preflight(APP);
    let a = expect_respond(r.check(&mut h, CLIENT).await, 204);
    assert_eq!(
        header(&a.headers, "access-control-allow-headers"),
        Some("content-type, x-custom")
    );
}

#[test]
fn build_errors() {
    let env = PolicyEnv::new(None).unwrap();
    let err = |p: &CorsPolicy| {
        RoutePolicies::build("app", None, None, None, Some(p), &env)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&cors(&["*"], true)).contains("allow_credentials"));
    assert!(err(&cors(&["cloud.example.tech"], false)).contains("not an origin"));
    assert!(err(&cors(&["https://a*.example.tech"], false)).contains("wildcard"));
    let mut p = cors(&[APP], false);
    p.allow_methods = vec!["GET POST".into()];
    assert!(err(&p).contains("allow_methods"));
    let mut p = cors(&[APP], false);
    p.allow_headers = vec!["bad header".into()];
    assert!(err(&p).contains("allow_headers"));
}

#[tokio::test]
async fn a_route_without_policies_continues() {
    let env = PolicyEnv::new(None).unwrap();
    let r = RoutePolicies::build("open", None, None, None, None, &env).unwrap();
    assert!(r.is_empty());
    let mut h = preflight(APP);
    let o = expect_continue(r.check(&mut h, CLIENT).await);
    assert!(o.response_headers.is_empty());
    assert!(!route(&cors(&[APP], false), &env).is_empty());
}
