//! `[routes.api_keys]`: keys by hash, plans (rate and quota), header handling, build errors.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use kakuremichi_config::policy::ApiKeysPolicy;
use kakuremichi_policy::{PolicyEnv, PolicyEnvOptions, RoutePolicies, key_sha256_hex};

fn keys_file(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("api-keys.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn standard_file(dir: &Path) -> PathBuf {
    keys_file(
        dir,
        &format!(
            r#"
[plans.basic]
requests = 2
per = "1m"
quota = 1000

[[keys]]
name = "mobile-app"
key_sha256 = "{mobile}"
plan = "basic"

[[keys]]
name = "partner"
key_sha256 = "{partner}"
requests = 100
per = "1s"
quota = 3
quota_per = "1d"

[[keys]]
name = "internal"
key_sha256 = "{internal}"
"#,
            mobile = key_sha256_hex("km_mobile_secret"),
            partner = key_sha256_hex("km_partner_secret"),
            internal = key_sha256_hex("km_internal_secret").to_uppercase(),
        ),
    )
}

fn route(path: PathBuf, env: &Arc<PolicyEnv>) -> RoutePolicies {
    let p = ApiKeysPolicy {
        header: "x-api-key".into(),
        keys_file: path,
    };
    RoutePolicies::build("orders", None, Some(&p), None, None, env).unwrap()
}

async fn call(r: &RoutePolicies, key: Option<&str>) -> kakuremichi_policy::Decision {
    let mut h = match key {
        Some(k) => head("GET", "/orders", &[("x-api-key", k)]),
        None => head("GET", "/orders", &[]),
    };
    r.check(&mut h, CLIENT).await
}

#[tokio::test]
async fn valid_key_is_replaced_by_its_name() {
    let dir = temp_dir("keys");
    let env = PolicyEnv::new(None).unwrap();
    let r = route(standard_file(&dir), &env);
    let mut h = head(
        "GET",
        "/orders",
        &[
            ("x-api-key", "km_internal_secret"),
            ("x-api-key-name", "spoofed-admin"),
        ],
    );
    let outcome = expect_continue(r.check(&mut h, CLIENT).await);
    assert_eq!(outcome.api_key_name.as_deref(), Some("internal"));
    assert!(
        !h.headers.contains_key("x-api-key"),
        "the key never reaches the upstream"
    );
    let names: Vec<_> = h.headers.get_all("x-api-key-name").iter().collect();
    assert_eq!(names, ["internal"]);
    assert!(outcome.response_headers.get("ratelimit-limit").is_none());
}

#[tokio::test]
async fn missing_or_wrong_keys_are_401() {
    let dir = temp_dir("keys-401");
    let env = PolicyEnv::new(None).unwrap();
    let r = route(standard_file(&dir), &env);
    let a = expect_respond(call(&r, None).await, 401);
    assert_eq!(a.code, "missing_api_key");
    for wrong in [
        "km_internal_secreT",
        "",
        "km_mobile_secret ",
        &key_sha256_hex("km_internal_secret"),
    ] {
        let a = expect_respond(call(&r, Some(wrong)).await, 401);
        assert_eq!(a.code, "invalid_api_key", "{wrong:?}");
        assert!(!a.message.contains("km_"), "the key is not echoed");
        assert!(a.api_key_name.is_none());
    }
    // Two key headers are refused rather than guessed between.
    let mut h = head(
        "GET",
        "/orders",
        &[
            ("x-api-key", "km_internal_secret"),
            ("x-api-key", "km_partner_secret"),
        ],
    );
    expect_respond(r.check(&mut h, CLIENT).await, 401);
    assert!(!h.headers.contains_key("x-api-key"));
}

#[tokio::test]
async fn plan_rate_limits_per_key() {
    let dir = temp_dir("keys-rate");
    let env = PolicyEnv::new(None).unwrap();
    let r = route(standard_file(&dir), &env);
    let o = expect_continue(call(&r, Some("km_mobile_secret")).await);
    assert_eq!(header(&o.response_headers, "ratelimit-limit"), Some("2"));
    assert_eq!(
        header(&o.response_headers, "ratelimit-remaining"),
        Some("1")
    );
    assert_eq!(
        header(&o.response_headers, "ratelimit-policy"),
        Some("2;w=60")
    );
    expect_continue(call(&r, Some("km_mobile_secret")).await);
    let a = expect_respond(call(&r, Some("km_mobile_secret")).await, 429);
    assert_eq!(a.code, "rate_limited");
    assert_eq!(a.api_key_name.as_deref(), Some("mobile-app"));
    let retry = a.retry_after().unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(header(&a.headers, "ratelimit-remaining"), Some("0"));
    // Other keys have their own allowance.
    expect_continue(call(&r, Some("km_partner_secret")).await);
    expect_continue(call(&r, Some("km_internal_secret")).await);
}

#[tokio::test]
async fn quota_runs_out_until_utc_midnight() {
    let dir = temp_dir("keys-quota");
    let env = PolicyEnv::new(None).unwrap();
    let r = route(standard_file(&dir), &env);
    for _ in 0..3 {
        expect_continue(call(&r, Some("km_partner_secret")).await);
    }
    let a = expect_respond(call(&r, Some("km_partner_secret")).await, 429);
    assert_eq!(a.code, "quota_exceeded");
    let retry = a.retry_after().unwrap() as i64;
    let until_midnight = 86_400 - now().rem_euclid(86_400);
    assert!(
        (retry - until_midnight).abs() <= 2,
        "Retry-After {retry}, seconds to UTC midnight {until_midnight}"
    );
    // The quota is per key and survives a reload (a new RoutePolicies on the same env).
    let r2 = route(standard_file(&dir), &env);
    expect_respond(call(&r2, Some("km_partner_secret")).await, 429);
    expect_continue(call(&r2, Some("km_internal_secret")).await);
}

#[tokio::test]
async fn quota_shared_through_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let dir = temp_dir("keys-quota-redis");
    let path = standard_file(&dir);
    let rl = kakuremichi_config::policy::RateLimitPolicy {
        key: "ip".into(),
        requests: 1000,
        per: kakuremichi_config::units::ConfigDuration(std::time::Duration::from_secs(1)),
        burst: None,
        store: Some(redis.url.clone()),
        on_store_error: Default::default(),
    };
    let p = ApiKeysPolicy {
        header: "x-api-key".into(),
        keys_file: path,
    };
    let envs = [
        env_with(None, PolicyEnvOptions::default()),
        env_with(None, PolicyEnvOptions::default()),
    ];
    let routes: Vec<_> = envs
        .iter()
        .map(|e| RoutePolicies::build("orders", None, Some(&p), Some(&rl), None, e).unwrap())
        .collect();
    // Quota 3 for "partner", split across two gateways.
    expect_continue(call(&routes[0], Some("km_partner_secret")).await);
    expect_continue(call(&routes[1], Some("km_partner_secret")).await);
    expect_continue(call(&routes[0], Some("km_partner_secret")).await);
    let a = expect_respond(call(&routes[1], Some("km_partner_secret")).await, 429);
    assert_eq!(a.code, "quota_exceeded");
    assert!(a.retry_after().unwrap() > 0);
    assert_eq!(
        envs[0].stats().store_errors + envs[1].stats().store_errors,
        0
    );
}

