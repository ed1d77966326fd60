//! Static certificates: chosen by SNI with a default, reloaded, reported; bad files give
//! clear errors; odd client hellos are refused without harm.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{TempDir, init_logs, serve_tls};
use kakuremichi_tls::AcceptAnyCertificate;
use kakuremichi_tls::{CertSource, CertStore, StaticCert, TlsError};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

struct Hello<'a> {
    sni: Option<&'a str>,
    alpn: &'a [&'a [u8]],
    tls12_only: bool,
}

impl Default for Hello<'_> {
    fn default() -> Self {
        Hello {
            sni: None,
            alpn: &[b"h2", b"http/1.1"],
            tls12_only: false,
        }
    }
}

/// Handshakes and returns the presented leaf and the negotiated ALPN protocol.
async fn connect(
    addr: std::net::SocketAddr,
    hello: Hello<'_>,
) -> std::io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if hello.tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = hello.alpn.iter().map(|p| p.to_vec()).collect();
    let name = match hello.sni {
        Some(sni) => ServerName::try_from(sni.to_string()).unwrap(),
        None => {
            config.enable_sni = false;
            ServerName::try_from("unused.invalid").unwrap()
        }
    };
    let tcp = TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let conn = tls.get_ref().1;
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    Ok((leaf, conn.alpn_protocol().map(|p| p.to_vec())))
}

struct Made {
    spec: StaticCert,
    der: Vec<u8>,
}

fn make(dir: &Path, file: &str, names: &[&str], expired: bool) -> Made {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
    }
    let cert = params.self_signed(&key).unwrap();
    let spec = StaticCert {
        cert: dir.join(format!("{file}.pem")),
        key: dir.join(format!("{file}.key")),
    };
    std::fs::write(&spec.cert, cert.pem()).unwrap();
    std::fs::write(&spec.key, key.serialize_pem()).unwrap();
    Made {
        spec,
        der: cert.der().to_vec(),
    }
}

async fn serve(store: &CertStore) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_tls(listener, store.clone());
    addr
}

#[tokio::test]
async fn server_names_pick_certificates_and_the_first_is_the_default() {
    init_logs();
    let dir = TempDir::new("static");
    let default = make(dir.path(), "default", &["default.test"], false);
    let multi = make(dir.path(), "multi", &["a.test", "*.w.test"], false);
    let b = make(dir.path(), "b", &["B.test"], false);
    let store = CertStore::new();
    store
        .load_static(&[default.spec.clone(), multi.spec.clone(), b.spec.clone()])
        .unwrap();
    let addr = serve(&store).await;

    let cases: &[(Option<&str>, &Made)] = &[
        (Some("a.test"), &multi),
        (Some("x.w.test"), &multi),
        (Some("b.test"), &b),
        (Some("default.test"), &default),
        (Some("y.x.w.test"), &default),
        (Some("w.test"), &default),
        (Some("unknown.test"), &default),
        (None, &default),
    ];
    for (sni, want) in cases {
        let hello = Hello {
            sni: *sni,
            ..Hello::default()
        };
        let (leaf, _) = connect(addr, hello).await.unwrap();
        assert!(leaf == want.der, "SNI {sni:?} got the wrong certificate");
    }

    let status = store.status();
    let hosts: Vec<&str> = status.iter().map(|s| s.host.as_str()).collect();
    assert_eq!(hosts, vec!["default.test", "a.test", "*.w.test", "b.test"]);
    assert!(status.iter().all(|s| s.source == CertSource::Static
        && s.seconds_left.unwrap() > 0
        && s.renewal_failures == 0));
}

