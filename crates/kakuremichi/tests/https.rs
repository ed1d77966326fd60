//! HTTPS through the real binary: static certificates chosen by SNI with a default,
//! swapped on SIGHUP without dropping open connections, bad clients and bad certificate
//! files (a clear log line or refusal, never a panic), HTTP/2 end to end with large
//! streamed bodies and many concurrent streams to an HTTP/1.1 origin, TLS 1.2 and 1.3 only,
//! and `redirect_https`.

mod common;
mod tls_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use rustls::version::{TLS12, TLS13};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{GenBody, Origin, hex, pattern, respond};
use tls_support::*;

fn origin_route(origin: &Origin) -> String {
    format!(
        "[[routes]]\nname = \"site\"\nupstream = \"{}\"\n",
        origin.url()
    )
}

fn static_tls(names: &[&str]) -> String {
    let list: Vec<String> = names
        .iter()
        .map(|n| format!("{{ cert = \"{n}.pem\", key = \"{n}.key\" }}"))
        .collect();
    format!("[tls]\ncertificates = [{}]\n", list.join(", "))
}

/// Reads what the server sends until it closes or `limit` passes; `None` on timeout.
async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A TLS 1.1 ClientHello (no supported_versions extension), as an old client sends it.
fn tls11_client_hello(sni: &str) -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([0x5a; 32]);
    body.push(0);
    // ECDHE with AES-GCM (which the gateway supports in TLS 1.2) and the CBC suites of the
    // TLS 1.1 era: only the version is wrong.
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc013, 0xc014, 0x002f, 0x0035];
    body.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend(s.to_be_bytes());
    }
    body.extend([1, 0]);
    let name = sni.as_bytes();
    let mut ext = Vec::new();
    ext.extend(0u16.to_be_bytes());
    ext.extend(((name.len() + 5) as u16).to_be_bytes());
    ext.extend(((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend((name.len() as u16).to_be_bytes());
    ext.extend(name);
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]);
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    // signature_algorithms (rustls wants it before it looks at the version).
    ext.extend([
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x04, 0x01, 0x02, 0x01,
    ]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut handshake = vec![1];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// A request through the https listener that must work (the process is healthy).
async fn assert_serving(gw: &mut TlsGateway, roots: &rustls::RootCertStore, sni: &str) {
    gw.assert_alive();
    let config = client_config(&Trust::Roots(roots.clone()), &[], &[b"http/1.1"]);
    let (status, body) = http1_get(gw.https, Some((config, sni)), sni, "/alive")
        .await
        .unwrap_or_else(|e| panic!("request after bad input: {e}\n{}", gw.logs.text()));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_certificates_are_chosen_by_sni_with_the_first_as_default() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.example.test"], 1001);
    let b = ca.leaf(&["b.example.test", "*.wild.example.test"], 1002);
    let origin = version_origin().await;
    let dir = TempDir::new("sni");
    a.write(dir.path(), "a");
    b.write(dir.path(), "b");
    let rest = format!("{}\n{}", static_tls(&["a", "b"]), origin_route(&origin));
    let mut gw = TlsGateway::start_with(dir.path(), |p| gateway_toml(p, "", &rest)).await;
    let roots = ca.roots();

    for (sni, want) in [
        ("a.example.test", &a),
        ("b.example.test", &b),
        ("x.wild.example.test", &b),
        ("B.Example.Test", &b),
    ] {
        let config = client_config(&Trust::Roots(roots.clone()), &[], &[b"http/1.1"]);
        let tls = tls_connect(gw.https, Some(sni), config)
            .await
            .unwrap_or_else(|e| panic!("{sni}: verified handshake: {e}"));
        assert_eq!(peer_leaf(&tls), want.der, "{sni}");
    }

    // Through HTTP: the upstream sees an HTTP/1.1 request marked https.
    let config = client_config(&Trust::Roots(roots.clone()), &[], &[b"http/1.1"]);
    let (status, body) = http1_get(
        gw.https,
        Some((config, "b.example.test")),
        "b.example.test",
        "/p",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["proto"], "https");
    assert_eq!(v["host"], "b.example.test");

    // No SNI and a name no certificate covers: the default (first) certificate, logged.
    let from = gw.logs.len();
    assert_eq!(served_leaf(gw.https, None).await.unwrap(), a.der);
    gw.logs
        .wait_since(from, "a log line about the hello without SNI", |v| {
            message(v).contains("without a server name")
        })
        .await;
    let from = gw.logs.len();
    assert_eq!(
        served_leaf(gw.https, Some("unknown.example.test"))
            .await
            .unwrap(),
        a.der
    );
    let line = gw
        .logs
        .wait_since(from, "a log line naming the unknown SNI", |v| {
            v.to_string().contains("unknown.example.test")
        })
        .await;
    assert!(
        message(&line).contains("default"),
        "says the default was served: {line}"
    );
    // A verifying client refuses the default for a name it does not cover.
    let config = client_config(&Trust::Roots(roots.clone()), &[], &[b"http/1.1"]);
    let err = tls_connect(gw.https, Some("unknown.example.test"), config)
        .await
        .expect_err("the default certificate does not name unknown.example.test");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    assert_serving(&mut gw, &roots, "a.example.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_silence_and_old_protocol_versions_are_refused_and_logged() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.example.test"], 2001);
    let origin = Origin::fixed("ok").await;
    let dir = TempDir::new("garbage");
    a.write(dir.path(), "a");
    let rest = format!("{}\n{}", static_tls(&["a"]), origin_route(&origin));
    let mut gw = TlsGateway::start_with(dir.path(), |p| {
        gateway_toml(p, "header_timeout = \"1s\"", &rest)
    })
    .await;
    let roots = ca.roots();

    // Plain HTTP on the TLS port: a TLS alert, then the connection is closed.
    let from = gw.logs.len();
    let mut tcp = TcpStream::connect(gw.https).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .expect("closed at once");
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "an alert or nothing: {answer:?}"
    );
    let line = gw
        .logs
        .wait_since(from, "a log line about the failed handshake", |v| {
            message(v).contains("TLS handshake failed")
        })
        .await;
    assert_eq!(
        line["peer"].as_str().map(|p| p.starts_with("127.0.0.1:")),
        Some(true),
        "{line}"
    );
    assert_ne!(line["level"], "DEBUG");

    // Random bytes, a truncated hello, a hello that stops halfway, an empty connection.
    for junk in [
        vec![0u8; 1000],
        (0..=255u8).cycle().take(5000).collect::<Vec<u8>>(),
        vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00],
        tls11_client_hello("a.example.test")[..40].to_vec(),
        vec![],
    ] {
        let mut tcp = TcpStream::connect(gw.https).await.unwrap();
        let _ = tcp.write_all(&junk).await;
        let _ = tcp.shutdown().await;
        let _ = read_until_close(&mut tcp, Duration::from_secs(5)).await;
        gw.assert_alive();
    }

    // A client that never says anything is closed after header_timeout.
    let from = gw.logs.len();
    let mut silent = TcpStream::connect(gw.https).await.unwrap();
    let started = std::time::Instant::now();
    read_until_close(&mut silent, Duration::from_secs(10))
        .await
        .expect("a silent client is closed");
    assert!(started.elapsed() >= Duration::from_millis(900));
    gw.logs
        .wait_since(from, "a log line about the handshake timeout", |v| {
            message(v).contains("did not finish in time")
        })
        .await;

    // TLS 1.1: refused with a fatal alert, no ServerHello.
    let from = gw.logs.len();
    let mut tcp = TcpStream::connect(gw.https).await.unwrap();
    tcp.write_all(&tls11_client_hello("a.example.test"))
        .await
        .unwrap();
    let answer = read_until_close(&mut tcp, Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "a TLS alert, not a ServerHello: {answer:?}"
    );
    assert_eq!(answer.get(5), Some(&2), "a fatal alert: {answer:?}");
    assert_eq!(answer.get(6), Some(&70), "protocol_version: {answer:?}");
    let line = gw
        .logs
        .wait_since(from, "a log line about the old client", |v| {
            message(v).contains("TLS handshake failed")
        })
        .await;
    assert_eq!(line["sni"], "a.example.test", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap_or_default()
            .contains("Tls12NotOffered"),
        "{line}"
    );

    // rustls clients limited to one version each: both work, with h2 and http/1.1.
    for version in [&TLS12, &TLS13] {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let config = client_config(&Trust::Roots(roots.clone()), &[version], &[alpn]);
            let tls = tls_connect(gw.https, Some("a.example.test"), config)
                .await
                .unwrap_or_else(|e| panic!("{:?}: {e}", version.version));
            let conn = tls.get_ref().1;
            assert_eq!(conn.protocol_version(), Some(version.version));
            assert_eq!(conn.alpn_protocol(), Some(alpn));
        }
    }
    assert_serving(&mut gw, &roots, "a.example.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_a_static_certificate_without_dropping_open_connections() {
    let ca = TestCa::new();
    let first = ca.leaf(&["a.example.test"], 3001);
    let origin = version_origin().await;
    let dir = TempDir::new("hup");
    first.write(dir.path(), "site");
    let rest = format!("{}\n{}", static_tls(&["site"]), origin_route(&origin));
    let mut gw = TlsGateway::start_with(dir.path(), |p| gateway_toml(p, "", &rest)).await;
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let roots = ca.roots();
    let host = "a.example.test";

    // Open connections: HTTP/1.1 keep-alive and HTTP/2.
    let config = client_config(&Trust::Roots(roots.clone()), &[], &[b"http/1.1"]);
    let tls = tls_connect(gw.https, Some(host), config).await.unwrap();
    assert_eq!(peer_leaf(&tls), first.der);
    let mut h1 = h1_over(tls).await.unwrap();
    let mut h2 = h2_connect(gw.https, host, &Trust::Roots(roots.clone())).await;
    let get1 = || {
        Request::get("/before")
            .header("host", host)
            .body(empty())
            .unwrap()
    };
    assert_eq!(h1.send_request(get1()).await.unwrap().status(), 200);
    assert_eq!(h2_send(&mut h2, h2_get(host, "/before")).await.0, 200);
    let expiry_before = gw
        .metric("kakuremichi_certificate_expiry_seconds", &[("host", host)])
        .await
        .expect("expiry on /metrics");
    assert!(expiry_before > 20.0 * 86_400.0, "{expiry_before}");

    // New files, then SIGHUP: new handshakes get the new certificate...
    let second = ca.leaf(&["a.example.test"], 3002);
    second.write(dir.path(), "site");
    let outcome = gw.hup().await;
    assert!(reload_applied(&outcome), "{outcome}");
    assert_eq!(served_leaf(gw.https, Some(host)).await.unwrap(), second.der);
    // ...and the open ones go on.
    h1.ready()
        .await
        .expect("the HTTP/1.1 connection is still open");
    let r = h1
        .send_request(
            Request::get("/after")
                .header("host", host)
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("a request on the connection opened before the reload");
    assert_eq!(r.status(), 200);
    assert_eq!(h2_send(&mut h2, h2_get(host, "/after")).await.0, 200);

    // A key that does not belong to the certificate: refused, the last good one stays.
    let stray = ca.leaf(&["a.example.test"], 3003);
    std::fs::write(dir.path().join("site.key"), &stray.key_pem).unwrap();
    let outcome = gw.hup().await;
    let m = message(&outcome);
    assert!(reload_refused(&outcome), "{outcome}");
    assert!(
        m.contains("does not belong to the certificate"),
        "{outcome}"
    );
    assert!(m.contains("site.key"), "names the file: {outcome}");
    assert_eq!(served_leaf(gw.https, Some(host)).await.unwrap(), second.der);
    assert_serving(&mut gw, &roots, host).await;

    // An expired certificate: loaded with a warning (the operator asked for it); clients
    // refuse it, /metrics shows it.
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired = ca.leaf_valid(&["a.example.test"], 3004, now - 30 * day, now - day);
    expired.write(dir.path(), "site");
    let from = gw.logs.len();
    let outcome = gw.hup().await;
    assert!(reload_applied(&outcome), "{outcome}");
    let warning = gw
        .logs
        .wait_since(from, "a warning about the expired certificate", |v| {
            message(v).contains("expired")
        })
        .await;
    assert_eq!(warning["level"], "WARN");
    assert!(warning.to_string().contains("site.pem"), "{warning}");
    assert_eq!(
        served_leaf(gw.https, Some(host)).await.unwrap(),
        expired.der
    );
    let config = client_config(&Trust::Roots(roots.clone()), &[], &[b"http/1.1"]);
    let err = tls_connect(gw.https, Some(host), config).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    let left = gw
        .metric("kakuremichi_certificate_expiry_seconds", &[("host", host)])
        .await
        .unwrap();
    assert!(left < 0.0, "negative once expired: {left}");

    // Back to a good one.
    second.write(dir.path(), "site");
    std::fs::write(&gw.config, &text).unwrap();
    gw.hup().await;
    assert_serving(&mut gw, &roots, host).await;
    let mut h2 = h2_connect(gw.https, host, &Trust::Roots(roots.clone())).await;
    assert_eq!(h2_send(&mut h2, h2_get(host, "/again")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_files_stop_the_start_with_a_clear_message() {
    let ca = TestCa::new();
    let a = ca.leaf(&["a.example.test"], 4001);
    let other = ca.leaf(&["a.example.test"], 4002);
    let dir = TempDir::new("badcert");
    std::fs::write(dir.path().join("site.pem"), &a.cert_pem).unwrap();
    std::fs::write(dir.path().join("site.key"), &other.key_pem).unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate\n").unwrap();
    let route = "[[routes]]\nname = \"r\"\nupstream = \"http://127.0.0.1:9\"\n";
    for (tls, expect) in [
        (static_tls(&["site"]), "does not belong to the certificate"),
        (
            "[tls]\ncertificates = [{ cert = \"junk.pem\", key = \"site.key\" }]\n".to_string(),
            "junk.pem",
        ),
        (
            "[tls]\ncertificates = [{ cert = \"missing.pem\", key = \"site.key\" }]\n".to_string(),
            "missing.pem",
        ),
    ] {
        let ports = Ports::pick();
        let text = gateway_toml(ports, "", &format!("{tls}\n{route}"));
        let err = match TlsGateway::try_start(dir.path(), ports, &text).await {
            Ok(_) => panic!("started with {tls}"),
            Err(e) => e,
        };
        assert!(err.contains(expect), "{expect:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("exited with exit status: 1"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_end_to_end_with_large_bodies_and_many_streams_to_an_http1_origin() {
    const BIG: u64 = 64 << 20;
    let ca = TestCa::new();
    let leaf = ca.leaf(&["h2.example.test"], 5001);
    // One HTTP/1.1 origin: /up hashes the upload, /down streams BIG bytes, /wait holds
    // requests until 100 are in at once, anything else echoes the version.
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let waiting = Arc::new(AtomicUsize::new(0));
    let down_digest = Arc::new(Mutex::new(None::<String>));
    let (b, w, d) = (barrier.clone(), waiting.clone(), down_digest.clone());
    let origin = Origin::serve(move |req: Request<hyper::body::Incoming>| {
        let (b, w, d) = (b.clone(), w.clone(), d.clone());
        async move {
            let version = format!("{:?}", req.version());
            match req.uri().path() {
                "/up" => {
                    let mut body = req.into_body();
                    let mut hasher = Sha256::new();
                    let mut n = 0u64;
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(f) => {
                                if let Some(data) = f.data_ref() {
                                    n += data.len() as u64;
                                    hasher.update(data);
                                }
                            }
                            Err(e) => return respond(500, format!("body: {e}")),
                        }
                    }
                    let v = serde_json::json!({"bytes": n, "sha256": hex(&hasher.finalize()), "version": version});
                    respond(200, v.to_string())
                }
                "/down" => {
                    let generator = pattern(BIG, 64 << 10, d.clone());
                    hyper::Response::new(GenBody::new(generator, None).boxed())
                }
                "/wait" => {
                    w.fetch_add(1, Ordering::SeqCst);
                    let all = tokio::time::timeout(Duration::from_secs(20), b.wait())
                        .await
                        .is_ok();
                    respond(if all { 200 } else { 504 }, version)
                }
                _ => respond(200, version),
            }
        }
    })
    .await;
    let dir = TempDir::new("h2");
    leaf.write(dir.path(), "site");
    let rest = format!(
        "{}\n[[routes]]\nname = \"h2\"\nhosts = [\"h2.example.test\"]\nupstream = \"{}\"\n",
        static_tls(&["site"]),
        origin.url()
    );
    let gw = TlsGateway::start_with(dir.path(), |p| gateway_toml(p, "", &rest)).await;
    let host = "h2.example.test";
    let trust = Trust::Roots(ca.roots());
    let mut h2 = h2_connect(gw.https, host, &trust).await;

    // GET.
    let (status, _, body) = h2_send(&mut h2, h2_get(host, "/hello")).await;
    assert_eq!((status, &body[..]), (200, &b"HTTP/1.1"[..]));

    // 64 MiB up, streamed (no length), hash checked at the origin.
    let up_digest = Arc::new(Mutex::new(None::<String>));
    let body = GenBody::new(pattern(BIG, 256 << 10, up_digest.clone()), None);
    let req = Request::post(format!("https://{host}/up"))
        .body(body.boxed())
        .unwrap();
    let started = std::time::Instant::now();
    let (status, _, answer) = h2_send(&mut h2, req).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let v = json(&answer);
    assert_eq!(v["bytes"], BIG);
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(
        v["sha256"].as_str(),
        up_digest.lock().unwrap().as_deref(),
        "the origin got every byte"
    );
    eprintln!("64 MiB upload over h2: {:?}", started.elapsed());

    // 64 MiB down, hashed as it arrives.
    let started = std::time::Instant::now();
    h2.ready().await.unwrap();
    let resp = h2.send_request(h2_get(host, "/down")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("download frame").data_ref() {
            n += data.len() as u64;
            hasher.update(data);
        }
    }
    assert_eq!(n, BIG);
    assert_eq!(
        Some(hex(&hasher.finalize())),
        down_digest.lock().unwrap().clone()
    );
    eprintln!("64 MiB download over h2: {:?}", started.elapsed());

    // 100 streams at once on this one connection, all held at the origin together.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut sender = h2.clone();
        tasks.push(tokio::spawn(async move {
            h2_send(
                &mut sender,
                h2_get("h2.example.test", &format!("/wait?i={i}")),
            )
            .await
        }));
    }
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, 200, "every stream was in flight at once: {body:?}");
        assert_eq!(&body[..], b"HTTP/1.1");
    }
    assert_eq!(waiting.load(Ordering::SeqCst), 100);
    let (status, _, _) = h2_send(&mut h2, h2_get(host, "/done")).await;
    assert_eq!(status, 200, "the connection is still usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_keeps_path_and_query_but_never_for_acme_challenges() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["r.example.test"], 6001);
    let origin = version_origin().await;
    let dir = TempDir::new("redirect");
    leaf.write(dir.path(), "site");
    let rest = format!("{}\n{}", static_tls(&["site"]), origin_route(&origin));
    let gw = TlsGateway::start_with(dir.path(), |p| gateway_toml(p, "", &rest)).await;
    let https_port = gw.ports.https;

    for (method, host, target, want) in [
        (
            "GET",
            "r.example.test",
            "/a/b?x=1&y=%20z",
            format!("https://r.example.test:{https_port}/a/b?x=1&y=%20z"),
        ),
        (
            "POST",
            "r.example.test",
            "/form",
            format!("https://r.example.test:{https_port}/form"),
        ),
        (
            "GET",
            "r.example.test:8080",
            "/p?q",
            format!("https://r.example.test:{https_port}/p?q"),
        ),
        (
            "GET",
            "r.example.test",
            "/",
            format!("https://r.example.test:{https_port}/"),
        ),
    ] {
        let raw =
            format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\ncontent-length: 0\r\n\r\n");
        let resp = common::raw(gw.http, raw.as_bytes()).await;
        assert_eq!(resp.status, 308, "{method} {host}{target}");
        assert_eq!(
            resp.header("location"),
            Some(want.as_str()),
            "{method} {host}{target}"
        );
    }

    // ACME challenge paths are never redirected: with no pending challenge they are routed
    // like any other path (here to the origin).
    for path in [
        "/.well-known/acme-challenge/unknown-token",
        "/.well-known/acme-challenge/",
    ] {
        let resp = common::get(gw.http, "r.example.test", path).await;
        assert_ne!(resp.status, 308, "{path}");
        assert!(resp.header("location").is_none(), "{path}");
    }
    let resp = common::get(gw.http, "r.example.test", "/.well-known/other").await;
    assert_eq!(resp.status, 308);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_omits_port_443_and_can_be_turned_off() {
    let ca = TestCa::new();
    let leaf = ca.leaf(&["r.example.test"], 7001);
    let origin = version_origin().await;

    // Port 443 on an address of its own in 127/8, when this process may bind it.
    let addr443 = "127.0.0.83:443";
    if std::net::TcpListener::bind(addr443).is_ok() {
        let dir = TempDir::new("r443");
        leaf.write(dir.path(), "site");
        let text = |p: Ports| {
            format!(
                "[gateway]\nhttp = \"127.0.0.1:{}\"\nhttps = \"{addr443}\"\nadmin = \"127.0.0.1:{}\"\n\n{}\n{}",
                p.http,
                p.admin,
                static_tls(&["site"]),
                origin_route(&origin)
            )
        };
        let gw = TlsGateway::start_with(dir.path(), text).await;
        let resp = common::get(gw.http, "r.example.test", "/x?y=1").await;
        assert_eq!(resp.status, 308);
        assert_eq!(
            resp.header("location"),
            Some("https://r.example.test/x?y=1")
        );
    } else {
        eprintln!("skipped the port-443 case: cannot bind {addr443} here");
    }

    let dir = TempDir::new("noredirect");
    leaf.write(dir.path(), "site");
    let rest = format!("{}\n{}", static_tls(&["site"]), origin_route(&origin));
    let gw = TlsGateway::start_with(dir.path(), |p| {
        gateway_toml(p, "redirect_https = false", &rest)
    })
    .await;
    let resp = common::get(gw.http, "r.example.test", "/plain").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["proto"], "http");
}
