//! The real Pebble ACME server and pebble-challtestsrv (its DNS, answering 127.0.0.1 for
//! every name) from Debian's `pebble` package, started on free loopback ports with their
//! own config and a CA made here for Pebble's HTTPS certificate. Both are killed and their
//! folder removed on drop; every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::ports::{free_port, free_tcp_udp_port};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running Pebble and challtestsrv.
pub struct Pebble {
    _pebble: Kill,
    _challtest: Kill,
    dir: PathBuf,
    /// The ACME directory URL.
    pub directory: String,
    /// Pebble's management API (`/roots/0`: the root of the certificates it issues).
    pub mgmt: SocketAddr,
    /// challtestsrv's management API (`/set-txt`, `/clear-txt`).
    pub challtest_mgmt: SocketAddr,
    /// PEM file of the CA of Pebble's own HTTPS certificate.
    pub ca_roots: PathBuf,
    /// The same CA, DER.
    pub ca_der: Vec<u8>,
}

impl Pebble {
    /// Starts both; HTTP-01 is validated on `http_port`, TLS-ALPN-01 on `tls_port`, and
    /// certificates are valid for `validity` seconds (Pebble's default when `None`).
    /// A start that loses one of its ports to another process (one of them exits before
    /// listening) is tried again on fresh ports, three times at most.
    pub async fn start(http_port: u16, tls_port: u16, validity: Option<u64>) -> Pebble {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(http_port, tls_port, validity).await {
                Ok(pebble) => return pebble,
                Err(logs) => failures.push(logs),
            }
        }
        panic!(
            "pebble did not start in three tries:\n{}",
            failures.join("\n----\n")
        );
    }

    async fn try_start(
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
    ) -> Result<Pebble, String> {
        for bin in ["/usr/bin/pebble", "/usr/bin/pebble-challtestsrv"] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install the Debian package with `apt-get install -y pebble`"
            );
        }
        let dir = std::env::temp_dir().join(format!(
            "kakuremichi-pebble-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("pebble folder");

        // Pebble's HTTPS certificate, from a CA of our own.
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kakuremichi test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("leaf")
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf certificate");
        let ca_roots = dir.join("ca.pem");
        std::fs::write(&ca_roots, ca.pem()).expect("write ca.pem");
        std::fs::write(dir.join("pebble.crt"), leaf.pem()).expect("write pebble.crt");
        std::fs::write(dir.join("pebble.key"), leaf_key.serialize_pem()).expect("write key");

        let (acme_port, mgmt_port, dns_port, ct_port) =
            (free_port(), free_port(), free_tcp_udp_port(), free_port());
        let mut config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.join("pebble.crt"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(validity) = validity {
            config["pebble"]["certificateValidityPeriod"] = validity.into();
        }
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble.json");

        let log = |name: &str| std::fs::File::create(dir.join(name)).expect("log file");
        let challtest = Kill(
            Command::new("/usr/bin/pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{ct_port}")])
                .stdin(Stdio::null())
                .stdout(log("challtestsrv.log"))
                .stderr(log("challtestsrv.err"))
                .spawn()
                .expect("start pebble-challtestsrv"),
        );
        let pebble = Kill(
            Command::new("/usr/bin/pebble")
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdin(Stdio::null())
                .stdout(log("pebble.log"))
                .stderr(log("pebble.err"))
                .spawn()
                .expect("start pebble"),
        );
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut started = Pebble {
            _pebble: pebble,
            _challtest: challtest,
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            mgmt: addr(mgmt_port),
            challtest_mgmt: addr(ct_port),
            ca_roots,
            ca_der: ca.der().to_vec(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        for a in [addr(acme_port), started.mgmt, started.challtest_mgmt] {
            while TcpStream::connect(a).await.is_err() {
                let exited = [&mut started._pebble.0, &mut started._challtest.0]
                    .into_iter()
                    .any(|child| !matches!(child.try_wait(), Ok(None)));
                if exited || Instant::now() >= deadline {
                    return Err(format!(
                        "pebble did not listen on {a} ({}):\n{}",
                        if exited {
                            "a process exited"
                        } else {
                            "15 s passed"
                        },
                        started.logs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(started)
    }

    /// Pebble's folder (config, certificates, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// POSTs `body` to challtestsrv's management API and expects 200.
    pub async fn challtest(&self, path: &str, body: serde_json::Value) {
        challtest_post(self.challtest_mgmt, path, body).await;
    }

    /// Both servers' logs, for failure messages.
    pub fn logs(&self) -> String {
        ["pebble.log", "pebble.err", "challtestsrv.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// POSTs JSON to challtestsrv's management API at `addr` and expects 200.
pub(crate) async fn challtest_post(addr: SocketAddr, path: &str, body: serde_json::Value) {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = TcpStream::connect(addr)
        .await
        .expect("connect to challtestsrv");
    tcp.write_all(request.as_bytes())
        .await
        .expect("send to challtestsrv");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("challtestsrv answers within 10 s")
        .expect("read challtestsrv's answer");
    let status_line = String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        status_line.starts_with("HTTP/1.1 200"),
        "challtestsrv {path}: {status_line}"
    );
}
