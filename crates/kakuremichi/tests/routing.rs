//! Route matching through the real gateway: hosts, path prefixes, normalization, strip_path,
//! methods, disabled routes and the 404 answer.

mod common;

use std::time::Duration;

use common::{Origin, RawConn, gateway_with_routes, get, raw, request};

fn origin_of(r: &common::Resp) -> String {
    assert_eq!(r.status, 200, "body: {}", r.text());
    r.json()["origin"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_beats_wildcard_beats_any() {
    let exact = Origin::echo("exact").await;
    let wild = Origin::echo("wild").await;
    let any = Origin::echo("any").await;
    let gw = gateway_with_routes(&format!(
        r#"
[[routes]]
name = "any"
upstream = "{}"

[[routes]]
name = "wild"
hosts = ["*.example.com"]
upstream = "{}"

[[routes]]
name = "exact"
hosts = ["app.example.com"]
upstream = "{}"
"#,
        any.url(),
        wild.url(),
        exact.url()
    ))
    .start()
    .await;

    for (host, expected) in [
        ("app.example.com", "exact"),
        ("APP.Example.COM:8080", "exact"),
        ("app.example.com.", "exact"),
        ("foo.example.com", "wild"),
        ("deep.foo.example.com", "wild"),
        ("example.com", "any"),
        ("other.org", "any"),
        ("app.example.com.evil.org", "any"),
    ] {
        let r = get(gw.http, host, "/x").await;
        assert_eq!(origin_of(&r), expected, "Host: {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_on_a_segment_boundary() {
    let api = Origin::echo("api").await;
    let v2 = Origin::echo("v2").await;
    let root = Origin::echo("root").await;
    let gw = gateway_with_routes(&format!(
        r#"
[[routes]]
name = "root"
upstream = "{}"

[[routes]]
name = "api"
path = "/api"
upstream = "{}"

[[routes]]
name = "v2"
path = "/api/v2/"
upstream = "{}"
"#,
        root.url(),
        api.url(),
        v2.url()
    ))
    .start()
    .await;

    for (path, expected) in [
        ("/api", "api"),
        ("/api/", "api"),
        ("/api/x", "api"),
        ("/api?q=1", "api"),
        ("/apix", "root"),
        ("/ap", "root"),
        ("/api/v2", "v2"),
        ("/api/v2/users/7", "v2"),
        ("/api/v2x", "api"),
        ("/", "root"),
    ] {
        let r = get(gw.http, "h.test", path).await;
        assert_eq!(origin_of(&r), expected, "path {path}");
    }
    // The access log names the route that served.
    let line = gw
        .logs
        .wait_json("the access-log line of /apix", |l| {
            l["target"] == "kakuremichi::access" && l["path"] == "/apix"
        })
        .await;
    assert_eq!(line["route"], "root");
}

/// Sends `GET target` as raw bytes, so that nothing on the client side normalizes it.
async fn raw_get(gw: &common::Gateway, target: &str) -> common::RawResp {
    raw(
        gw.http,
        format!("GET {target} HTTP/1.1\r\nHost: n.test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_and_escapes_cannot_dodge_a_route() {
    let public = Origin::echo("public").await;
    let admin = Origin::echo("admin").await;
    let files = Origin::echo("files").await;
    let gw = gateway_with_routes(&format!(
        r#"
[[routes]]
name = "public"
path = "/public"
upstream = "{}"

[[routes]]
name = "admin"
path = "/admin"
upstream = "{}"

[[routes]]
name = "files"
path = "/files"
upstream = "{}"
"#,
        public.url(),
        admin.url(),
        files.url()
    ))
    .start()
    .await;

    for (target, origin, upstream_path) in [
        ("/public/../admin", "admin", "/admin"),
        ("/public/%2e%2e/admin", "admin", "/admin"),
        ("/public/%2E%2E/admin/users", "admin", "/admin/users"),
        ("/public/.%2e/admin", "admin", "/admin"),
        ("/public/x/../../admin?a=1", "admin", "/admin"),
        ("//admin", "admin", "/admin"),
        ("/./admin", "admin", "/admin"),
        ("/../../admin", "admin", "/admin"),
        ("/%61dmin", "admin", "/admin"),
        ("/public/./a//b", "public", "/public/a/b"),
    ] {
        let r = raw_get(&gw, target).await;
        assert_eq!(r.status, 200, "{target}");
        let v = r.json();
        assert_eq!(v["origin"], origin, "{target}");
        assert_eq!(v["path"], upstream_path, "{target}");
    }
    // The query is passed as sent.
    let v = raw_get(&gw, "/public/x/../../admin?a=1").await.json();
    assert_eq!(v["query"], "a=1");

    // %2F is not a slash: it stays encoded (uppercased), unreserved escapes are decoded.
    let v = raw_get(&gw, "/files/a%2Fb%2e%7Etxt").await.json();
    assert_eq!(v["origin"], "files");
    assert_eq!(v["path"], "/files/a%2Fb.~txt");
    let v = raw_get(&gw, "/files/a%2fb/%2E%2E/c").await.json();
    assert_eq!(v["path"], "/files/c", "a%2fb is one segment; .. removes it");
    let v = raw_get(&gw, "/files/x%2F..%2Fy").await.json();
    assert_eq!(
        v["path"], "/files/x%2F..%2Fy",
        "an encoded slash does not make a dot-segment"
    );

    // A path that is not valid is refused, not guessed at.
    let r = raw_get(&gw, "/files/%zz").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_path_removes_the_prefix_and_keeps_the_query() {
    let app = Origin::echo("app").await;
    let based = Origin::echo("based").await;
    let gw = gateway_with_routes(&format!(
        r#"
[[routes]]
name = "ai-interview"
path = "/ai-interview"
strip_path = true
upstream = "{}"

[[routes]]
name = "based"
path = "/b"
strip_path = true
upstream = "{}/base/"

[[routes]]
name = "kept"
path = "/kept"
upstream = "{}"
"#,
        app.url(),
        based.url(),
        app.url()
    ))
    .start()
    .await;

    let v = get(
        gw.http,
        "cloud.example.tech",
        "/ai-interview/api/v1/health?x=1&y=%2F",
    )
    .await
    .json();
    assert_eq!(v["path"], "/api/v1/health");
    assert_eq!(v["query"], "x=1&y=%2F");
    assert_eq!(v["uri"], "/api/v1/health?x=1&y=%2F");
    for (path, upstream) in [("/ai-interview", "/"), ("/ai-interview/", "/")] {
        let v = get(gw.http, "h", path).await.json();
        assert_eq!(v["path"], upstream, "{path}");
    }
    let r = get(gw.http, "h", "/ai-interviewx/api").await;
    assert_eq!(r.status, 404, "no segment boundary, no match");

    // An upstream URL with a path: it goes in front of the stripped path.
    let v = get(gw.http, "h", "/b/c/d?e").await.json();
    assert_eq!(v["origin"], "based");
    assert_eq!(v["uri"], "/base/c/d?e");

    // Without strip_path the prefix stays.
    let v = get(gw.http, "h", "/kept/x").await.json();
    assert_eq!(v["path"], "/kept/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_select_routes_and_others_get_405_with_allow() {
    let read = Origin::echo("read").await;
    let write = Origin::echo("write").await;
    let gw = gateway_with_routes(&format!(
        r#"
[[routes]]
name = "read"
hosts = ["m.test"]
path = "/m"
methods = ["GET"]
upstream = "{r}"

[[routes]]
name = "write"
hosts = ["m.test"]
path = "/m"
methods = ["post", "PUT"]
upstream = "{w}"

[[routes]]
name = "post-only"
hosts = ["m.test"]
path = "/p"
methods = ["POST"]
upstream = "{w}"
"#,
        r = read.url(),
        w = write.url()
    ))
    .start()
    .await;

    let r = request(gw.http, "GET", "m.test", "/m/1", &[], "").await;
    assert_eq!(origin_of(&r), "read");
    let r = request(gw.http, "POST", "m.test", "/m", &[], "data").await;
    assert_eq!(origin_of(&r), "write");
    assert_eq!(r.json()["body_len"], 4);
    let r = request(gw.http, "PUT", "m.test", "/m", &[], "").await;
    assert_eq!(origin_of(&r), "write");
    // HEAD is allowed wherever GET is.
    let r = request(gw.http, "HEAD", "m.test", "/m", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(read.requests.load(std::sync::atomic::Ordering::SeqCst), 2);

    let r = request(gw.http, "DELETE", "m.test", "/m", &[], "").await;
    assert_eq!(r.status, 405);
    let mut allow: Vec<String> = r
        .header("allow")
        .expect("Allow header")
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    allow.sort();
    assert_eq!(allow, ["GET", "HEAD", "POST", "PUT"]);
    let v = r.json();
    assert_eq!(v["error"], "method_not_allowed");

    let r = request(gw.http, "GET", "m.test", "/p", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = request(gw.http, "HEAD", "m.test", "/p", &[], "").await;
    assert_eq!(r.status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_route_answers_503_without_calling_upstream() {
    let origin = Origin::echo("o").await;
    let gw = gateway_with_routes(&format!(
        r#"
[[routes]]
name = "off"
path = "/off"
enabled = false
upstream = "{}"

[[routes]]
name = "on"
path = "/on"
upstream = "{}"
"#,
        origin.url(),
        origin.url()
    ))
    .start()
    .await;
    let r = get(gw.http, "h", "/off/x").await;
    assert_eq!(r.status, 503);
    let v = r.json();
    assert_eq!(v["error"], "route_disabled");
    assert_eq!(
        v["request_id"].as_str(),
        r.header("x-request-id"),
        "the body names the request id of the header"
    );
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(get(gw.http, "h", "/on").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_with_a_json_body() {
    let origin = Origin::echo("o").await;
    let gw = gateway_with_routes(&format!(
        r#"
[[routes]]
name = "only"
hosts = ["known.test"]
path = "/app"
upstream = "{}"
"#,
        origin.url()
    ))
    .start()
    .await;
    for (host, path) in [
        ("unknown.test", "/app"),
        ("known.test", "/"),
        ("known.test", "/apple"),
    ] {
        let r = get(gw.http, host, path).await;
        assert_eq!(r.status, 404, "{host}{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["error"], "no_route");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        let id = v["request_id"].as_str().expect("request_id");
        assert_eq!(id.len(), 32, "a generated id: {id}");
        assert_eq!(r.header("x-request-id"), Some(id));
    }
    // A client's own request id is used.
    let r = request(
        gw.http,
        "GET",
        "nope",
        "/",
        &[("x-request-id", "my-id-1")],
        "",
    )
    .await;
    assert_eq!(r.json()["request_id"], "my-id-1");
    // Browsers get a small HTML page.
    let r = request(
        gw.http,
        "GET",
        "nope",
        "/",
        &[("accept", "text/html,application/xhtml+xml")],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.text().contains("404"));

    // A request without any Host header (HTTP/1.0) is routed as "no host", not a crash.
    let mut c = RawConn::connect(gw.http).await;
    c.send(b"GET /app HTTP/1.0\r\n\r\n").await;
    let r = c
        .read_response(Duration::from_secs(5), false)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}
