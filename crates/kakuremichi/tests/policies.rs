//! Route policies end to end through the real binary (`kakuremichi gateway --config F`):
//! JWTs verified against a JWKS served over HTTPS by the test (trusted through `ca_roots`,
//! with key rotation), Cognito-shaped ID and access tokens, the usual token attacks, API
//! keys with plans, rate limits in memory and in a real redis-server shared by two gateway
//! processes, CORS at the edge, IP rules behind trusted proxies, header edits, and the order
//! in which the policies apply (IP rules, CORS preflight, API key / JWT, rate limit, header
//! edits).

mod common;
mod policy_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Gateway, Origin, Resp, gateway, request, try_request};
use policy_support::*;
use serde_json::{Value, json};

const HOST: &str = "api.example.test";

/// GET `path` with these headers.
async fn get_with(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(gw.http, "GET", HOST, path, headers, Bytes::new()).await
}

/// GET `path` with a bearer token (and extra headers).
async fn get_token(gw: &Gateway, path: &str, token: &str, extra: &[(&str, &str)]) -> Resp {
    let auth = bearer(token);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    get_with(gw, path, &headers).await
}

/// The `[routes.jwt]` section every JWT route of these tests shares, plus `extra` keys.
fn jwt_section(jwks: &JwksServer, extra: &str) -> String {
    format!(
        "[routes.jwt]\njwks_uri = \"{}\"\nissuer = \"{ISSUER}\"\naudiences = [\"{CLIENT_ID}\"]\n\
         algorithms = [\"RS256\"]\n{extra}\n",
        jwks.uri
    )
}

/// A gateway trusting the test CA (`ca_roots`) with `settings` and `routes`.
async fn start_gateway(ca: &TestCa, settings: &str, routes: &str) -> Gateway {
    gateway(&format!("ca_roots = \"jwks-ca.pem\"\n{settings}"), routes)
        .file("jwks-ca.pem", ca.pem())
        .start()
        .await
}

#[track_caller]
fn assert_invalid_token(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {} {}", r.status, r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#),
        "{what}"
    );
    let body = r.json();
    assert!(
        body["error"] == "invalid_token" || body["error"] == "missing_token",
        "{what}: {body}"
    );
}

#[track_caller]
fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.json()["error"], code, "{}", r.text());
}

