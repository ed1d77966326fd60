//! `[routes.jwt]` against a real JWKS served over HTTPS: Cognito-shaped ID and access
//! tokens, the attack cases, key rotation and the refresh rate limit.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use kakuremichi_config::policy::JwtPolicy;
use kakuremichi_policy::{PolicyEnv, PolicyEnvOptions, PolicyError, RoutePolicies};
use serde_json::json;

fn policy(jwks_uri: Option<&str>) -> JwtPolicy {
    JwtPolicy {
        jwks_uri: jwks_uri.map(str::to_string),
        secret_file: None,
        issuer: Some(ISSUER.into()),
        audiences: vec![CLIENT_ID.into()],
        algorithms: vec!["RS256".into()],
        roles_claim: Some("cognito:groups".into()),
        require_roles: vec![],
        scopes_claim: None,
        require_scopes: vec![],
        forward_claims: BTreeMap::from([
            ("x-user-sub".to_string(), "sub".to_string()),
            ("x-user-groups".to_string(), "cognito:groups".to_string()),
        ]),
    }
}

fn options() -> PolicyEnvOptions {
    PolicyEnvOptions {
        jwks_refresh_interval: Duration::from_secs(30),
        ..PolicyEnvOptions::default()
    }
}

struct Setup {
    server: JwksServer,
    env: Arc<PolicyEnv>,
    rsa: common::Signer,
}

async fn setup(name: &str, opts: PolicyEnvOptions) -> Setup {
    let dir = temp_dir(name);
    let rsa = Signer::rsa("rsa-1.pk8.der", "rsa-1");
    let server = JwksServer::start(&dir, vec![rsa.jwk()]).await;
    let env = env_with(Some(&server.ca_path), opts);
    Setup { server, env, rsa }
}

fn route(p: &JwtPolicy, env: &Arc<PolicyEnv>) -> RoutePolicies {
    RoutePolicies::build("api", Some(p), None, None, None, env).unwrap()
}

async fn check_token(r: &RoutePolicies, token: &str) -> kakuremichi_policy::Decision {
    let mut h = head("GET", "/users/1", &[("authorization", &bearer(token))]);
    r.check(&mut h, CLIENT).await
}

