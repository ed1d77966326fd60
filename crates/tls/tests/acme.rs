//! ACME end to end against the real Pebble server (Debian package `pebble`): HTTP-01,
//! TLS-ALPN-01 and DNS-01 (through a Cloudflare API stand-in) issuance, renewal, failures
//! with backoff, one order per host under load, unknown names, and state across restarts.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use kakuremichi_tls::{AcmeManager, CertSource, CertStore, Challenge, DnsSettings};
use rustls::pki_types::CertificateDer;

fn leaf(chain: &[CertificateDer<'static>]) -> Vec<u8> {
    chain.first().expect("a certificate").to_vec()
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_certificate_served_by_sni_and_kept_in_state_dir() {
    init_logs();
    let mut pebble = Pebble::start(PebbleOptions::default()).await;
    let state = TempDir::new("state");
    let store = CertStore::new();
    let manager = AcmeManager::new(
        pebble.settings(state.path(), Challenge::Http01),
        store.clone(),
    )
    .unwrap();
    let http = serve_http01(pebble.http_listener.take().unwrap(), manager.clone());
    let tls_listener = pebble.tls_listener.take().unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let _tls = serve_tls(tls_listener, store.clone());

    manager.set_hosts(vec!["A.Example.test".into()]);
    let running = Running::start(manager.clone());
    let serial = wait_for_serial(&store, "a.example.test", None).await;

    let roots = pebble.issuer_roots().await;
    let chain = handshake(tls_addr, "a.example.test", &roots)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "handshake verified by Pebble's root: {e}\n{}",
                pebble.logs()
            )
        });
    assert!(chain.len() >= 2, "the leaf comes with its intermediate");
    assert!(
        http.hits.load(Ordering::Relaxed) >= 1,
        "Pebble fetched the token"
    );
    assert!(
        manager.http01_answer("anything").is_none(),
        "tokens are withdrawn"
    );

    let status = store.status();
    let st = status.iter().find(|s| s.host == "a.example.test").unwrap();
    assert_eq!(st.source, CertSource::Acme);
    assert_eq!(st.serial.as_deref(), Some(serial.as_str()));
    assert!(st.seconds_left.unwrap() > 0);
    assert_eq!((st.renewal_failures, st.last_error.clone()), (0, None));
    assert_eq!(manager.orders_started(), 1);
    running.stop().await;

    let files = files_under(&state.path().join("acme"));
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["account.key", "a.example.test.crt", "a.example.test.key"],
        "{files:?}"
    );
    #[cfg(unix)]
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        if name.ends_with(".key") {
            assert_eq!(mode(file), 0o600, "{name} is private");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_a_certificate() {
    init_logs();
    let mut pebble = Pebble::start(PebbleOptions::default()).await;
    let state = TempDir::new("state");
    let store = CertStore::new();
    let manager = AcmeManager::new(
        pebble.settings(state.path(), Challenge::TlsAlpn01),
        store.clone(),
    )
    .unwrap();
    let tls_listener = pebble.tls_listener.take().unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let _tls = serve_tls(tls_listener, store.clone());

    manager.set_hosts(vec!["alpn.example.test".into()]);
    let running = Running::start(manager.clone());
    wait_for_serial(&store, "alpn.example.test", None).await;

    let roots = pebble.issuer_roots().await;
    handshake(tls_addr, "alpn.example.test", &roots)
        .await
        .unwrap_or_else(|e| panic!("verified handshake: {e}\n{}", pebble.logs()));
    assert_eq!(manager.orders_started(), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_through_the_cloudflare_api_covers_a_wildcard() {
    init_logs();
    let mut pebble = Pebble::start(PebbleOptions::default()).await;
    let cloudflare = CloudflareStandIn::start(pebble.challtest_mgmt, &["example.test"]).await;
    let state = TempDir::new("state");
    let store = CertStore::new();
    let mut settings = pebble.settings(state.path(), Challenge::Dns01);
    settings.dns = Some(DnsSettings {
        api_url: Some(cloudflare.api_url.clone()),
        propagation_delay: Duration::ZERO,
        ..DnsSettings::cloudflare(cloudflare.token.clone())
    });
    let manager = AcmeManager::new(settings, store.clone()).unwrap();
    let tls_listener = pebble.tls_listener.take().unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let _tls = serve_tls(tls_listener, store.clone());

    manager.set_hosts(vec![
        "*.wild.example.test".into(),
        "dns.example.test".into(),
    ]);
    let running = Running::start(manager.clone());
    wait_for_serial(&store, "*.wild.example.test", None).await;
    wait_for_serial(&store, "dns.example.test", None).await;

    let roots = pebble.issuer_roots().await;
    for sni in [
        "x.wild.example.test",
        "other.wild.example.test",
        "dns.example.test",
    ] {
        handshake(tls_addr, sni, &roots)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}\n{}", pebble.logs()));
    }
    assert_eq!(manager.orders_started(), 2);
    assert_eq!(cloudflare.creates.load(Ordering::Relaxed), 2);
    assert_eq!(
        cloudflare.deletes.load(Ordering::Relaxed),
        2,
        "TXT records withdrawn"
    );
    assert!(cloudflare.records.lock().unwrap().is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_with_a_wrong_api_token_fails_with_a_clear_error() {
    init_logs();
    let pebble = Pebble::start(PebbleOptions::default()).await;
    let cloudflare = CloudflareStandIn::start(pebble.challtest_mgmt, &["example.test"]).await;
    let state = TempDir::new("state");
    let store = CertStore::new();
    let mut settings = pebble.settings(state.path(), Challenge::Dns01);
    settings.dns = Some(DnsSettings {
        api_url: Some(cloudflare.api_url.clone()),
        propagation_delay: Duration::ZERO,
        ..DnsSettings::cloudflare("wrong-token")
    });
    let manager = AcmeManager::new(settings, store.clone()).unwrap();
    manager.set_hosts(vec!["dns.example.test".into()]);
    let running = Running::start(manager.clone());
    let error = wait_for(Duration::from_secs(30), "a recorded failure", || {
        let e = store
            .status()
            .into_iter()
            .find(|s| s.host == "dns.example.test")
            .and_then(|s| s.last_error);
        async move { e }
    })
    .await;
    assert!(error.contains("Authentication error"), "{error}");
    assert_eq!(acme_serial(&store, "dns.example.test"), None);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_within_renew_before() {
    init_logs();
    // 20 s certificates, renewed when less than 15 s are left (at the earliest after a third
    // of the lifetime).
    let mut pebble = Pebble::start(PebbleOptions { validity: Some(20) }).await;
    let state = TempDir::new("state");
    let store = CertStore::new();
    let mut settings = pebble.settings(state.path(), Challenge::Http01);
    settings.renew_before = Duration::from_secs(15);
    let manager = AcmeManager::new(settings, store.clone()).unwrap();
    let _http = serve_http01(pebble.http_listener.take().unwrap(), manager.clone());
    let tls_listener = pebble.tls_listener.take().unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let _tls = serve_tls(tls_listener, store.clone());

    manager.set_hosts(vec!["renew.example.test".into()]);
    let running = Running::start(manager.clone());
    let first = wait_for_serial(&store, "renew.example.test", None).await;
    let roots = pebble.issuer_roots().await;
    let first_leaf = leaf(
        &handshake(tls_addr, "renew.example.test", &roots)
            .await
            .unwrap(),
    );
    assert_eq!(manager.orders_started(), 1);

    let second = wait_for_serial(&store, "renew.example.test", Some(&first)).await;
    assert_ne!(first, second);
    let second_leaf = leaf(
        &handshake(tls_addr, "renew.example.test", &roots)
            .await
            .unwrap(),
    );
    assert_ne!(first_leaf, second_leaf, "the new certificate is served");
    assert_eq!(manager.orders_started(), 2, "one renewal, not a loop");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_renewal_keeps_the_old_certificate_and_retries_with_backoff() {
    init_logs();
    let mut pebble = Pebble::start(PebbleOptions::default()).await;
    let state = TempDir::new("state");
    let host = "keep.example.test";

    // First start: a certificate.
    let store = CertStore::new();
    let manager = AcmeManager::new(
        pebble.settings(state.path(), Challenge::Http01),
        store.clone(),
    )
    .unwrap();
    let http = serve_http01(pebble.http_listener.take().unwrap(), manager.clone());
    let tls_listener = pebble.tls_listener.take().unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let _tls = serve_tls(tls_listener, store.clone());
    manager.set_hosts(vec![host.into()]);
    let running = Running::start(manager.clone());
    let old = wait_for_serial(&store, host, None).await;
    running.stop().await;
    let roots = pebble.issuer_roots().await;
    let old_leaf = leaf(&handshake(tls_addr, host, &roots).await.unwrap());

    // A new ACME account for the renewals: Pebble reuses a valid authorization of the same
    // account for about 1 % of new orders even with PEBBLE_AUTHZREUSE=0 (it draws
    // `rand.Intn(100) > percent`), and such an order would succeed without a validation.
    for key in files_under(state.path())
        .into_iter()
        .filter(|p| p.ends_with("account.key"))
    {
        std::fs::remove_file(key).unwrap();
    }

    // Restart with renew_before beyond the lifetime: renewal is due at once, and the http
    // listener now fails every validation.
    let mut settings = pebble.settings(state.path(), Challenge::Http01);
    settings.renew_before = Duration::from_secs(100 * 365 * 86_400);
    settings.retry_min = Duration::from_millis(700);
    settings.retry_max = Duration::from_millis(1400);
    let manager = AcmeManager::new(settings, store.clone()).unwrap();
    *http.manager.lock().unwrap() = manager.clone();
    http.failing.store(true, Ordering::Relaxed);
    manager.set_hosts(vec![host.into()]);
    let running = Running::start(manager.clone());

    let failures = |n: u32| {
        let store = store.clone();
        async move {
            wait_for(Duration::from_secs(60), &format!("{n} failures"), || {
                let st = store.status().into_iter().find(|s| s.host == host);
                async move { st.filter(|s| s.renewal_failures >= n) }
            })
            .await
        }
    };
    let first = failures(1).await;
    let started = tokio::time::Instant::now();
    let third = failures(3).await;
    // retry_min 700 ms, doubling: at least 700 + 1400 ms between the 1st and 3rd failure
    // (an attempt without backoff takes about 250 ms).
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "backoff between attempts: {:?}",
        started.elapsed()
    );
    let error = third.last_error.clone().unwrap();
    assert!(error.contains(host), "{error}");
    assert_eq!(first.serial.as_deref(), Some(old.as_str()));
    assert_eq!(
        third.serial.as_deref(),
        Some(old.as_str()),
        "old certificate kept"
    );
    let served = leaf(&handshake(tls_addr, host, &roots).await.unwrap());
    assert_eq!(served, old_leaf, "old certificate still served");
    let attempts = manager.orders_started();
    assert!((3..=8).contains(&attempts), "{attempts} orders");

    // The validation works again: the retry succeeds and the failure count resets.
    http.failing.store(false, Ordering::Relaxed);
    let new = wait_for_serial(&store, host, Some(&old)).await;
    assert_ne!(new, old);
    let st = store.status().into_iter().find(|s| s.host == host).unwrap();
    assert_eq!((st.renewal_failures, st.last_error), (0, None));
    let served = leaf(&handshake(tls_addr, host, &roots).await.unwrap());
    assert_ne!(served, old_leaf);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_first_connections_cause_one_order_and_added_hosts_get_certificates() {
    init_logs();
    let mut pebble = Pebble::start(PebbleOptions::default()).await;
    let state = TempDir::new("state");
    let store = CertStore::new();
    let manager = AcmeManager::new(
        pebble.settings(state.path(), Challenge::Http01),
        store.clone(),
    )
    .unwrap();
    let _http = serve_http01(pebble.http_listener.take().unwrap(), manager.clone());
    let tls_listener = pebble.tls_listener.take().unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let _tls = serve_tls(tls_listener, store.clone());
    let roots = Arc::new(pebble.issuer_roots().await);

    manager.set_hosts(vec!["first.example.test".into()]);
    let running = Running::start(manager.clone());
    wait_for_serial(&store, "first.example.test", None).await;
    assert_eq!(manager.orders_started(), 1);

    // 40 clients hammer a host the moment a reload adds it.
    let clients: Vec<_> =
        (0..40)
            .map(|_| {
                let roots = roots.clone();
                tokio::spawn(async move {
                    wait_for(Duration::from_secs(60), "a handshake for new.example.test", || {
                    let roots = roots.clone();
                    async move { handshake(tls_addr, "new.example.test", &roots).await.ok() }
                })
                .await
                })
            })
            .collect();
    manager.set_hosts(vec!["first.example.test".into(), "new.example.test".into()]);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(manager.orders_started(), 2, "one order for the new host");

    // Dropped hosts are no longer served.
    manager.set_hosts(vec!["new.example.test".into()]);
    assert!(
        handshake(tls_addr, "first.example.test", &roots)
            .await
            .is_err()
    );
    assert!(
        store
            .status()
            .iter()
            .all(|s| s.host != "first.example.test")
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_server_name_never_triggers_an_order() {
    init_logs();
    let mut pebble = Pebble::start(PebbleOptions::default()).await;
    let state = TempDir::new("state");
    let store = CertStore::new();
    let manager = AcmeManager::new(
        pebble.settings(state.path(), Challenge::Http01),
        store.clone(),
    )
    .unwrap();
    let _http = serve_http01(pebble.http_listener.take().unwrap(), manager.clone());
    let tls_listener = pebble.tls_listener.take().unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let _tls = serve_tls(tls_listener, store.clone());

    manager.set_hosts(vec![
        "known.example.test".into(),
        "*.wildcard-needs-dns01.example.test".into(),
        "10.0.0.1".into(),
    ]);
    let running = Running::start(manager.clone());
    wait_for_serial(&store, "known.example.test", None).await;
    let roots = pebble.issuer_roots().await;
    for i in 0..20 {
        let sni = format!("unknown{i}.example.test");
        assert!(handshake(tls_addr, &sni, &roots).await.is_err(), "{sni}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(manager.orders_started(), 1);
    let hosts: Vec<String> = store.status().into_iter().map(|s| s.host).collect();
    assert_eq!(hosts, vec!["known.example.test"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reuses_the_account_and_certificates_in_state_dir() {
    init_logs();
    let mut pebble = Pebble::start(PebbleOptions::default()).await;
    let state = TempDir::new("state");
    let host = "persist.example.test";
    let store = CertStore::new();
    let manager = AcmeManager::new(
        pebble.settings(state.path(), Challenge::Http01),
        store.clone(),
    )
    .unwrap();
    let http = serve_http01(pebble.http_listener.take().unwrap(), manager.clone());
    manager.set_hosts(vec![host.into(), "second.example.test".into()]);
    let running = Running::start(manager.clone());
    let serial = wait_for_serial(&store, host, None).await;
    let second = wait_for_serial(&store, "second.example.test", None).await;
    running.stop().await;
    let account_key = files_under(state.path())
        .into_iter()
        .find(|p| p.ends_with("account.key"))
        .unwrap();
    let key_before = std::fs::read(&account_key).unwrap();

    // A new process: new store, new manager, same state_dir.
    let store = CertStore::new();
    let manager = AcmeManager::new(
        pebble.settings(state.path(), Challenge::Http01),
        store.clone(),
    )
    .unwrap();
    *http.manager.lock().unwrap() = manager.clone();
    manager.set_hosts(vec![host.into(), "second.example.test".into()]);
    assert_eq!(
        acme_serial(&store, host).as_deref(),
        Some(serial.as_str()),
        "served at once"
    );
    assert_eq!(acme_serial(&store, "second.example.test"), Some(second));
    let tls_listener = pebble.tls_listener.take().unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let _tls = serve_tls(tls_listener, store.clone());
    let running = Running::start(manager.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let roots = pebble.issuer_roots().await;
    handshake(tls_addr, host, &roots).await.unwrap();
    assert_eq!(manager.orders_started(), 0, "no new order after a restart");
    assert_eq!(std::fs::read(&account_key).unwrap(), key_before);

    // A host added later uses the same account.
    manager.set_hosts(vec![host.into(), "third.example.test".into()]);
    wait_for_serial(&store, "third.example.test", None).await;
    assert_eq!(manager.orders_started(), 1);
    assert_eq!(std::fs::read(&account_key).unwrap(), key_before);
    running.stop().await;
}