// ---------------------------------------------------------------------------------------
// JWT

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cognito_tokens_reach_the_service_with_their_claims_as_headers() {
    let ca = TestCa::new();
    let k1 = RsaKey::load("rsa-1.pk8.der", "cognito-k1");
    let jwks = JwksServer::start(&ca, &[&k1]).await;
    let origin = Origin::echo("svc").await;
    let routes = format!(
        r#"
[[routes]]
name = "users"
path = "/users"
upstream = "{o}"
{users}
[[routes]]
name = "orders"
path = "/orders"
upstream = "{o}"
{orders}
[[routes]]
name = "products"
path = "/products"
upstream = "{o}"
{products}
"#,
        o = origin.url(),
        users = jwt_section(
            &jwks,
            r#"roles_claim = "cognito:groups"
require_roles = ["admin", "staff"]
forward_claims = { "x-user-sub" = "sub", "x-user-email" = "email", "x-user-groups" = "cognito:groups" }"#
        ),
        orders = jwt_section(
            &jwks,
            r#"scopes_claim = "scope"
require_scopes = ["orders/read", "orders/write"]
forward_claims = { "x-user-sub" = "sub", "x-client-id" = "client_id" }"#
        ),
        products = jwt_section(
            &jwks,
            r#"roles_claim = "realm_access.roles"
require_roles = ["catalog"]"#
        ),
    );
    let gw = start_gateway(&ca, "", &routes).await;

    // A Cognito ID token (aud = client id, groups) of a staff member, with a client trying
    // to pose as another user through the forwarded header.
    let id_token = k1.sign(&cognito_id_claims(&["staff", "beta"]));
    let r = get_token(
        &gw,
        "/users/me",
        &id_token,
        &[
            ("x-user-sub", "someone-else"),
            ("x-user-groups", "admin"),
            // CGI-style servers (PHP, WSGI, Rack) read both spellings as HTTP_X_USER_SUB.
            ("x_user_sub", "someone-else"),
            ("X_User_Email", "root@example.com"),
            ("x-request-id", "jwt-id-token-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_header(&r, "x-user-sub").as_deref(), Some(SUB));
    assert_eq!(upstream_header(&r, "x_user_sub"), None);
    assert_eq!(upstream_header(&r, "x_user_email"), None);
    assert_eq!(
        upstream_header(&r, "x-user-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        upstream_header(&r, "x-user-groups").as_deref(),
        Some("staff,beta")
    );
    let line = gw.logs.wait_access("jwt-id-token-1").await;
    assert_eq!(line["subject"], SUB, "{line}");
    assert_eq!(line["route"], "users");
    assert_eq!(line["status"], 200);
    // The token itself is never logged.
    let sig = id_token.rsplit('.').next().unwrap();
    assert!(!gw.logs.text().contains(sig) && !gw.stderr.text().contains(sig));

    // A client-sent claim header on a request without a valid token never gets through
    // either: the request is refused.
    let before = origin.requests.load(Ordering::SeqCst);
    let r = get_with(&gw, "/users/me", &[("x-user-sub", SUB)]).await;
    assert_invalid_token(&r, "no token");
    assert_eq!(origin.requests.load(Ordering::SeqCst), before);

    // Roles: any of require_roles; a missing group or a missing claim is 403.
    for (groups, what) in [(&["guest"][..], "wrong group"), (&[][..], "no group")] {
        let r = get_token(&gw, "/users/me", &k1.sign(&cognito_id_claims(groups)), &[]).await;
        assert_error(&r, 403, "insufficient_role");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.contains("insufficient_scope")),
            "{what}: {:?}",
            r.headers
        );
    }
    let mut no_claim = cognito_id_claims(&[]);
    no_claim.as_object_mut().unwrap().remove("cognito:groups");
    let r = get_token(&gw, "/users/me", &k1.sign(&no_claim), &[]).await;
    assert_error(&r, 403, "insufficient_role");
    assert_eq!(origin.requests.load(Ordering::SeqCst), before);

    // A Cognito access token: no aud, client_id instead; scopes space-separated.
    let access = k1.sign(&cognito_access_claims(
        &[],
        "openid orders/read orders/write",
    ));
    let r = get_token(
        &gw,
        "/orders/42",
        &access,
        &[("x-request-id", "jwt-access-1")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-client-id").as_deref(),
        Some(CLIENT_ID)
    );
    assert_eq!(upstream_header(&r, "x-user-sub").as_deref(), Some(SUB));
    assert!(
        upstream_header(&r, "authorization").is_some(),
        "the token itself goes on to the service"
    );
    assert_eq!(gw.logs.wait_access("jwt-access-1").await["subject"], SUB);

    // Scopes: all of require_scopes.
    let partial = k1.sign(&cognito_access_claims(&[], "openid orders/read"));
    let r = get_token(&gw, "/orders/42", &partial, &[]).await;
    assert_error(&r, 403, "insufficient_scope");
    // An ID token has no scope at all.
    let r = get_token(&gw, "/orders/42", &id_token, &[]).await;
    assert_error(&r, 403, "insufficient_scope");
    // Scopes as a JSON array are accepted too.
    let mut arr = cognito_access_claims(&[], "");
    arr["scope"] = json!(["orders/read", "orders/write"]);
    let r = get_token(&gw, "/orders/42", &k1.sign(&arr), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An access token of another app client.
    let mut other = cognito_access_claims(&[], "orders/read orders/write");
    other["client_id"] = json!("another-client");
    let r = get_token(&gw, "/orders/42", &k1.sign(&other), &[]).await;
    assert_invalid_token(&r, "access token of another client");

    // Nested roles claim (Keycloak's realm_access.roles).
    let mut kc = cognito_id_claims(&[]);
    kc["realm_access"] = json!({"roles": ["offline_access", "catalog"]});
    let r = get_token(&gw, "/products/1", &k1.sign(&kc), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    kc["realm_access"] = json!({"roles": ["offline_access"]});
    let r = get_token(&gw, "/products/1", &k1.sign(&kc), &[]).await;
    assert_error(&r, 403, "insufficient_role");

    // exp and nbf have 60 s of leeway for clock skew.
    let mut skewed = cognito_id_claims(&["admin"]);
    skewed["exp"] = json!(now() - 30);
    skewed["nbf"] = json!(now() + 30);
    let r = get_token(&gw, "/users/me", &k1.sign(&skewed), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // One JWKS fetch served all three routes (they share the URL).
    assert_eq!(jwks.fetches(), 1, "the key set is cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_attacks_are_401_and_never_reach_the_service() {
    let ca = TestCa::new();
    let k1 = RsaKey::load("rsa-1.pk8.der", "k1");
    let outsider = RsaKey::load("rsa-3.pk8.der", "k1");
    let jwks = JwksServer::start(&ca, &[&k1]).await;
    let origin = Origin::echo("svc").await;
    let routes = format!(
        "[[routes]]\nname = \"users\"\npath = \"/users\"\nupstream = \"{}\"\n{}",
        origin.url(),
        jwt_section(&jwks, "forward_claims = { \"x-user-sub\" = \"sub\" }")
    );
    let gw = start_gateway(&ca, "", &routes).await;

    let good = cognito_id_claims(&["admin"]);
    let valid = k1.sign(&good);
    assert_eq!(get_token(&gw, "/users/me", &valid, &[]).await.status, 200);
    let served = origin.requests.load(Ordering::SeqCst);

    let rs256 = json!({"alg": "RS256", "typ": "JWT", "kid": "k1"});
    let hs256 = json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
    let with = |key: &str, value: Value| {
        let mut c = good.clone();
        c[key] = value;
        c
    };
    let (head, _, sig) = {
        let mut parts = valid.split('.');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        )
    };
    let mut flipped = sig.clone().into_bytes();
    let last = flipped.len() - 2;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let huge_claims = with("padding", json!("x".repeat(16 * 1024)));

    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            unsigned_token(&json!({"alg": "none", "typ": "JWT", "kid": "k1"}), &good),
        ),
        (
            "alg None",
            unsigned_token(&json!({"alg": "None", "kid": "k1"}), &good),
        ),
        (
            "alg none with a real signature",
            format!(
                "{}.{}",
                signing_input(&json!({"alg": "none", "kid": "k1"}), &good),
                sig
            ),
        ),
        (
            "HS256 keyed with the RSA public key (PEM)",
            hs256_token(k1.public_pem().as_bytes(), &hs256, &good),
        ),
        (
            "HS256 keyed with the RSA public key (DER)",
            hs256_token(&k1.spki, &hs256, &good),
        ),
        (
            "HS256 keyed with the modulus",
            hs256_token(k1.modulus(), &hs256, &good),
        ),
        (
            "PS256 header on an RS256 signature",
            k1.sign_with_header(&json!({"alg": "PS256", "kid": "k1"}), &good),
        ),
        (
            "signed by another key under a known kid",
            outsider.sign_with_header(&rs256, &good),
        ),
        (
            "signed by another key without kid",
            outsider.sign_with_header(&json!({"alg": "RS256"}), &good),
        ),
        (
            "unknown kid",
            outsider.sign_with_header(&json!({"alg": "RS256", "kid": "k-unknown"}), &good),
        ),
        ("expired", k1.sign(&with("exp", json!(now() - 120)))),
        ("not valid yet", k1.sign(&with("nbf", json!(now() + 300)))),
        ("no exp", {
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove("exp");
            k1.sign(&c)
        }),
        (
            "wrong issuer",
            k1.sign(&with(
                "iss",
                json!("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other"),
            )),
        ),
        (
            "wrong audience",
            k1.sign(&with("aud", json!("another-client"))),
        ),
        (
            "audience list without ours",
            k1.sign(&with("aud", json!(["a", "b"]))),
        ),
        (
            "tampered payload",
            format!(
                "{head}.{}.{sig}",
                b64url(
                    with("cognito:groups", json!(["admin", "root"]))
                        .to_string()
                        .as_bytes()
                )
            ),
        ),
        (
            "tampered subject",
            format!(
                "{head}.{}.{sig}",
                b64url(with("sub", json!("victim")).to_string().as_bytes())
            ),
        ),
        (
            "tampered signature",
            format!(
                "{head}.{}.{}",
                valid.split('.').nth(1).unwrap(),
                String::from_utf8(flipped).unwrap()
            ),
        ),
        (
            "critical header",
            k1.sign_with_header(
                &json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}),
                &good,
            ),
        ),
        (
            "two parts",
            format!("{head}.{}", valid.split('.').nth(1).unwrap()),
        ),
        ("garbage", "not-a-jwt".to_string()),
        ("16 KiB token", k1.sign(&huge_claims)),
    ];
    assert!(cases.last().unwrap().1.len() > 16 * 1024);
    for (what, token) in &cases {
        let r = get_token(&gw, "/users/me", token, &[("x-user-sub", "spoof")]).await;
        assert_invalid_token(&r, what);
    }

    // Not a bearer token, or not where one belongs.
    let valid_q = format!("/users/me?access_token={valid}");
    let id_q = format!("/users/me?id_token={valid}");
    let cookie = format!("access_token={valid}");
    let basic = [("authorization", "Basic YWxpY2U6c2VjcmV0")];
    let empty = [("authorization", "Bearer ")];
    let in_cookie = [("cookie", cookie.as_str())];
    let header_cases: Vec<HeaderCase<'_>> = vec![
        ("no Authorization", "/users/me", &[]),
        ("token only in the query string", valid_q.as_str(), &[]),
        ("id_token in the query string", id_q.as_str(), &[]),
        ("token only in a cookie", "/users/me", &in_cookie),
        ("Basic credentials", "/users/me", &basic),
        ("empty bearer", "/users/me", &empty),
    ];
    for (what, path, headers) in header_cases {
        let r = get_with(&gw, path, headers).await;
        assert_invalid_token(&r, what);
    }
    // Two Authorization headers, one of them valid.
    let auth = bearer(&valid);
    let r = get_with(
        &gw,
        "/users/me",
        &[("authorization", "Bearer x.y.z"), ("authorization", &auth)],
    )
    .await;
    assert_invalid_token(&r, "two Authorization headers");

    // Far past 16 KiB: the header limit (64 KiB) answers 431, or the policy 401.
    for size in [17 * 1024, 40 * 1024, 100 * 1024] {
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{}.sig", "A".repeat(size));
        let auth = bearer(&token);
        let r = try_request(
            gw.http,
            "GET",
            HOST,
            "/users/me",
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{size}-byte token: no answer: {e}"));
        assert!(
            r.status == 401 || r.status == 431,
            "{size}-byte token: {}",
            r.status
        );
    }

    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        served,
        "no refused request reached the service"
    );
    // Made-up kids may make the gateway refetch the key set at most once per 30 s.
    assert!(jwks.fetches() <= 2, "{} JWKS fetches", jwks.fetches());
    // Still alive and still serving.
    assert_eq!(get_token(&gw, "/users/me", &valid, &[]).await.status, 200);
    assert!(
        !gw.stderr.text().contains("panicked") && !gw.logs.text().contains("panicked"),
        "{}",
        gw.stderr.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_must_be_trusted_through_ca_roots() {
    let ca = TestCa::new();
    let k1 = RsaKey::load("rsa-1.pk8.der", "k1");
    let jwks = JwksServer::start(&ca, &[&k1]).await;
    let origin = Origin::echo("svc").await;
    let routes = format!(
        "[[routes]]\nname = \"users\"\nupstream = \"{}\"\n{}",
        origin.url(),
        jwt_section(&jwks, "")
    );
    // No ca_roots: the JWKS server's certificate is not trusted, so no key is ever known.
    let gw = gateway("", &routes).start().await;
    let r = get_token(&gw, "/", &k1.sign(&cognito_id_claims(&[])), &[]).await;
    assert_invalid_token(&r, "keys unavailable");
    gw.logs
        .wait_json("a log line about the failed JWKS fetch", |v| {
            v.to_string().contains("JWKS fetch failed")
        })
        .await;
    assert_eq!(origin.requests.load(Ordering::SeqCst), 0);
}

/// Takes about 30 s: a JWKS may be refetched at most once per 30 s, so a key published
/// after the first fetch is seen once that interval has passed (and not before, whatever
/// the clients send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_key_rotation() {
    let ca = TestCa::new();
    let k1 = RsaKey::load("rsa-1.pk8.der", "2024-k1");
    let k2 = RsaKey::load("rsa-2.pk8.der", "2025-k2");
    let stranger = RsaKey::load("rsa-3.pk8.der", "x");
    let jwks = JwksServer::start(&ca, &[&k1]).await;
    let origin = Origin::echo("svc").await;
    let routes = format!(
        "[[routes]]\nname = \"users\"\nupstream = \"{}\"\n{}",
        origin.url(),
        jwt_section(&jwks, "")
    );
    let gw = start_gateway(&ca, "", &routes).await;

    // The gateway fetches the set as it starts.
    let first = common::eventually("the first JWKS fetch", common::DEADLINE, || async {
        jwks.first_fetch()
    })
    .await;
    let claims = cognito_id_claims(&[]);
    assert_eq!(
        get_token(&gw, "/", &k1.sign(&claims), &[]).await.status,
        200
    );

    // The IdP publishes a second key and starts signing with it.
    jwks.publish(&[&k1, &k2]);
    let new_token = k2.sign(&claims);
    if first.elapsed() < Duration::from_secs(25) {
        let r = get_token(&gw, "/", &new_token, &[]).await;
        assert_invalid_token(&r, "new kid within 30 s of the last fetch");
        // Made-up kids do not turn the gateway against the IdP.
        for i in 0..20 {
            let t = stranger.sign_with_header(
                &json!({"alg": "RS256", "kid": format!("made-up-{i}")}),
                &claims,
            );
            assert_invalid_token(&get_token(&gw, "/", &t, &[]).await, "made-up kid");
        }
        assert_eq!(jwks.fetches(), 1, "no refetch within 30 s");
    }

    // Once the interval has passed, the unknown kid makes the gateway refetch, once.
    let accepted = common::eventually(
        "the rotated key to be accepted",
        Duration::from_secs(50),
        || async {
            let r = get_token(&gw, "/", &new_token, &[]).await;
            if r.status == 200 {
                Some(Instant::now())
            } else {
                assert_invalid_token(&r, "rotated key before the refetch");
                tokio::time::sleep(Duration::from_millis(500)).await;
                None
            }
        },
    )
    .await;
    let waited = accepted.duration_since(first);
    assert!(
        waited >= Duration::from_secs(28),
        "refetched after only {waited:?}"
    );
    assert_eq!(jwks.fetches(), 2, "exactly one refetch");
    // Both keys are valid during the overlap; the made-up kid still is not.
    assert_eq!(
        get_token(&gw, "/", &k1.sign(&claims), &[]).await.status,
        200
    );
    assert_eq!(get_token(&gw, "/", &new_token, &[]).await.status, 200);
    let t = stranger.sign_with_header(&json!({"alg": "RS256", "kid": "made-up"}), &claims);
    assert_invalid_token(&get_token(&gw, "/", &t, &[]).await, "made-up kid");
    assert_eq!(jwks.fetches(), 2, "no refetch right after one");
}

// ---------------------------------------------------------------------------------------
// API keys

const MOBILE_KEY: &str = "kmk_live_9c41f0d2b8e7a6c53e1d0f9a";
const PARTNER_KEY: &str = "kmk_live_partner_4b7e2a91c0d8f6e3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_with_plans() {
    let origin = Origin::echo("svc").await;
    let keys = format!(
        r#"
[plans.metered]
quota = 3
quota_per = "1d"

[[keys]]
name = "mobile-app"
key_sha256 = "{}"
plan = "metered"

[[keys]]
name = "partner"
key_sha256 = "{}"
requests = 2
per = "1m"
burst = 2
"#,
        sha256_hex(MOBILE_KEY.as_bytes()),
        sha256_hex(PARTNER_KEY.as_bytes())
    );
    let routes = format!(
        r#"
[[routes]]
name = "products"
path = "/products"
upstream = "{}"
[routes.api_keys]
keys_file = "api-keys.toml"
"#,
        origin.url()
    );
    let gw = gateway("", &routes)
        .file("api-keys.toml", keys)
        .start()
        .await;

    // Without a key, or with a wrong one: 401, and the service sees nothing.
    let r = get_with(&gw, "/products", &[]).await;
    assert_error(&r, 401, "missing_api_key");
    let wrong = "kmk_live_0000000000000000guess";
    for key in [wrong, "", MOBILE_KEY.to_uppercase().as_str()] {
        let r = get_with(
            &gw,
            "/products",
            &[("x-api-key", key), ("x-request-id", "key-wrong")],
        )
        .await;
        assert_eq!(r.status, 401, "key {key:?}: {}", r.text());
    }
    let both = [("x-api-key", MOBILE_KEY), ("x-api-key", wrong)];
    assert_eq!(get_with(&gw, "/products", &both).await.status, 401);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 0);

    // A valid key: the key header is removed, the key's name is sent instead (a
    // client-sent name is replaced), and the access log names the key, never the key.
    let r = get_with(
        &gw,
        "/products/7",
        &[
            ("x-api-key", MOBILE_KEY),
            ("x-api-key-name", "partner"),
            ("x_api_key_name", "partner"),
            ("x-request-id", "key-mobile-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(upstream_header(&r, "x-api-key"), None);
    assert_eq!(upstream_header(&r, "x_api_key_name"), None);
    assert_eq!(
        upstream_header(&r, "x-api-key-name").as_deref(),
        Some("mobile-app")
    );
    let line = gw.logs.wait_access("key-mobile-1").await;
    assert_eq!(line["api_key"], "mobile-app", "{line}");
    let refused = gw.logs.wait_access("key-wrong").await;
    assert_eq!(refused["status"], 401);
    assert_eq!(refused["api_key"], "");

    // The partner's plan: 2 requests per minute, then 429 with the rate headers.
    for remaining in [1, 0] {
        let r = get_with(&gw, "/products", &[("x-api-key", PARTNER_KEY)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(number(&r, "ratelimit-limit"), 2);
        assert_eq!(number(&r, "ratelimit-remaining"), remaining);
    }
    let r = get_with(
        &gw,
        "/products",
        &[
            ("x-api-key", PARTNER_KEY),
            ("x-request-id", "key-partner-429"),
        ],
    )
    .await;
    assert_error(&r, 429, "rate_limited");
    let retry = number(&r, "retry-after");
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(number(&r, "ratelimit-remaining"), 0);
    assert_eq!(
        gw.logs.wait_access("key-partner-429").await["api_key"],
        "partner"
    );

    // The mobile app's quota: 3 a day (one used above), then 429 until UTC midnight.
    for _ in 0..2 {
        let r = get_with(&gw, "/products", &[("x-api-key", MOBILE_KEY)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = get_with(&gw, "/products", &[("x-api-key", MOBILE_KEY)]).await;
    assert_error(&r, 429, "quota_exceeded");
    let retry = number(&r, "retry-after") as i64;
    let to_midnight = 86_400 - now().rem_euclid(86_400);
    assert!(
        (retry - to_midnight).abs() <= 5,
        "Retry-After {retry}, midnight in {to_midnight}"
    );

    // Neither key appears in any log line.
    let logs = format!("{}\n{}", gw.logs.text(), gw.stderr.text());
    for key in [MOBILE_KEY, PARTNER_KEY, wrong] {
        assert!(!logs.contains(key), "a key is in the logs");
    }
}

// ---------------------------------------------------------------------------------------
// Rate limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_by_ip_and_by_header() {
    let origin = Origin::echo("svc").await;
    let routes = format!(
        r#"
[[routes]]
name = "by-ip"
path = "/ip"
upstream = "{o}"
[routes.rate_limit]
key = "ip"
requests = 3
per = "1m"

[[routes]]
name = "by-tenant"
path = "/tenant"
upstream = "{o}"
[routes.rate_limit]
key = "header:x-tenant"
requests = 2
per = "1m"
burst = 2
"#,
        o = origin.url()
    );
    // The test client is a trusted proxy, so X-Forwarded-For names the client.
    let gw = gateway("trusted_proxies = [\"127.0.0.1/32\"]", &routes)
        .start()
        .await;

    let a = [("x-forwarded-for", "198.51.100.1")];
    for remaining in [2, 1, 0] {
        let r = get_with(&gw, "/ip/x", &a).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(number(&r, "ratelimit-limit"), 3);
        assert_eq!(number(&r, "ratelimit-remaining"), remaining);
        assert!(number(&r, "ratelimit-reset") <= 60);
    }
    let r = get_with(
        &gw,
        "/ip/x",
        &[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-request-id", "rl-429"),
        ],
    )
    .await;
    assert_error(&r, 429, "rate_limited");
    let retry = number(&r, "retry-after");
    assert!((1..=20).contains(&retry), "one request every 20 s: {retry}");
    assert_eq!(number(&r, "ratelimit-limit"), 3);
    assert_eq!(number(&r, "ratelimit-remaining"), 0);
    let reset = number(&r, "ratelimit-reset");
    assert!((1..=60).contains(&reset), "RateLimit-Reset {reset}");
    assert!(r.header("x-request-id").is_some());
    assert_eq!(gw.logs.wait_access("rl-429").await["status"], 429);
    // Another client has its own allowance; so has the proxy itself.
    let b = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(get_with(&gw, "/ip/x", &b).await.status, 200);
    assert_eq!(get_with(&gw, "/ip/x", &[]).await.status, 200);
    assert_eq!(get_with(&gw, "/ip/x", &a).await.status, 429);

    // Keyed by a header: each tenant has its own allowance, whatever the address.
    for _ in 0..2 {
        let r = get_with(&gw, "/tenant", &[("x-tenant", "acme")]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = get_with(&gw, "/tenant", &[("x-tenant", "acme")]).await;
    assert_error(&r, 429, "rate_limited");
    assert!(number(&r, "retry-after") >= 1);
    assert_eq!(number(&r, "ratelimit-limit"), 2);
    let r = get_with(&gw, "/tenant", &[("x-tenant", "globex")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(number(&r, "ratelimit-remaining"), 1);
    // Without the header, the client address is the key.
    assert_eq!(get_with(&gw, "/tenant", &[]).await.status, 200);
    // Refused requests never reached the service.
    assert_eq!(origin.requests.load(Ordering::SeqCst), 5 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_limit_through_redis() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::echo("svc").await;
    let down = common::closed_port();
    let routes = format!(
        r#"
[[routes]]
name = "shared"
path = "/shared"
upstream = "{o}"
[routes.rate_limit]
key = "header:x-tenant"
requests = 5
per = "1m"
store = "{url}"

[[routes]]
name = "store-down"
path = "/down"
upstream = "{o}"
[routes.rate_limit]
requests = 1
per = "1h"
store = "redis://127.0.0.1:{down}"

[[routes]]
name = "store-down-deny"
path = "/deny"
upstream = "{o}"
[routes.rate_limit]
requests = 1
per = "1h"
store = "redis://127.0.0.1:{down}"
on_store_error = "deny"
"#,
        o = origin.url(),
        url = redis.url()
    );
    let gw1 = gateway("", &routes).start().await;
    let gw2 = gateway("", &routes).start().await;

    // Five requests between the two gateways, alternating: one shared allowance.
    let tenant = [("x-tenant", "acme")];
    for (i, remaining) in [4, 3, 2, 1, 0].into_iter().enumerate() {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        let r = get_with(gw, "/shared", &tenant).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(number(&r, "ratelimit-remaining"), remaining, "request {i}");
    }
    for gw in [&gw1, &gw2] {
        let r = get_with(gw, "/shared", &tenant).await;
        assert_error(&r, 429, "rate_limited");
        assert!(number(&r, "retry-after") >= 1);
        assert_eq!(number(&r, "ratelimit-limit"), 5);
    }
    // Another tenant is untouched, on both.
    let other = [("x-tenant", "globex")];
    assert_eq!(get_with(&gw2, "/shared", &other).await.status, 200);
    assert_eq!(get_with(&gw1, "/shared", &other).await.status, 200);

    // A store that cannot be reached: requests are allowed (the default) and logged, or
    // refused with 503 under on_store_error = "deny".
    for _ in 0..3 {
        let r = get_with(&gw1, "/down", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.header("ratelimit-limit").is_none());
    }
    let r = get_with(&gw1, "/deny", &[]).await;
    assert_error(&r, 503, "rate_limit_store_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    gw1.logs
        .wait_json("a warning about the unreachable store", |v| {
            v["level"] == "WARN" && v.to_string().contains("rate-limit store")
        })
        .await;

    // The shared store goes away: requests are allowed again rather than refused.
    drop(redis);
    for gw in [&gw1, &gw2] {
        let r = get_with(gw, "/shared", &tenant).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

// ---------------------------------------------------------------------------------------
// CORS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_answered_at_the_edge() {
    // The service sends its own, looser CORS header; the gateway's answer wins.
    let origin = Origin::serve(|req| async move {
        let mut r = common::respond(200, format!("{} {}", req.method(), req.uri().path()));
        let h = r.headers_mut();
        h.insert("access-control-allow-origin", "*".parse().unwrap());
        h.insert("vary", "Accept-Encoding".parse().unwrap());
        r
    })
    .await;
    let routes = format!(
        r#"
[[routes]]
name = "api"
path = "/api"
upstream = "{o}"
[routes.cors]
allow_origins = ["https://app.example.com", "https://*.example.org"]
allow_methods = ["GET", "POST", "PUT", "DELETE"]
allow_headers = ["content-type", "authorization"]
expose_headers = ["x-request-id"]
allow_credentials = true
max_age = "10m"

[[routes]]
name = "public"
path = "/public"
upstream = "{o}"
[routes.cors]
allow_origins = ["*"]
"#,
        o = origin.url()
    );
    let gw = gateway("", &routes).start().await;
    let preflight = |origin: &'static str| {
        let gw = &gw;
        async move {
            request(
                gw.http,
                "OPTIONS",
                HOST,
                "/api/items",
                &[
                    ("origin", origin),
                    ("access-control-request-method", "PUT"),
                    (
                        "access-control-request-headers",
                        "content-type, authorization",
                    ),
                ],
                Bytes::new(),
            )
            .await
        }
    };

    for allowed in ["https://app.example.com", "https://eu.shop.example.org"] {
        let r = preflight(allowed).await;
        assert_eq!(r.status, 204, "{allowed}: {}", r.text());
        assert!(r.body.is_empty());
        assert_eq!(r.header("access-control-allow-origin"), Some(allowed));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        let methods = r.header("access-control-allow-methods").unwrap_or("");
        assert!(
            methods.contains("PUT") && methods.contains("DELETE"),
            "{methods}"
        );
        let headers = r.header("access-control-allow-headers").unwrap_or("");
        assert!(
            headers.contains("content-type") && headers.contains("authorization"),
            "{headers}"
        );
        assert_eq!(r.header("access-control-max-age"), Some("600"));
        assert!(all_values(&r, "vary").join(",").contains("Origin"));
        assert!(r.header("x-request-id").is_some());
    }
    for denied in ["https://evil.example.com", "https://example.org", "null"] {
        let r = preflight(denied).await;
        assert_eq!(r.status, 403, "{denied}");
        assert!(r.header("access-control-allow-origin").is_none());
    }
    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        0,
        "preflights are answered by the gateway"
    );

    // Actual requests: the origin echoed, with credentials, never `*`; Vary keeps the
    // service's value and adds Origin.
    let r = get_with(&gw, "/api/items", &[("origin", "https://app.example.com")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        all_values(&r, "access-control-allow-origin"),
        ["https://app.example.com"]
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    let vary = all_values(&r, "vary").join(",");
    assert!(
        vary.contains("Origin") && vary.contains("Accept-Encoding"),
        "{vary}"
    );
    let r = request(
        gw.http,
        "POST",
        HOST,
        "/api/items",
        &[("origin", "https://eu.shop.example.org")],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://eu.shop.example.org")
    );
    // Another origin's actual request is forwarded (the browser enforces CORS), but never
    // gets the credentials grant.
    let r = get_with(&gw, "/api/items", &[("origin", "https://evil.example.com")]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-credentials").is_none());
    assert_ne!(
        r.header("access-control-allow-origin"),
        Some("https://evil.example.com")
    );

    // Without Origin (not a CORS request): no grant, but Vary: Origin for caches.
    let r = get_with(&gw, "/api/items", &[]).await;
    assert!(r.header("access-control-allow-credentials").is_none());
    assert!(all_values(&r, "vary").join(",").contains("Origin"));

    // Without credentials, "*" may be answered as `*`.
    let r = get_with(&gw, "/public/x", &[("origin", "https://anyone.example")]).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-credentials").is_none());

    // "*" with credentials: the gateway refuses to start rather than serve it.
    let dir = common::temp_dir("cors-star");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        format!(
            "[gateway]\nhttp = \"127.0.0.1:{}\"\n\n[[routes]]\nname = \"x\"\nupstream = \"{}\"\n\
             [routes.cors]\nallow_origins = [\"*\"]\nallow_credentials = true\n",
            common::free_port(),
            origin.url()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::BIN)
        .args(["gateway", "--config", file.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::eventually("the gateway to refuse the file", common::DEADLINE, || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "{text}");
    assert!(text.contains("allow_credentials"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// IP rules and header edits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_rules_use_the_client_address_after_trusted_proxies() {
    let origin = Origin::echo("svc").await;
    let routes = format!(
        r#"
[[routes]]
name = "admin"
path = "/admin"
upstream = "{o}"
[routes.ip]
allow = ["203.0.113.0/24"]
deny = ["203.0.113.66"]

[[routes]]
name = "open"
path = "/open"
upstream = "{o}"
[routes.ip]
deny = ["192.0.2.0/24"]
"#,
        o = origin.url()
    );
    let behind = gateway(
        "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]",
        &routes,
    )
    .start()
    .await;
    let direct = gateway("", &routes).start().await;

    let cases = [
        ("203.0.113.7", "/admin", 200),
        ("203.0.113.66", "/admin", 403),
        ("198.51.100.1", "/admin", 403),
        // A chain through an internal (trusted) proxy: the client is the first untrusted hop
        // from the right.
        ("203.0.113.7, 10.1.2.3", "/admin", 200),
        // A forged first hop does not help: the right-most untrusted address counts.
        ("203.0.113.7, 198.51.100.9", "/admin", 403),
        ("garbage", "/admin", 403),
        ("192.0.2.10", "/open", 403),
        ("198.51.100.1", "/open", 200),
    ];
    for (xff, path, status) in cases {
        let r = get_with(&behind, path, &[("x-forwarded-for", xff)]).await;
        assert_eq!(r.status, status, "{xff} {path}: {}", r.text());
        if status == 403 {
            assert_eq!(r.json()["error"], "ip_denied");
        }
    }
    let r = get_with(
        &behind,
        "/admin",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-request-id", "ip-ok"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        behind.logs.wait_access("ip-ok").await["client_ip"],
        "203.0.113.7"
    );
    // The proxy itself is not in the allow list.
    assert_eq!(get_with(&behind, "/admin", &[]).await.status, 403);

    // Without trusted_proxies, X-Forwarded-For is the client's word and counts for nothing.
    let r = get_with(&direct, "/admin", &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_error(&r, 403, "ip_denied");
    let r = get_with(&direct, "/open", &[("x-forwarded-for", "192.0.2.10")]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_on_requests_and_responses() {
    let ca = TestCa::new();
    let k1 = RsaKey::load("rsa-1.pk8.der", "k1");
    let jwks = JwksServer::start(&ca, &[&k1]).await;
    let origin = Origin::serve(|req| async move {
        let mut headers = serde_json::Map::new();
        for (k, v) in req.headers() {
            let list = headers.entry(k.as_str()).or_insert_with(|| json!([]));
            if let Value::Array(values) = list {
                values.push(json!(String::from_utf8_lossy(v.as_bytes())));
            }
        }
        let mut r = common::respond(200, json!({ "headers": headers }).to_string());
        let h = r.headers_mut();
        h.insert("server", "origin/1.0".parse().unwrap());
        h.insert("x-powered-by", "php/5".parse().unwrap());
        h.insert("cache-control", "private".parse().unwrap());
        r
    })
    .await;
    let routes = format!(
        r#"
[[routes]]
name = "svc"
upstream = "{o}"
{jwt}
[routes.headers]
request_set = {{ "x-from" = "edge", "x-tenant" = "fixed" }}
request_remove = ["x-internal", "authorization"]
response_set = {{ "strict-transport-security" = "max-age=31536000", "cache-control" = "no-store" }}
response_remove = ["server", "x-powered-by"]
"#,
        o = origin.url(),
        jwt = jwt_section(&jwks, "forward_claims = { \"x-user-sub\" = \"sub\" }"),
    );
    let gw = start_gateway(&ca, "", &routes).await;
    let token = k1.sign(&cognito_id_claims(&[]));
    let r = get_token(
        &gw,
        "/x",
        &token,
        &[
            ("x-internal", "secret"),
            ("x-tenant", "mine"),
            ("x-keep", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Request edits come after the policies: the token was verified, then removed.
    assert_eq!(upstream_header(&r, "authorization"), None);
    assert_eq!(upstream_header(&r, "x-user-sub").as_deref(), Some(SUB));
    assert_eq!(upstream_header(&r, "x-internal"), None);
    assert_eq!(upstream_header(&r, "x-from").as_deref(), Some("edge"));
    assert_eq!(upstream_header(&r, "x-tenant").as_deref(), Some("fixed"));
    assert_eq!(upstream_header(&r, "x-keep").as_deref(), Some("1"));
    // Response edits.
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(all_values(&r, "cache-control"), ["no-store"]);
    assert!(r.header("server").is_none() && r.header("x-powered-by").is_none());
    // The policies still apply: removing Authorization upstream does not open the route.
    assert_invalid_token(&get_with(&gw, "/x", &[]).await, "no token");
}

// ---------------------------------------------------------------------------------------
// Order

/// IP rules, then CORS preflight, then authentication, then the rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_apply_in_order() {
    let ca = TestCa::new();
    let k1 = RsaKey::load("rsa-1.pk8.der", "k1");
    let jwks = JwksServer::start(&ca, &[&k1]).await;
    let origin = Origin::echo("svc").await;
    let routes = format!(
        r#"
[[routes]]
name = "orders"
path = "/orders"
upstream = "{o}"
[routes.ip]
deny = ["198.51.100.0/24"]
[routes.cors]
allow_origins = ["https://app.example.com"]
allow_methods = ["GET", "POST"]
allow_headers = ["authorization"]
allow_credentials = true
{jwt}
[routes.rate_limit]
key = "ip"
requests = 2
per = "1h"
"#,
        o = origin.url(),
        jwt = jwt_section(&jwks, ""),
    );
    let gw = start_gateway(&ca, "trusted_proxies = [\"127.0.0.1/32\"]", &routes).await;
    let token = k1.sign(&cognito_id_claims(&[]));
    let app = ("origin", "https://app.example.com");
    let good_ip = ("x-forwarded-for", "203.0.113.5");
    let bad_ip = ("x-forwarded-for", "198.51.100.5");
    let preflight = |ip: (&'static str, &'static str)| {
        let gw = &gw;
        async move {
            request(
                gw.http,
                "OPTIONS",
                HOST,
                "/orders",
                &[app, ip, ("access-control-request-method", "POST")],
                Bytes::new(),
            )
            .await
        }
    };

    // 1. IP rules come first: a denied client's preflight is 403 ip_denied, not 204, and a
    //    valid token does not help it.
    assert_error(&preflight(bad_ip).await, 403, "ip_denied");
    assert_error(
        &get_token(&gw, "/orders", &token, &[bad_ip]).await,
        403,
        "ip_denied",
    );

    // 2. CORS preflight before authentication: answered without a token, and it does not
    //    count against the rate limit.
    for _ in 0..4 {
        let r = preflight(good_ip).await;
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
    }

    // 3. Authentication before the rate limit: requests without a valid token are 401 (a
    //    browser can read it: the CORS headers are there), however many, and use none of
    //    the allowance.
    for _ in 0..4 {
        let r = get_with(&gw, "/orders", &[app, good_ip]).await;
        assert_invalid_token(&r, "no token");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert!(r.header("ratelimit-limit").is_none());
    }

    // 4. Then the rate limit, on authenticated requests only.
    for remaining in [1, 0] {
        let r = get_token(&gw, "/orders", &token, &[app, good_ip]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(number(&r, "ratelimit-remaining"), remaining);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("https://app.example.com")
        );
    }
    let r = get_token(&gw, "/orders", &token, &[app, good_ip]).await;
    assert_error(&r, 429, "rate_limited");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com"),
        "a browser can read the 429"
    );
    // Once limited, an invalid token is still 401 and a denied address still 403.
    assert_invalid_token(
        &get_token(&gw, "/orders", "x.y.z", &[good_ip]).await,
        "bad token after the limit",
    );
    assert_error(
        &get_token(&gw, "/orders", &token, &[bad_ip]).await,
        403,
        "ip_denied",
    );
    assert_eq!(preflight(good_ip).await.status, 204);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 2);
}

/// A CORS preflight is answered by the route the actual request would take, even when
/// that route's `methods` do not list OPTIONS (one path, a read and a write service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_reaches_routes_restricted_by_method() {
    let origin = Origin::echo("svc").await;
    let routes = format!(
        r#"
[[routes]]
name = "read"
path = "/catalog"
methods = ["GET"]
upstream = "{o}"
[routes.cors]
allow_origins = ["https://app.example.com"]
allow_methods = ["GET"]

[[routes]]
name = "write"
path = "/catalog"
methods = ["POST", "PUT"]
upstream = "{o}"
[routes.cors]
allow_origins = ["https://app.example.com"]
allow_methods = ["POST", "PUT"]
allow_headers = ["content-type"]

[[routes]]
name = "no-cors"
path = "/plain"
methods = ["GET"]
upstream = "{o}"
"#,
        o = origin.url()
    );
    let gw = gateway("", &routes).start().await;
    let preflight = |path: &'static str, method: &'static str| {
        let gw = &gw;
        async move {
            request(
                gw.http,
                "OPTIONS",
                HOST,
                path,
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", method),
                ],
                Bytes::new(),
            )
            .await
        }
    };
    let r = preflight("/catalog/9", "PUT").await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("access-control-allow-methods"), Some("POST, PUT"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type")
    );
    let r = preflight("/catalog/9", "GET").await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("access-control-allow-methods"), Some("GET"));
    // No route would take the actual request, or the route has no CORS: 405 as before.
    let r = preflight("/catalog/9", "DELETE").await;
    assert_eq!(r.status, 405);
    assert!(r.header("allow").is_some_and(|a| a.contains("PUT")));
    assert_eq!(preflight("/plain", "GET").await.status, 405);
    let r = request(gw.http, "OPTIONS", HOST, "/catalog/9", &[], Bytes::new()).await;
    assert_eq!(r.status, 405);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 0);
}

/// SIGHUP: a rotated API key file takes effect; rate-limit counters and the JWKS cache
/// survive the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_keys_and_keeps_limits() {
    let ca = TestCa::new();
    let k1 = RsaKey::load("rsa-1.pk8.der", "k1");
    let jwks = JwksServer::start(&ca, &[&k1]).await;
    let origin = Origin::echo("svc").await;
    let (old_key, new_key, other_key) =
        ("kmk_old_11111111", "kmk_new_22222222", "kmk_beta_3333333");
    let keys_v1 = format!(
        "[[keys]]\nname = \"alpha\"\nkey_sha256 = \"{}\"\n",
        sha256_hex(old_key.as_bytes())
    );
    let keys_v2 = format!(
        "[[keys]]\nname = \"alpha\"\nkey_sha256 = \"{}\"\n\n[[keys]]\nname = \"beta\"\nkey_sha256 = \"{}\"\n",
        sha256_hex(new_key.as_bytes()),
        sha256_hex(other_key.as_bytes())
    );
    let routes = format!(
        r#"
[[routes]]
name = "reports"
path = "/reports"
upstream = "{o}"
[routes.api_keys]
keys_file = "keys.toml"
[routes.rate_limit]
key = "api_key"
requests = 2
per = "1h"

[[routes]]
name = "me"
path = "/me"
upstream = "{o}"
{jwt}
[routes.rate_limit]
key = "claim:sub"
requests = 1
per = "1h"
"#,
        o = origin.url(),
        jwt = jwt_section(&jwks, ""),
    );
    let gw = gateway("ca_roots = \"jwks-ca.pem\"", &routes)
        .file("jwks-ca.pem", ca.pem())
        .file("keys.toml", keys_v1)
        .start()
        .await;

    for _ in 0..2 {
        let r = get_with(&gw, "/reports", &[("x-api-key", old_key)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_error(
        &get_with(&gw, "/reports", &[("x-api-key", old_key)]).await,
        429,
        "rate_limited",
    );
    // Keyed by the token's subject: each user has an allowance, whoever calls from where.
    let alice = k1.sign(&cognito_id_claims(&[]));
    let mut bob_claims = cognito_id_claims(&[]);
    bob_claims["sub"] = json!("bob");
    let bob = k1.sign(&bob_claims);
    assert_eq!(get_token(&gw, "/me", &alice, &[]).await.status, 200);
    assert_error(
        &get_token(&gw, "/me", &alice, &[]).await,
        429,
        "rate_limited",
    );
    assert_eq!(get_token(&gw, "/me", &bob, &[]).await.status, 200);

    // Rotate alpha's key and add beta, then reload.
    std::fs::write(gw.dir.join("keys.toml"), keys_v2).unwrap();
    gw.signal("HUP");
    gw.wait_metric("kakuremichi_config_reloads_total", &[], |v| v == 1.0)
        .await;
    assert_error(
        &get_with(&gw, "/reports", &[("x-api-key", old_key)]).await,
        401,
        "invalid_api_key",
    );
    // The counters are kept by key name and route: alpha's allowance is still used up.
    assert_error(
        &get_with(&gw, "/reports", &[("x-api-key", new_key)]).await,
        429,
        "rate_limited",
    );
    let r = get_with(&gw, "/reports", &[("x-api-key", other_key)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        upstream_header(&r, "x-api-key-name").as_deref(),
        Some("beta")
    );
    assert_error(
        &get_token(&gw, "/me", &alice, &[]).await,
        429,
        "rate_limited",
    );
    assert_eq!(jwks.fetches(), 1, "the JWKS cache survives the reload");
}

/// A case of the bearer-token table: what it shows, the path, the extra headers.
type HeaderCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
