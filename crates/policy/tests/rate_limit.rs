//! `[routes.rate_limit]`: in memory, keyed four ways, and shared through a real
//! redis-server between two gateways' environments; store failures.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kakuremichi_config::policy::{JwtPolicy, RateLimitPolicy, StoreErrorMode};
use kakuremichi_config::units::ConfigDuration;
use kakuremichi_policy::{Decision, PolicyEnv, PolicyEnvOptions, RoutePolicies};

fn limit(key: &str, requests: u64, per: Duration, burst: Option<u64>) -> RateLimitPolicy {
    RateLimitPolicy {
        key: key.into(),
        requests,
        per: ConfigDuration(per),
        burst,
        store: None,
        on_store_error: StoreErrorMode::Allow,
    }
}

fn route(rl: &RateLimitPolicy, env: &Arc<PolicyEnv>) -> RoutePolicies {
    RoutePolicies::build("products", None, None, Some(rl), None, env).unwrap()
}

async fn from(r: &RoutePolicies, ip: &str, headers: &[(&str, &str)]) -> Decision {
    let mut h = head("GET", "/products", headers);
    let ip: IpAddr = ip.parse().unwrap();
    r.check(&mut h, ip).await
}

#[tokio::test]
async fn memory_burst_then_429_with_headers() {
    let env = PolicyEnv::new(None).unwrap();
    let r = route(&limit("ip", 60, Duration::from_secs(60), Some(3)), &env);
    for remaining in ["2", "1", "0"] {
        let o = expect_continue(from(&r, "198.51.100.1", &[]).await);
        assert_eq!(header(&o.response_headers, "ratelimit-limit"), Some("3"));
        assert_eq!(
            header(&o.response_headers, "ratelimit-remaining"),
            Some(remaining)
        );
        assert!(header(&o.response_headers, "ratelimit-reset").is_some());
        assert_eq!(
            header(&o.response_headers, "ratelimit-policy"),
            Some("60;w=60")
        );
    }
    let a = expect_respond(from(&r, "198.51.100.1", &[]).await, 429);
    assert_eq!(a.code, "rate_limited");
    assert_eq!(header(&a.headers, "retry-after"), Some("1"));
    assert_eq!(header(&a.headers, "ratelimit-limit"), Some("3"));
    assert_eq!(header(&a.headers, "ratelimit-remaining"), Some("0"));
    assert_eq!(header(&a.headers, "ratelimit-reset"), Some("3"));
    // Another address is not affected; the limit recovers at the steady rate (1/s).
    expect_continue(from(&r, "198.51.100.2", &[]).await);
    let recovered = eventually(Duration::from_secs(5), || async {
        matches!(from(&r, "198.51.100.1", &[]).await, Decision::Continue(_))
    })
    .await;
    assert!(recovered);
}

#[tokio::test]
async fn ipv4_mapped_addresses_share_a_bucket() {
    let env = PolicyEnv::new(None).unwrap();
    let r = route(&limit("ip", 1, Duration::from_secs(60), None), &env);
    expect_continue(from(&r, "192.0.2.9", &[]).await);
    expect_respond(from(&r, "::ffff:192.0.2.9", &[]).await, 429);
}

#[tokio::test]
async fn keyed_by_header_falls_back_to_ip() {
    let env = PolicyEnv::new(None).unwrap();
    let r = route(
        &limit("header:x-tenant", 1, Duration::from_secs(60), None),
        &env,
    );
    expect_continue(from(&r, "192.0.2.1", &[("x-tenant", "acme")]).await);
    expect_respond(from(&r, "192.0.2.2", &[("x-tenant", "acme")]).await, 429);
    expect_continue(from(&r, "192.0.2.1", &[("x-tenant", "globex")]).await);
    // No header: the address is the key (and not the tenant "acme").
    expect_continue(from(&r, "192.0.2.1", &[]).await);
    expect_respond(from(&r, "192.0.2.1", &[]).await, 429);
}