#[test]
fn build_errors_name_the_file_and_key() {
    let dir = temp_dir("keys-errors");
    let env = PolicyEnv::new(None).unwrap();
    let build = |path: PathBuf| {
        let p = ApiKeysPolicy {
            header: "x-api-key".into(),
            keys_file: path,
        };
        RoutePolicies::build("orders", None, Some(&p), None, None, &env)
            .unwrap_err()
            .to_string()
    };
    let m = build(dir.join("missing.toml"));
    assert!(m.contains("keys_file") && m.contains("missing.toml"), "{m}");

    let cases = [
        (
            "[[keys]]\nname = \"a\"\nkey_sha256 = \"abc\"\n",
            "64 hex digits",
        ),
        (
            "[[keys]]\nname = \"a\"\nkey_sha256 = \"abc\"\nsecret = 1\n",
            "line 4",
        ),
        ("", "no [[keys]]"),
        (
            "[[keys]]\nname = \"a\"\nkey_sha256 = \"KEY\"\n[[keys]]\nname = \"a\"\nkey_sha256 = \"KEY2\"\n",
            "used twice",
        ),
        (
            "[[keys]]\nname = \"a\"\nkey_sha256 = \"KEY\"\n[[keys]]\nname = \"b\"\nkey_sha256 = \"KEY\"\n",
            "appears twice",
        ),
        (
            "[[keys]]\nname = \"a\"\nkey_sha256 = \"KEY\"\nplan = \"gold\"\n",
            "plan \"gold\"",
        ),
        (
            "[[keys]]\nname = \"a\"\nkey_sha256 = \"KEY\"\nrequests = 5\n",
            "requests and per",
        ),
        (
            "[[keys]]\nname = \"a\"\nkey_sha256 = \"KEY\"\nquota = 0\n",
            "at least 1",
        ),
        (
            "[[keys]]\nname = \"a\"\nkey_sha256 = \"KEY\"\nper = \"5\"\nrequests = 1\n",
            "unit",
        ),
    ];
    for (body, expected) in cases {
        let body = body
            .replace("\"KEY\"", &format!("\"{}\"", key_sha256_hex("k1")))
            .replace("\"KEY2\"", &format!("\"{}\"", key_sha256_hex("k2")));
        let m = build(keys_file(&dir, &body));
        assert!(m.contains("api-keys.toml"), "{m}");
        assert!(m.contains(expected), "expected {expected:?} in: {m}");
    }
}