#[tokio::test]
async fn cognito_id_and_access_tokens_are_accepted() {
    let s = setup("cognito", options()).await;
    let mut p = policy(Some(&s.server.uri));
    p.require_roles = vec!["admin".into(), "ops".into()];
    p.require_scopes = vec!["service/user.read".into()];
    let r = route(&p, &s.env);

    // Access token: no aud, client_id instead; space-separated scope.
    let access = s.rsa.sign(&cognito_access_claims(
        &["admin"],
        "openid service/user.read service/user.write",
    ));
    let mut h = head(
        "GET",
        "/users/1",
        &[
            ("authorization", &bearer(&access)),
            ("x-user-sub", "spoofed"),
            ("x-user-groups", "spoofed"),
        ],
    );
    let outcome = expect_continue(r.check(&mut h, CLIENT).await);
    assert_eq!(
        outcome.subject.as_deref(),
        Some("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
    );
    let subs: Vec<_> = h.headers.get_all("x-user-sub").iter().collect();
    assert_eq!(subs, ["aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"]);
    assert_eq!(header(&h.headers, "x-user-groups"), Some("admin"));
    assert!(
        h.headers.contains_key("authorization"),
        "upstream still gets the token"
    );
    assert_eq!(s.server.fetches(), 1);

    // ID token: aud = client id. No scope claim, so a route requiring scopes refuses it
    // with 403, and one that does not accepts it.
    let id = s.rsa.sign(&cognito_id_claims(&["ops"]));
    let a = expect_respond(check_token(&r, &id).await, 403);
    assert_eq!(a.code, "insufficient_scope");
    assert_eq!(
        a.subject.as_deref(),
        Some("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
    );
    let mut p2 = p.clone();
    p2.require_scopes.clear();
    expect_continue(check_token(&route(&p2, &s.env), &id).await);
    assert_eq!(
        s.server.fetches(),
        1,
        "the JWKS is cached and shared by routes"
    );
}

#[tokio::test]
async fn roles_and_scopes_give_403() {
    let s = setup("roles", options()).await;
    let mut p = policy(Some(&s.server.uri));
    p.require_roles = vec!["admin".into()];
    let r = route(&p, &s.env);
    let token = s.rsa.sign(&cognito_access_claims(&["users"], "openid"));
    let a = expect_respond(check_token(&r, &token).await, 403);
    assert_eq!(a.code, "insufficient_role");
    assert_eq!(
        header(&a.headers, "www-authenticate"),
        Some(r#"Bearer error="insufficient_scope""#)
    );

    // Scopes as an array, all required.
    let mut p = policy(Some(&s.server.uri));
    p.require_scopes = vec!["a".into(), "b".into()];
    let r = route(&p, &s.env);
    let mut claims = cognito_access_claims(&[], "");
    claims["scope"] = json!(["a", "b", "c"]);
    expect_continue(check_token(&r, &s.rsa.sign(&claims)).await);
    claims["scope"] = json!(["a"]);
    expect_respond(check_token(&r, &s.rsa.sign(&claims)).await, 403);
    claims["scope"] = json!("b a");
    expect_continue(check_token(&r, &s.rsa.sign(&claims)).await);
}

#[tokio::test]
async fn nested_roles_claim() {
    let s = setup("nested", options()).await;
    let mut p = policy(Some(&s.server.uri));
    p.roles_claim = Some("realm_access.roles".into());
    p.require_roles = vec!["admin".into()];
    let r = route(&p, &s.env);
    let mut claims = cognito_id_claims(&[]);
    claims["realm_access"] = json!({"roles": ["user", "admin"]});
    expect_continue(check_token(&r, &s.rsa.sign(&claims)).await);
    claims["realm_access"] = json!({"roles": ["user"]});
    expect_respond(check_token(&r, &s.rsa.sign(&claims)).await, 403);
}

#[tokio::test]
async fn attacks_and_invalid_tokens_get_401() {
    let s = setup("attacks", options()).await;
    let r = route(&policy(Some(&s.server.uri)), &s.env);
    let good = cognito_id_claims(&["admin"]);
    let t = now();

    let mut cases: Vec<(&str, String)> = Vec::new();

    // alg "none", with and without a signature.
    let none_header = json!({"alg": "none", "typ": "JWT"});
    let unsigned = format!(
        "{}.{}.",
        b64(none_header.to_string().as_bytes()),
        b64(good.to_string().as_bytes())
    );
    cases.push(("alg none", unsigned));
    cases.push((
        "alg none with kid",
        s.rsa
            .sign_with_header(&json!({"alg": "none", "kid": "rsa-1"}), &good)
            .rsplit_once('.')
            .map(|(i, _)| format!("{i}."))
            .unwrap(),
    ));

    // HS256 signed with the RSA public key (JWK JSON, and n bytes) as the HMAC secret.
    let jwk = s.rsa.jwk();
    for (label, secret) in [
        ("HS256 with JWK as secret", jwk.to_string().into_bytes()),
        (
            "HS256 with n as secret",
            jwk["n"].as_str().unwrap().as_bytes().to_vec(),
        ),
    ] {
        let header = json!({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(good.to_string().as_bytes())
        );
        let sig = hmac_sign(&secret, input.as_bytes());
        cases.push((label, format!("{input}.{}", b64(&sig))));
    }

    let mut c = good.clone();
    c["exp"] = json!(t - 120);
    cases.push(("expired", s.rsa.sign(&c)));
    let mut c = good.clone();
    c["nbf"] = json!(t + 600);
    cases.push(("nbf in the future", s.rsa.sign(&c)));
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("exp");
    cases.push(("no exp", s.rsa.sign(&c)));
    let mut c = good.clone();
    c["iss"] = json!("https://evil.example");
    cases.push(("wrong iss", s.rsa.sign(&c)));
    let mut c = good.clone();
    c["aud"] = json!("another-client");
    cases.push(("wrong aud", s.rsa.sign(&c)));
    let mut c = cognito_access_claims(&[], "openid");
    c["client_id"] = json!("another-client");
    cases.push(("wrong client_id", s.rsa.sign(&c)));

    // Tampered payload: signature of the original, payload with more groups.
    let signed = s.rsa.sign(&good);
    let parts: Vec<&str> = signed.split('.').collect();
    let mut evil = good.clone();
    evil["cognito:groups"] = json!(["admin", "root"]);
    cases.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64(evil.to_string().as_bytes()),
            parts[2]
        ),
    ));
    cases.push((
        "truncated signature",
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            &parts[2][..parts[2].len() - 4]
        ),
    ));

    // Signed by a key the JWKS does not publish, under a known and an unknown kid.
    let stranger = Signer::rsa("rsa-2.pk8.der", "rsa-1");
    cases.push(("known kid, other key", stranger.sign(&good)));
    let stranger = Signer::rsa("rsa-2.pk8.der", "nobody");
    cases.push(("unknown kid", stranger.sign(&good)));

    // An ES256 token naming the RSA key's kid: key type does not fit.
    let ec = Signer::es256("rsa-1");
    cases.push(("ES256 on an RSA kid", ec.sign(&good)));

    // Oversized: a 20 KiB payload.
    let mut big = good.clone();
    big["pad"] = json!("x".repeat(20 * 1024));
    cases.push(("token over 16 KiB", s.rsa.sign(&big)));
    cases.push(("garbage", "not-a-jwt".into()));
    cases.push(("five parts (JWE)", "a.b.c.d.e".into()));

    for (label, token) in &cases {
        let a = expect_respond(check_token(&r, token).await, 401);
        assert_eq!(a.code, "invalid_token", "{label}: {}", a.message);
        assert_eq!(
            header(&a.headers, "www-authenticate"),
            Some(r#"Bearer error="invalid_token""#),
            "{label}"
        );
        assert!(!a.message.contains(token.as_str()), "{label}: token echoed");
    }
    // The good token still passes, and unknown kids cost at most one extra fetch.
    expect_continue(check_token(&r, &s.rsa.sign(&good)).await);
    assert!(s.server.fetches() <= 2, "fetches: {}", s.server.fetches());
}

#[tokio::test]
async fn huge_authorization_header_is_401_not_a_panic() {
    let s = setup("huge", options()).await;
    let r = route(&policy(Some(&s.server.uri)), &s.env);
    for len in [16 * 1024, 16 * 1024 + 1, 64 * 1024, 1 << 20] {
        let token = "a".repeat(len);
        let a = expect_respond(check_token(&r, &token).await, 401);
        assert_eq!(a.code, "invalid_token");
    }
    assert_eq!(
        s.server.fetches(),
        0,
        "no fetch for a token that cannot parse"
    );
}

#[tokio::test]
async fn token_only_from_the_authorization_header() {
    let s = setup("query", options()).await;
    let r = route(&policy(Some(&s.server.uri)), &s.env);
    let token = s.rsa.sign(&cognito_id_claims(&[]));
    for (uri, headers) in [
        (format!("/users?access_token={token}"), vec![]),
        (format!("/users?token={token}"), vec![]),
        (
            "/users".to_string(),
            vec![("cookie", format!("access_token={token}"))],
        ),
        (
            "/users".to_string(),
            vec![("authorization", format!("Basic {token}"))],
        ),
    ] {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut h = head("GET", &uri, &hs);
        let a = expect_respond(r.check(&mut h, CLIENT).await, 401);
        assert_eq!(a.code, "missing_token", "{uri}");
        assert_eq!(
            header(&a.headers, "www-authenticate"),
            Some(r#"Bearer error="invalid_token""#)
        );
    }
}

#[tokio::test]
async fn other_algorithms_from_the_jwks() {
    let dir = temp_dir("algs");
    let rsa = Signer::rsa("rsa-1.pk8.der", "rsa-1");
    let ec = Signer::es256("ec-1");
    let ed = Signer::ed25519("ed-1");
    let server = JwksServer::start(&dir, vec![rsa.jwk_without_alg(), ec.jwk(), ed.jwk()]).await;
    let env = env_with(Some(&server.ca_path), options());
    let mut p = policy(Some(&server.uri));
    p.algorithms = vec![
        "RS256".into(),
        "PS256".into(),
        "ES256".into(),
        "EdDSA".into(),
    ];
    let r = route(&p, &env);
    let claims = cognito_id_claims(&[]);
    expect_continue(check_token(&r, &rsa.sign(&claims)).await);
    let ps = rsa.sign_with_header(&json!({"alg": "PS256", "kid": "rsa-1"}), &claims);
    expect_continue(check_token(&r, &ps).await);
    expect_continue(check_token(&r, &ec.sign(&claims)).await);
    expect_continue(check_token(&r, &ed.sign(&claims)).await);
    // No kid: every key of the right type is tried.
    let no_kid = ec.sign_with_header(&json!({"alg": "ES256"}), &claims);
    expect_continue(check_token(&r, &no_kid).await);

    // An algorithm outside the allow list is refused even with a valid signature.
    p.algorithms = vec!["ES256".into()];
    let r = route(&p, &env);
    expect_respond(check_token(&r, &rsa.sign(&claims)).await, 401);
    expect_respond(check_token(&r, &ed.sign(&claims)).await, 401);
    let rs384 = rsa.sign_with_header(&json!({"alg": "RS384", "kid": "rsa-1"}), &claims);
    expect_respond(check_token(&r, &rs384).await, 401);
    assert_eq!(server.fetches(), 1);
}

#[tokio::test]
async fn key_rotation_and_refresh_rate_limit() {
    let interval = Duration::from_millis(1500);
    let s = setup(
        "rotation",
        PolicyEnvOptions {
            jwks_refresh_interval: interval,
            ..PolicyEnvOptions::default()
        },
    )
    .await;
    let r = route(&policy(Some(&s.server.uri)), &s.env);
    let claims = cognito_id_claims(&[]);
    expect_continue(check_token(&r, &s.rsa.sign(&claims)).await);
    assert_eq!(s.server.fetches(), 1);

    // The IdP adds a key; a token under the new kid right away is refused, because the set
    // was fetched less than the refresh interval ago. Many such tokens fetch nothing.
    let new = Signer::rsa("rsa-2.pk8.der", "rsa-2");
    s.server.set_keys(vec![s.rsa.jwk(), new.jwk()]);
    let new_token = new.sign(&claims);
    for _ in 0..20 {
        expect_respond(check_token(&r, &new_token).await, 401);
    }
    assert_eq!(s.server.fetches(), 1, "refetch is rate-limited");

    // Once the interval has passed, the unknown kid triggers one refetch and is accepted —
    // while the polling below sends a stream of unknown-kid tokens.
    let accepted = eventually(Duration::from_secs(10), || async {
        matches!(
            check_token(&r, &new_token).await,
            kakuremichi_policy::Decision::Continue(_)
        )
    })
    .await;
    assert!(accepted, "new kid never accepted");
    assert_eq!(s.server.fetches(), 2);
    // Both keys work now, without further fetches.
    expect_continue(check_token(&r, &s.rsa.sign(&claims)).await);
    expect_continue(check_token(&r, &new_token).await);

    // Made-up kids flood in: at most one fetch per interval.
    for i in 0..50 {
        let fake = Signer::rsa("rsa-2.pk8.der", &format!("fake-{i}"));
        expect_respond(check_token(&r, &fake.sign(&claims)).await, 401);
    }
    assert!(s.server.fetches() <= 3, "fetches: {}", s.server.fetches());
}

#[tokio::test]
async fn cache_lifetime_drops_retired_keys() {
    let s = setup(
        "lifetime",
        PolicyEnvOptions {
            jwks_refresh_interval: Duration::from_millis(300),
            ..PolicyEnvOptions::default()
        },
    )
    .await;
    s.server.set_cache_control(Some("public, max-age=1"));
    let r = route(&policy(Some(&s.server.uri)), &s.env);
    let token = s.rsa.sign(&cognito_id_claims(&[]));
    expect_continue(check_token(&r, &token).await);

    // The IdP retires the key. After max-age the set is refreshed in the background and the
    // key stops being accepted.
    let other = Signer::rsa("rsa-2.pk8.der", "rsa-2");
    s.server.set_keys(vec![other.jwk()]);
    let refused = eventually(Duration::from_secs(10), || async {
        matches!(
            check_token(&r, &token).await,
            kakuremichi_policy::Decision::Respond(_)
        )
    })
    .await;
    assert!(refused, "retired key still accepted");
    expect_continue(check_token(&r, &other.sign(&cognito_id_claims(&[]))).await);
}

#[tokio::test]
async fn jwks_unreachable_or_untrusted_is_401() {
    // Nothing listens: every request is refused, fetches are rate-limited.
    let env = env_with(None, options());
    let uri = format!("https://127.0.0.1:{}/jwks.json", closed_port());
    let r = route(&policy(Some(&uri)), &env);
    let rsa = Signer::rsa("rsa-1.pk8.der", "rsa-1");
    let token = rsa.sign(&cognito_id_claims(&[]));
    for _ in 0..5 {
        let a = expect_respond(check_token(&r, &token).await, 401);
        assert_eq!(a.code, "invalid_token");
    }
    let stats = env.stats();
    assert_eq!((stats.jwks_fetches, stats.jwks_fetch_errors), (1, 1));

    // A server whose certificate is not in ca_roots is not trusted.
    let dir = temp_dir("untrusted");
    let server = JwksServer::start(&dir, vec![rsa.jwk()]).await;
    let env = env_with(None, options());
    let r = route(&policy(Some(&server.uri)), &env);
    expect_respond(check_token(&r, &token).await, 401);
    assert_eq!(env.stats().jwks_fetch_errors, 1);
}

#[tokio::test]
async fn warm_fetches_ahead_of_the_first_request() {
    let s = setup("warm", options()).await;
    let r = route(&policy(Some(&s.server.uri)), &s.env);
    r.warm().await;
    assert_eq!(s.server.fetches(), 1);
    expect_continue(check_token(&r, &s.rsa.sign(&cognito_id_claims(&[]))).await);
    assert_eq!(s.server.fetches(), 1);
}

#[tokio::test]
async fn hs256_with_secret_file() {
    let dir = temp_dir("hs256");
    let secret = b"0123456789abcdef0123456789abcdef-extra";
    let path = dir.join("jwt.secret");
    std::fs::write(&path, [&secret[..], b"\n"].concat()).unwrap();
    let env = env_with(None, options());
    let mut p = policy(None);
    p.secret_file = Some(path.clone());
    p.algorithms = vec!["HS256".into()];
    let r = route(&p, &env);
    let claims = cognito_id_claims(&[]);
    expect_continue(check_token(&r, &Signer::hmac(secret).sign(&claims)).await);
    expect_respond(
        check_token(
            &r,
            &Signer::hmac(b"another-secret-of-32-bytes-......").sign(&claims),
        )
        .await,
        401,
    );

    // A route with both HS256 and RS256: an HS256 token HMAC'd with the RSA public key is
    // still checked against the secret only.
    let s = setup("hs-and-rs", options()).await;
    let mut p = policy(Some(&s.server.uri));
    p.secret_file = Some(path);
    p.algorithms = vec!["RS256".into(), "HS256".into()];
    let r = route(&p, &s.env);
    expect_continue(check_token(&r, &s.rsa.sign(&claims)).await);
    expect_continue(check_token(&r, &Signer::hmac(secret).sign(&claims)).await);
    let rsa_pub = s.rsa.jwk().to_string();
    let forged = Signer::hmac(rsa_pub.as_bytes())
        .sign_with_header(&json!({"alg": "HS256", "kid": "rsa-1"}), &claims);
    expect_respond(check_token(&r, &forged).await, 401);
}

#[test]
fn build_errors_name_the_problem() {
    let env = PolicyEnv::new(None).unwrap();
    let build = |p: &JwtPolicy| RoutePolicies::build("users", Some(p), None, None, None, &env);
    let msg = |r: Result<RoutePolicies, PolicyError>| r.unwrap_err().to_string();

    let mut p = policy(Some("https://idp.example/jwks.json"));
    p.algorithms = vec!["none".into()];
    assert!(msg(build(&p)).contains("\"none\" is never accepted"));
    p.algorithms = vec!["RS257".into()];
    let m = msg(build(&p));
    assert!(
        m.contains("route \"users\"") && m.contains("unknown algorithm \"RS257\""),
        "{m}"
    );
    p.algorithms = vec!["HS256".into()];
    assert!(msg(build(&p)).contains("needs secret_file"));

    let mut p = policy(None);
    p.secret_file = Some(Path::new("/nonexistent/jwt.secret").into());
    p.algorithms = vec!["HS256".into()];
    let m = msg(build(&p));
    assert!(
        m.contains("secret_file") && m.contains("/nonexistent/jwt.secret"),
        "{m}"
    );
    p.algorithms = vec!["RS256".into()];
    assert!(msg(build(&p)).contains("needs jwks_uri"));

    let dir = temp_dir("short-secret");
    let short = dir.join("short");
    std::fs::write(&short, "too-short").unwrap();
    p.secret_file = Some(short);
    p.algorithms = vec!["HS256".into()];
    assert!(msg(build(&p)).contains("needs at least 32"));

    let p = policy(Some("http://idp.example/jwks.json"));
    assert!(msg(build(&p)).contains("loopback"));

    let mut p = policy(Some("https://idp.example/jwks.json"));
    p.require_roles = vec!["admin".into()];
    p.roles_claim = None;
    assert!(msg(build(&p)).contains("roles_claim"));

    let mut p = policy(Some("https://idp.example/jwks.json"));
    p.forward_claims = BTreeMap::from([("authorization".into(), "sub".into())]);
    assert!(msg(build(&p)).contains("forward_claims"));

    // ca_roots that is not a PEM file
    let bad = dir.join("roots.pem");
    std::fs::write(&bad, "nothing here").unwrap();
    let e = PolicyEnv::new(Some(&bad)).unwrap_err().to_string();
    assert!(e.contains("roots.pem"), "{e}");
}