#[tokio::test]
async fn keyed_by_claim() {
    let dir = temp_dir("claim-key");
    let secret = b"0123456789abcdef0123456789abcdef";
    let path = dir.join("secret");
    std::fs::write(&path, secret).unwrap();
    let jwt = JwtPolicy {
        jwks_uri: None,
        secret_file: Some(path),
        issuer: None,
        audiences: vec![],
        algorithms: vec!["HS256".into()],
        roles_claim: None,
        require_roles: vec![],
        scopes_claim: None,
        require_scopes: vec![],
        forward_claims: BTreeMap::new(),
    };
    let env = PolicyEnv::new(None).unwrap();
    let rl = limit("claim:sub", 1, Duration::from_secs(60), None);
    let r = RoutePolicies::build("p", Some(&jwt), None, Some(&rl), None, &env).unwrap();
    let signer = Signer::hmac(secret);
    let token = |sub: &str| {
        let mut c = cognito_access_claims(&[], "");
        c["sub"] = serde_json::json!(sub);
        bearer(&signer.sign(&c))
    };
    let alice = token("alice");
    let bob = token("bob");
    expect_continue(from(&r, "192.0.2.1", &[("authorization", &alice)]).await);
    let a = expect_respond(
        from(&r, "192.0.2.2", &[("authorization", &alice)]).await,
        429,
    );
    assert_eq!(a.subject.as_deref(), Some("alice"));
    expect_continue(from(&r, "192.0.2.1", &[("authorization", &bob)]).await);
}

#[tokio::test]
async fn keyed_by_api_key_and_both_limits_apply() {
    let dir = temp_dir("apikey-key");
    let path = dir.join("keys.toml");
    std::fs::write(
        &path,
        format!(
            "[[keys]]\nname = \"a\"\nkey_sha256 = \"{}\"\nrequests = 100\nper = \"1m\"\n\
             [[keys]]\nname = \"b\"\nkey_sha256 = \"{}\"\n",
            kakuremichi_policy::key_sha256_hex("key-a"),
            kakuremichi_policy::key_sha256_hex("key-b"),
        ),
    )
    .unwrap();
    let keys = kakuremichi_config::policy::ApiKeysPolicy {
        header: "x-api-key".into(),
        keys_file: path,
    };
    let env = PolicyEnv::new(None).unwrap();
    let rl = limit("api_key", 2, Duration::from_secs(60), None);
    let r = RoutePolicies::build("p", None, Some(&keys), Some(&rl), None, &env).unwrap();
    // The route's limit (2) is tighter than the plan's (100): headers show the tighter one.
    let o = expect_continue(from(&r, "192.0.2.1", &[("x-api-key", "key-a")]).await);
    assert_eq!(header(&o.response_headers, "ratelimit-limit"), Some("2"));
    assert_eq!(
        header(&o.response_headers, "ratelimit-remaining"),
        Some("1")
    );
    expect_continue(from(&r, "192.0.2.2", &[("x-api-key", "key-a")]).await);
    let a = expect_respond(from(&r, "192.0.2.3", &[("x-api-key", "key-a")]).await, 429);
    assert_eq!(a.api_key_name.as_deref(), Some("a"));
    expect_continue(from(&r, "192.0.2.1", &[("x-api-key", "key-b")]).await);

    // key = "api_key" without [routes.api_keys] is a build error.
    let e = RoutePolicies::build("p", None, None, Some(&rl), None, &env).unwrap_err();
    assert!(e.to_string().contains("needs [routes.api_keys]"), "{e}");
}

#[tokio::test]
async fn redis_shared_between_two_gateways() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut rl = limit("ip", 3, Duration::from_secs(60), None);
    rl.store = Some(redis.url.clone());
    // Two environments: two gateways sharing one store.
    let env_a = env_with(None, PolicyEnvOptions::default());
    let env_b = env_with(None, PolicyEnvOptions::default());
    let a = route(&rl, &env_a);
    let b = route(&rl, &env_b);
    let o = expect_continue(from(&a, "192.0.2.50", &[]).await);
    assert_eq!(
        header(&o.response_headers, "ratelimit-remaining"),
        Some("2")
    );
    let o = expect_continue(from(&b, "192.0.2.50", &[]).await);
    assert_eq!(
        header(&o.response_headers, "ratelimit-remaining"),
        Some("1")
    );
    expect_continue(from(&a, "192.0.2.50", &[]).await);
    for r in [&a, &b] {
        let ans = expect_respond(from(r, "192.0.2.50", &[]).await, 429);
        assert_eq!(ans.code, "rate_limited");
        assert!(ans.retry_after().unwrap() >= 1);
        assert_eq!(header(&ans.headers, "ratelimit-remaining"), Some("0"));
    }
    expect_continue(from(&b, "192.0.2.51", &[]).await);
    assert_eq!(env_a.stats().store_errors + env_b.stats().store_errors, 0);
    assert_eq!(
        env_a.stats().memory_limiter_entries,
        0,
        "nothing kept in memory"
    );

    // Many concurrent requests through both gateways: exactly the burst passes.
    let mut rl = limit("header:x-tenant", 10, Duration::from_secs(3600), None);
    rl.store = Some(redis.url.clone());
    let a = Arc::new(route(&rl, &env_a));
    let b = Arc::new(route(&rl, &env_b));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let r = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            matches!(
                from(&r, "192.0.2.60", &[("x-tenant", "concurrent")]).await,
                Decision::Continue(_)
            )
        }));
    }
    let mut passed = 0;
    for t in tasks {
        passed += usize::from(t.await.unwrap());
    }
    assert_eq!(passed, 10);
}

