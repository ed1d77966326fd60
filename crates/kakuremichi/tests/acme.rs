//! ACME through the real binary against the real Pebble (Debian package `pebble`), whose
//! validation ports are the gateway's http and https listeners and whose DNS
//! (pebble-challtestsrv) answers 127.0.0.1 for every name: HTTP-01, TLS-ALPN-01 and DNS-01
//! (through a Cloudflare API stand-in) certificates for the hosts of routes and for no
//! other, served at once, added by a reload, renewed, kept in state_dir across restarts,
//! and shown on /metrics.

mod common;
mod tls_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::RootCertStore;
use tls_support::*;

fn route(name: &str, hosts: &[&str], upstream: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "[[routes]]\nname = \"{name}\"\nhosts = [{}]\nupstream = \"{upstream}\"\n",
        hosts.join(", ")
    )
}

/// The certificate chain served for `sni`, verified against Pebble's root.
async fn verified_chain(
    gw: &TlsGateway,
    sni: &str,
    roots: &RootCertStore,
) -> std::io::Result<Vec<Vec<u8>>> {
    let config = client_config(&Trust::Roots(roots.clone()), &[], &[b"h2", b"http/1.1"]);
    let tls = tls_connect(gw.https, Some(sni), config).await?;
    Ok(tls
        .get_ref()
        .1
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_vec())
        .collect())
}

