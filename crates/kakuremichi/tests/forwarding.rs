//! What the upstream receives and what the client gets back: Host, X-Forwarded-*, hop-by-hop
//! headers, untouched Location/Set-Cookie, request ids, https upstreams and pooling.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{Origin, gateway, gateway_with_routes, get, request};
use serde_json::Value;

/// The single value of header `name` the echo origin saw; panics if it was sent twice.
fn seen<'a>(echo: &'a Value, name: &str) -> Option<&'a str> {
    let values = echo["headers"][name].as_array()?;
    assert_eq!(values.len(), 1, "{name} sent more than once: {values:?}");
    values[0].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_is_the_clients_unless_overridden() {
    let origin = Origin::echo("o").await;
    let gw = gateway_with_routes(&format!(
        r#"
[[routes]]
name = "override"
path = "/o"
host_header = "d111.cloudfront.example"
upstream = "{u}"

[[routes]]
name = "default"
path = "/d"
upstream = "{u}"
"#,
        u = origin.url()
    ))
    .start()
    .await;
    let v = get(gw.http, "cloud.example.tech", "/o").await.json();
    assert_eq!(seen(&v, "host"), Some("d111.cloudfront.example"));
    assert_eq!(seen(&v, "x-forwarded-host"), Some("cloud.example.tech"));
    let v = get(gw.http, "cloud.example.tech:8080", "/d").await.json();
    assert_eq!(seen(&v, "host"), Some("cloud.example.tech:8080"));
    assert_eq!(
        seen(&v, "x-forwarded-host"),
        Some("cloud.example.tech:8080")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_of_an_untrusted_client_are_replaced() {
    let origin = Origin::echo("o").await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"r\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    let r = request(
        gw.http,
        "GET",
        "app.example",
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "1"),
        ],
        "",
    )
    .await;
    let v = r.json();
    assert_eq!(seen(&v, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen(&v, "x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen(&v, "x-forwarded-proto"), Some("http"));
    assert_eq!(seen(&v, "x-forwarded-host"), Some("app.example"));
    let port = gw.http.port().to_string();
    assert_eq!(seen(&v, "x-forwarded-port"), Some(port.as_str()));
    let id = r.header("x-request-id").unwrap();
    assert_eq!(gw.logs.wait_access(id).await["client_ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_of_a_trusted_proxy_is_extended() {
    let origin = Origin::echo("o").await;
    let gw = gateway(
        "trusted_proxies = [\"127.0.0.0/8\"]",
        &format!(
            "[[routes]]\nname = \"r\"\nupstream = \"{}\"\n",
            origin.url()
        ),
    )
    .start()
    .await;
    let r = request(
        gw.http,
        "GET",
        "app.example",
        "/",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
        "",
    )
    .await;
    let v = r.json();
    assert_eq!(seen(&v, "x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(seen(&v, "x-real-ip"), Some("203.0.113.9"));
    assert_eq!(
        seen(&v, "x-forwarded-proto"),
        Some("https"),
        "a trusted proxy's X-Forwarded-Proto is kept"
    );
    let id = r.header("x-request-id").unwrap();
    assert_eq!(gw.logs.wait_access(id).await["client_ip"], "203.0.113.9");

    // With no X-Forwarded-For from the proxy, the proxy itself is the client.
    let v = get(gw.http, "app.example", "/").await.json();
    assert_eq!(seen(&v, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen(&v, "x-real-ip"), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded_either_way() {
    let origin = Origin::serve(|req| async move {
        let mut names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
        names.sort();
        let mut r = common::respond(200, names.join(","));
        let h = r.headers_mut();
        h.insert("connection", "x-resp-secret".parse().unwrap());
        h.insert("x-resp-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-resp-kept", "1".parse().unwrap());
        r
    })
    .await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"r\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    let r = request(
        gw.http,
        "GET",
        "h",
        "/",
        &[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "s"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "k"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let names: Vec<String> = r.text().split(',').map(String::from).collect();
    assert!(names.contains(&"x-kept".to_string()), "{names:?}");
    for gone in ["x-secret", "keep-alive", "te", "proxy-connection"] {
        assert!(
            !names.contains(&gone.to_string()),
            "{gone} reached upstream: {names:?}"
        );
    }
    assert_eq!(r.header("x-resp-kept"), Some("1"));
    assert_eq!(r.header("x-resp-secret"), None);
    assert_eq!(r.header("keep-alive"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_and_set_cookie_are_left_untouched() {
    let origin = Origin::serve(|_| async move {
        let mut r = common::respond(302, "");
        let h = r.headers_mut();
        h.insert(
            "location",
            "http://internal.example:8080/app/next?x=1".parse().unwrap(),
        );
        h.append("set-cookie", "sid=1; Path=/app; HttpOnly".parse().unwrap());
        h.append(
            "set-cookie",
            "b=2; Path=/; Domain=internal.example".parse().unwrap(),
        );
        r
    })
    .await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"r\"\npath = \"/ai-interview\"\nstrip_path = true\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    let r = get(gw.http, "cloud.example.tech", "/ai-interview/login").await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://internal.example:8080/app/next?x=1")
    );
    let cookies: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        cookies,
        [
            "sid=1; Path=/app; HttpOnly",
            "b=2; Path=/; Domain=internal.example"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_taken_or_made_sent_upstream_returned_and_logged() {
    let origin = Origin::echo("o").await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"ids\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;

    // Generated.
    let r = request(gw.http, "POST", "ids.test", "/gen?q=1", &[], "12345").await;
    let id = r.header("x-request-id").expect("request id returned");
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(seen(&r.json(), "x-request-id"), Some(id));
    let line = gw.logs.wait_access(id).await;
    assert_eq!(line["method"], "POST");
    assert_eq!(line["host"], "ids.test");
    assert_eq!(line["path"], "/gen");
    assert_eq!(line["route"], "ids");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 5);
    assert_eq!(line["bytes_out"], r.body.len());

    // Taken from the request.
    let r = request(
        gw.http,
        "GET",
        "ids.test",
        "/",
        &[("x-request-id", "abc-123")],
        "",
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(seen(&r.json(), "x-request-id"), Some("abc-123"));
    gw.logs.wait_access("abc-123").await;

    // Two requests without an id get two ids.
    let a = get(gw.http, "ids.test", "/").await;
    let b = get(gw.http, "ids.test", "/").await;
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_header_can_be_renamed() {
    let origin = Origin::echo("o").await;
    let gw = gateway(
        "request_id_header = \"x-correlation-id\"",
        &format!(
            "[[routes]]\nname = \"r\"\npath = \"/api\"\nupstream = \"{}\"\n",
            origin.url()
        ),
    )
    .start()
    .await;
    let r = request(
        gw.http,
        "GET",
        "h",
        "/api",
        &[("X-Correlation-Id", "corr-42")],
        "",
    )
    .await;
    assert_eq!(r.header("x-correlation-id"), Some("corr-42"));
    let v = r.json();
    assert_eq!(seen(&v, "x-correlation-id"), Some("corr-42"));
    gw.logs.wait_access("corr-42").await;

    let r = get(gw.http, "h", "/api").await;
    let made = r.header("x-correlation-id").expect("generated").to_string();
    assert_eq!(seen(&r.json(), "x-correlation-id"), Some(made.as_str()));
    // The gateway's own answers carry it too.
    let r = request(
        gw.http,
        "GET",
        "h",
        "/nowhere",
        &[("x-correlation-id", "c-404")],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-correlation-id"), Some("c-404"));
    assert_eq!(r.json()["request_id"], "c-404");
}

fn tls_origin_parts() -> (tokio_rustls::TlsAcceptor, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_unless_told_otherwise() {
    let (acceptor, cert_pem) = tls_origin_parts();
    let origin = Origin::serve_tls(acceptor, |req| async move {
        let host = req
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        common::respond(200, format!("tls ok, host {host}"))
    })
    .await;
    let url = format!("https://127.0.0.1:{}", origin.addr.port());
    let routes = format!(
        r#"
[[routes]]
name = "verified"
path = "/v"
upstream = "{url}"

[[routes]]
name = "unverified"
path = "/u"
tls_verify = false
upstream = "{url}"
"#
    );

    // System roots only: the self-signed certificate is refused.
    let gw = gateway_with_routes(&routes).start().await;
    let r = get(gw.http, "h", "/v").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_unreachable");
    let r = get(gw.http, "h", "/u").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "tls ok, host h");
    drop(gw);

    // The certificate as an extra root (a path relative to the gateway file): accepted.
    let gw = gateway("ca_roots = \"upstream-ca.pem\"", &routes)
        .file("upstream-ca.pem", cert_pem)
        .start()
        .await;
    let r = get(gw.http, "h", "/v").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "tls ok, host h");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let origin = Origin::fixed("pooled").await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"r\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    for _ in 0..50 {
        let r = get(gw.http, "h", "/").await;
        assert_eq!(r.text(), "pooled");
    }
    assert_eq!(origin.requests.load(Ordering::SeqCst), 50);
    let conns = origin.connections.load(Ordering::SeqCst);
    assert!(
        conns <= 3,
        "50 sequential requests used {conns} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_statuses_and_bodies_pass_through() {
    let origin = Origin::serve(|_| async move {
        let mut r = common::respond(503, "maintenance");
        r.headers_mut()
            .insert("retry-after", "120".parse().unwrap());
        r
    })
    .await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"r\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    let r = request(gw.http, "GET", "h", "/", &[("x-request-id", "up-503")], "").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "maintenance");
    assert_eq!(r.header("retry-after"), Some("120"));
    let line = gw.logs.wait_access("up-503").await;
    assert_eq!(line["status"], 503);
    assert_eq!(line["upstream"], origin.url().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_gets_a_readable_answer() {
    let (origin, digest) = Origin::download(100_000).await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"r\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    // The origin streams chunked; an HTTP/1.0 client cannot read chunks, so the body is
    // delimited by the end of the connection.
    let mut c = common::RawConn::connect(gw.http).await;
    c.send(b"GET /big HTTP/1.0\r\nHost: h\r\n\r\n").await;
    let r = c
        .read_response(std::time::Duration::from_secs(10), false)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("transfer-encoding").is_none(), "{:?}", r.headers);
    assert_eq!(r.body.len(), 100_000);
    let expected = digest.lock().unwrap().clone().unwrap();
    use sha2::Digest;
    assert_eq!(common::hex(&sha2::Sha256::digest(&r.body)), expected);
}