#[tokio::test]
async fn alpn_offers_h2_and_http1_over_tls12_and_tls13() {
    init_logs();
    let dir = TempDir::new("static");
    let site = make(dir.path(), "site", &["site.test"], false);
    let store = CertStore::new();
    store.load_static(std::slice::from_ref(&site.spec)).unwrap();
    let addr = serve(&store).await;

    let h2 = connect(
        addr,
        Hello {
            sni: Some("site.test"),
            ..Hello::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(h2.1.as_deref(), Some(&b"h2"[..]));
    let h1 = connect(
        addr,
        Hello {
            sni: Some("site.test"),
            alpn: &[b"http/1.1"],
            tls12_only: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(h1.1.as_deref(), Some(&b"http/1.1"[..]));
    let none = connect(
        addr,
        Hello {
            sni: Some("site.test"),
            alpn: &[],
            ..Hello::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(none.1, None);
}

#[tokio::test]
async fn odd_client_hellos_are_refused_without_harm() {
    init_logs();
    let dir = TempDir::new("static");
    let site = make(dir.path(), "site", &["site.test"], false);
    let store = CertStore::new();
    let addr = serve(&store).await;

    // No certificate at all: every handshake is refused.
    assert!(
        connect(
            addr,
            Hello {
                sni: Some("site.test"),
                ..Hello::default()
            }
        )
        .await
        .is_err()
    );
    store.load_static(std::slice::from_ref(&site.spec)).unwrap();

    // acme-tls/1 without a pending challenge: refused, not answered with the site's cert.
    let acme = Hello {
        sni: Some("site.test"),
        alpn: &[b"acme-tls/1"],
        ..Hello::default()
    };
    assert!(connect(addr, acme).await.is_err());

    // Garbage on the TLS port.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(tcp);

    // The listener still works.
    let (leaf, _) = connect(
        addr,
        Hello {
            sni: Some("site.test"),
            ..Hello::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(leaf, site.der);
}

#[tokio::test]
async fn a_reload_replaces_the_set_and_a_bad_one_keeps_the_old() {
    init_logs();
    let dir = TempDir::new("static");
    let one = make(dir.path(), "one", &["one.test"], false);
    let two = make(dir.path(), "two", &["two.test"], false);
    let store = CertStore::new();
    store.load_static(std::slice::from_ref(&one.spec)).unwrap();
    let addr = serve(&store).await;
    let sni = |s| Hello {
        sni: Some(s),
        ..Hello::default()
    };

    store
        .load_static(&[two.spec.clone(), one.spec.clone()])
        .unwrap();
    assert_eq!(connect(addr, sni("unknown.test")).await.unwrap().0, two.der);
    assert_eq!(connect(addr, sni("one.test")).await.unwrap().0, one.der);

    let missing = StaticCert {
        cert: dir.path().join("missing.pem"),
        key: dir.path().join("missing.key"),
    };
    assert!(store.load_static(&[one.spec.clone(), missing]).is_err());
    assert_eq!(
        connect(addr, sni("unknown.test")).await.unwrap().0,
        two.der,
        "old set kept"
    );

    store.load_static(&[]).unwrap();
    assert!(connect(addr, sni("one.test")).await.is_err());
    assert!(store.status().is_empty());
}

fn error_for(spec: StaticCert) -> (TlsError, String) {
    let err = CertStore::new().load_static(&[spec]).unwrap_err();
    let text = err.to_string();
    (err, text)
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn bad_files_give_errors_that_name_the_file_and_say_what_to_do() {
    init_logs();
    let dir = TempDir::new("static");
    let good = make(dir.path(), "good", &["good.test"], false);
    let other = make(dir.path(), "other", &["good.test"], false);

    let missing = dir.path().join("nope.pem");
    let (err, text) = error_for(StaticCert {
        cert: missing.clone(),
        key: good.spec.key.clone(),
    });
    assert!(matches!(err, TlsError::Read { .. }));
    assert!(
        text.contains(&path_str(&missing)) && text.contains("check that the path"),
        "{text}"
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let (err, text) = error_for(StaticCert {
        cert: garbage.clone(),
        key: good.spec.key.clone(),
    });
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    assert!(
        text.contains(&path_str(&garbage)) && text.contains("PEM"),
        "{text}"
    );

    let (err, text) = error_for(StaticCert {
        cert: good.spec.cert.clone(),
        key: good.spec.cert.clone(),
    });
    assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
    assert!(
        text.contains(&path_str(&good.spec.cert)) && text.contains("private key"),
        "{text}"
    );

    let (err, text) = error_for(StaticCert {
        cert: good.spec.cert.clone(),
        key: other.spec.key.clone(),
    });
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(
        text.contains(&path_str(&good.spec.cert)) && text.contains(&path_str(&other.spec.key)),
        "{text}"
    );

    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (err, text) = error_for(StaticCert {
        cert: broken.clone(),
        key: good.spec.key.clone(),
    });
    assert!(matches!(err, TlsError::BadCertificate { .. }), "{err:?}");
    assert!(text.contains(&path_str(&broken)), "{text}");
}

#[test]
fn an_expired_certificate_loads_with_a_warning_and_shows_in_status() {
    init_logs();
    let dir = TempDir::new("static");
    let old = make(dir.path(), "old", &["old.test"], true);
    let store = CertStore::new();
    store.load_static(&[old.spec]).unwrap();
    let status = store.status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].not_after, Some(1_009_843_200)); // 2002-01-01
    assert!(status[0].seconds_left.unwrap() < 0);
}