/// Waits until the gateway serves `sni` a certificate that chains to Pebble's root.
async fn wait_certificate(
    gw: &TlsGateway,
    pebble: &Pebble,
    sni: &str,
    roots: &RootCertStore,
) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + ACME_WAIT;
    loop {
        match verified_chain(gw, sni, roots).await {
            Ok(chain) => return chain,
            Err(e) if std::time::Instant::now() > deadline => panic!(
                "no verified certificate for {sni} within {ACME_WAIT:?}: {e}\n--- gateway:\n{}\n--- pebble:\n{}",
                gw.logs.text(),
                pebble.logs()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn orders(gw: &TlsGateway) -> f64 {
    gw.metric("kakuremichi_acme_orders", &[])
        .await
        .expect("kakuremichi_acme_orders on /metrics")
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificates_for_route_hosts_survive_reloads_and_restarts() {
    let ports = Ports::pick();
    let pebble = Pebble::start(ports.http, ports.https).await;
    let origin = version_origin().await;
    let dir = TempDir::new("acme-http01");
    let acme = pebble.acme_section("http-01");
    let disabled = format!(
        "{}enabled = false\n",
        route("off", &["disabled.example.test"], &origin.url())
    );
    let first = format!(
        "{acme}\n{}\n{disabled}\n[[routes]]\nname = \"any\"\npath = \"/any\"\nupstream = \"{}\"\n",
        route("a", &["a.example.test"], &origin.url()),
        origin.url()
    );
    let mut gw = TlsGateway::start(dir.path(), ports, &gateway_toml(ports, "", &first)).await;
    let roots = pebble.issuer_roots().await;

    // A client hello for a name no route has is refused with a clear line (checked first,
    // while the budget for such lines is not spent by the waits below).
    assert!(
        verified_chain(&gw, "unknown.example.test", &roots)
            .await
            .is_err()
    );
    let line = gw
        .logs
        .wait_since(0, "a log line naming the unknown SNI", |v| {
            v["sni"] == "unknown.example.test"
        })
        .await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert!(message(&line).contains("TLS handshake failed"), "{line}");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|e| e.contains("no server certificate")),
        "{line}"
    );

    // The route's host gets a certificate that chains to Pebble's root, with its
    // intermediate, and is served over HTTP/2.
    let chain_a = wait_certificate(&gw, &pebble, "a.example.test", &roots).await;
    assert!(chain_a.len() >= 2, "leaf and intermediate");
    let mut h2 = h2_connect(gw.https, "a.example.test", &Trust::Roots(roots.clone())).await;
    let (status, _, body) = h2_send(&mut h2, h2_get("a.example.test", "/x")).await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["proto"], "https");
    gw.logs
        .wait_since(0, "the certificate logged", |v| {
            message(v).contains("certificate obtained") && v["host"] == "a.example.test"
        })
        .await;
    assert_eq!(orders(&gw).await, 1.0);
    let left = gw
        .metric(
            "kakuremichi_certificate_expiry_seconds",
            &[("host", "a.example.test")],
        )
        .await
        .expect("expiry of a.example.test on /metrics");
    assert!(left > 86_400.0, "{left}");
    assert_eq!(
        gw.metric(
            "kakuremichi_certificate_renewal_failures",
            &[("host", "a.example.test")]
        )
        .await,
        Some(0.0)
    );
    // Plain HTTP is redirected; the challenge path was not (Pebble validated through it).
    let resp = common::get(gw.http, "a.example.test", "/y?z=1").await;
    assert_eq!(resp.status, 308);
    assert_eq!(
        resp.header("location"),
        Some(format!("https://a.example.test:{}/y?z=1", ports.https).as_str())
    );

    // Names no enabled route has never cause an order, however often they are asked for.
    for i in 0..20 {
        let sni = format!("unknown{i}.example.test");
        assert!(
            verified_chain(&gw, &sni, &roots).await.is_err(),
            "{sni} has no certificate"
        );
    }
    assert!(
        verified_chain(&gw, "disabled.example.test", &roots)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(orders(&gw).await, 1.0, "no order for unknown names");
    assert!(
        gw.metric(
            "kakuremichi_certificate_expiry_seconds",
            &[("host", "unknown3.example.test")]
        )
        .await
        .is_none()
    );

    // A host added by a reload gets its certificate without a restart; 40 clients that
    // connect the moment it is added cause one order.
    let second = format!(
        "{first}\n{}",
        route("b", &["b.example.test"], &origin.url())
    );
    std::fs::write(&gw.config, gateway_toml(ports, "", &second)).unwrap();
    let roots = Arc::new(roots);
    let https = gw.https;
    let clients: Vec<_> = (0..40)
        .map(|_| {
            let roots = roots.clone();
            tokio::spawn(async move {
                let deadline = std::time::Instant::now() + ACME_WAIT;
                loop {
                    let config =
                        client_config(&Trust::Roots((*roots).clone()), &[], &[b"http/1.1"]);
                    if tls_connect(https, Some("b.example.test"), config)
                        .await
                        .is_ok()
                    {
                        return true;
                    }
                    if std::time::Instant::now() > deadline {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    let outcome = gw.hup().await;
    assert!(reload_applied(&outcome), "{outcome}");
    for client in clients {
        assert!(
            client.await.unwrap(),
            "b.example.test served after the reload\n{}",
            gw.logs.text()
        );
    }
    let chain_b = wait_certificate(&gw, &pebble, "b.example.test", &roots).await;
    assert_eq!(orders(&gw).await, 2.0, "one order for the added host");
    assert_eq!(
        verified_chain(&gw, "a.example.test", &roots).await.unwrap()[0],
        chain_a[0],
        "the first host keeps its certificate"
    );

    // Account key and certificates are in state_dir, keys private.
    let state = gw.file("state");
    let files = files_under(&state);
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "account.key",
        "a.example.test.crt",
        "a.example.test.key",
        "b.example.test.crt",
        "b.example.test.key",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("unknown")), "{names:?}");
    #[cfg(unix)]
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "key"))
    {
        assert_eq!(mode(file), 0o600, "{} is private", file.display());
    }
    let account_key = files.iter().find(|p| p.ends_with("account.key")).unwrap();
    let account_before = std::fs::read(account_key).unwrap();

    // A restart serves the stored certificates at once and orders nothing.
    gw.restart().await;
    assert_eq!(
        verified_chain(&gw, "a.example.test", &roots).await.unwrap()[0],
        chain_a[0],
        "a.example.test served from state_dir at once"
    );
    assert_eq!(
        verified_chain(&gw, "b.example.test", &roots).await.unwrap()[0],
        chain_b[0]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(orders(&gw).await, 0.0, "no new order after a restart");
    assert_eq!(std::fs::read(account_key).unwrap(), account_before);

    // A host added after the restart is ordered with the same account.
    let third = format!(
        "{second}\n{}",
        route("c", &["c.example.test"], &origin.url())
    );
    let outcome = gw.reload(&gateway_toml(ports, "", &third)).await;
    assert!(reload_applied(&outcome), "{outcome}");
    wait_certificate(&gw, &pebble, "c.example.test", &roots).await;
    assert_eq!(orders(&gw).await, 1.0);
    assert_eq!(std::fs::read(account_key).unwrap(), account_before);
    assert_eq!(
        files_under(&state)
            .iter()
            .filter(|p| p.ends_with("account.key"))
            .count(),
        1
    );
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_is_answered_on_the_https_listener() {
    let ports = Ports::pick();
    let pebble = Pebble::start(ports.http, ports.https).await;
    let origin = version_origin().await;
    let dir = TempDir::new("acme-alpn");
    let text = gateway_toml(
        ports,
        "",
        &format!(
            "{}\n{}",
            pebble.acme_section("tls-alpn-01"),
            route("alpn", &["alpn.example.test"], &origin.url())
        ),
    );
    let mut gw = TlsGateway::start(dir.path(), ports, &text).await;
    let roots = pebble.issuer_roots().await;
    wait_certificate(&gw, &pebble, "alpn.example.test", &roots).await;
    assert_eq!(orders(&gw).await, 1.0);
    let config = client_config(&Trust::Roots(roots.clone()), &[], &[b"http/1.1"]);
    let (status, body) = http1_get(
        gw.https,
        Some((config, "alpn.example.test")),
        "alpn.example.test",
        "/",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // Validated on the https listener: nothing asked the http listener for a token.
    assert!(
        !gw.logs.text().contains("/.well-known/acme-challenge/"),
        "no HTTP-01 request:\n{}",
        gw.logs.text()
    );
    // A client offering only acme-tls/1 for a host with no pending challenge gets nothing.
    let config = client_config(&Trust::Any, &[], &[b"acme-tls/1"]);
    assert!(
        tls_connect(gw.https, Some("alpn.example.test"), config)
            .await
            .is_err()
    );
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_covers_a_wildcard_route_through_the_cloudflare_api() {
    let ports = Ports::pick();
    let pebble = Pebble::start(ports.http, ports.https).await;
    let cloudflare = CloudflareStandIn::start(pebble.challtest_mgmt, &["example.test"]).await;
    let origin = version_origin().await;
    let dir = TempDir::new("acme-dns01");
    std::fs::write(
        dir.path().join("cf.token"),
        format!("{}\n", cloudflare.token),
    )
    .unwrap();
    let text = gateway_toml(
        ports,
        "",
        &format!(
            "{}[tls.acme.dns]\nprovider = \"cloudflare\"\napi_token_file = \"cf.token\"\napi_url = \"{}\"\n\n{}",
            pebble.acme_section("dns-01"),
            cloudflare.api_url,
            route(
                "wild",
                &["*.wild.example.test", "dns.example.test"],
                &origin.url()
            )
        ),
    );
    let mut gw = TlsGateway::start(dir.path(), ports, &text).await;
    let roots = pebble.issuer_roots().await;
    for sni in [
        "x.wild.example.test",
        "other.wild.example.test",
        "dns.example.test",
    ] {
        wait_certificate(&gw, &pebble, sni, &roots).await;
    }
    let config = client_config(&Trust::Roots(roots.clone()), &[], &[b"http/1.1"]);
    let (status, _) = http1_get(
        gw.https,
        Some((config, "x.wild.example.test")),
        "x.wild.example.test",
        "/",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(orders(&gw).await, 2.0);
    assert!(
        gw.metric(
            "kakuremichi_certificate_expiry_seconds",
            &[("host", "*.wild.example.test")]
        )
        .await
        .is_some_and(|s| s > 0.0)
    );
    assert_eq!(cloudflare.creates.load(Ordering::Relaxed), 2);
    // The TXT records are withdrawn once the orders are done.
    common::eventually("TXT records withdrawn", WAIT, || {
        let done = cloudflare.deletes.load(Ordering::Relaxed) == 2;
        async move { done.then_some(()) }
    })
    .await;
    assert!(cloudflare.records.lock().unwrap().is_empty());
    // A name one level below the wildcard's parent is not covered.
    assert!(
        verified_chain(&gw, "a.b.wild.example.test", &roots)
            .await
            .is_err()
    );
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_within_renew_before() {
    let ports = Ports::pick();
    // 30 s certificates renewed when less than 25 s are left (at the earliest after a third
    // of the lifetime): a renewal about 10 s after issuance.
    let pebble = Pebble::start_with_validity(ports.http, ports.https, Some(30)).await;
    let origin = version_origin().await;
    let dir = TempDir::new("acme-renew");
    let text = gateway_toml(
        ports,
        "",
        &format!(
            "{}renew_before = \"25s\"\n\n{}",
            pebble.acme_section("http-01"),
            route("r", &["renew.example.test"], &origin.url())
        ),
    );
    let gw = TlsGateway::start(dir.path(), ports, &text).await;
    let roots = pebble.issuer_roots().await;
    let first = wait_certificate(&gw, &pebble, "renew.example.test", &roots).await;
    assert_eq!(orders(&gw).await, 1.0);
    let mut h2 = h2_connect(gw.https, "renew.example.test", &Trust::Roots(roots.clone())).await;
    let renewed = common::eventually("the renewed certificate", ACME_WAIT, || {
        let (gw, roots) = (&gw, &roots);
        let old = first[0].clone();
        async move {
            verified_chain(gw, "renew.example.test", roots)
                .await
                .ok()
                .filter(|c| c[0] != old)
        }
    })
    .await;
    assert_ne!(renewed[0], first[0]);
    assert_eq!(orders(&gw).await, 2.0, "one renewal, not a loop");
    // The connection opened with the old certificate goes on.
    let (status, _, _) = h2_send(&mut h2, h2_get("renew.example.test", "/after")).await;
    assert_eq!(status, 200);
    let left = gw
        .metric(
            "kakuremichi_certificate_expiry_seconds",
            &[("host", "renew.example.test")],
        )
        .await
        .unwrap();
    assert!(left > 15.0, "the renewed certificate's expiry: {left}");
}