#[tokio::test]
async fn store_down_allows_and_counts() {
    let mut rl = limit("ip", 1, Duration::from_secs(60), None);
    rl.store = Some(format!("redis://127.0.0.1:{}", closed_port()));
    let env = PolicyEnv::new(None).unwrap();
    let r = route(&rl, &env);
    for _ in 0..5 {
        let o = expect_continue(from(&r, "192.0.2.1", &[]).await);
        assert!(o.response_headers.get("ratelimit-limit").is_none());
    }
    assert_eq!(env.stats().store_errors, 5);

    rl.on_store_error = StoreErrorMode::Deny;
    let r = route(&rl, &env);
    let a = expect_respond(from(&r, "192.0.2.1", &[]).await, 503);
    assert_eq!(a.code, "rate_limit_store_unavailable");
    assert_eq!(a.retry_after(), Some(1));
}

#[tokio::test]
async fn store_that_stops_answering_times_out() {
    // A listener that accepts and never answers: the store timeout bounds the wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut rl = limit("ip", 1, Duration::from_secs(60), None);
    rl.store = Some(format!("redis://127.0.0.1:{port}"));
    let env = env_with(
        None,
        PolicyEnvOptions {
            store_timeout: Duration::from_millis(100),
            ..PolicyEnvOptions::default()
        },
    );
    let r = route(&rl, &env);
    let started = std::time::Instant::now();
    expect_continue(from(&r, "192.0.2.1", &[]).await);
    // While the breaker is open, the next requests do not wait at all.
    for _ in 0..10 {
        expect_continue(from(&r, "192.0.2.1", &[]).await);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(env.stats().store_errors, 11);
    hold.abort();
}

#[tokio::test]
async fn store_recovers_after_an_outage() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let port = redis.port();
    let mut rl = limit("ip", 100, Duration::from_secs(1), None);
    rl.store = Some(redis.url.clone());
    let env = PolicyEnv::new(None).unwrap();
    let r = route(&rl, &env);
    let o = expect_continue(from(&r, "192.0.2.1", &[]).await);
    assert!(o.response_headers.get("ratelimit-limit").is_some());
    drop(redis);
    let o = expect_continue(from(&r, "192.0.2.1", &[]).await);
    assert!(o.response_headers.get("ratelimit-limit").is_none());
    assert!(env.stats().store_errors >= 1);
    // A new server on the same port: pooled connections to the old one fail once, then
    // decisions come from the store again.
    let _redis = RedisServer::start_on(port)
        .await
        .expect("restart redis-server")
        .expect("redis-server present");
    let back = eventually(Duration::from_secs(10), || async {
        let d = from(&r, "192.0.2.1", &[]).await;
        matches!(d, Decision::Continue(o) if o.response_headers.get("ratelimit-limit").is_some())
    })
    .await;
    assert!(back, "store never used again");
}

#[test]
fn build_errors() {
    let env = PolicyEnv::new(None).unwrap();
    let err = |rl: &RateLimitPolicy| {
        RoutePolicies::build("p", None, None, Some(rl), None, &env)
            .unwrap_err()
            .to_string()
    };
    assert!(
        err(&limit("claim:sub", 1, Duration::from_secs(1), None)).contains("needs [routes.jwt]")
    );
    assert!(err(&limit("cookie:x", 1, Duration::from_secs(1), None)).contains("must be"));
    assert!(err(&limit("ip", 0, Duration::from_secs(1), None)).contains("at least 1"));
    let mut rl = limit("ip", 1, Duration::from_secs(1), None);
    rl.store = Some("rediss://:hunter2@cache:6380".into());
    let m = err(&rl);
    assert!(m.contains("not supported") && !m.contains("hunter2"), "{m}");
    rl.store = Some("memcached://cache".into());
    assert!(err(&rl).contains("redis://"));
}
