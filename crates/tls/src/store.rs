//! The certificate store: static certificates from files, certificates the ACME manager
//! obtained, and pending TLS-ALPN-01 challenge certificates, looked up by SNI on every
//! handshake ([`rustls::server::ResolvesServerCert`]).
//!
//! Lookup order for a server name: exact static, exact ACME, wildcard static, wildcard
//! ACME, then the default (the first static certificate). A client hello that offers only
//! the `acme-tls/1` protocol gets the pending challenge certificate for its name, or
//! nothing. Reads are lock-free snapshots ([`ArcSwap`]); writers swap whole maps.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certs::{self, Loaded, load_files, parent, unix_now};
use crate::error::TlsError;
use crate::log_budget::LogBudget;

/// Lines about client hellos answered with the default certificate: clients choose the
/// names, so only a few are written per minute.
static SNI_LOG: LogBudget = LogBudget::new(20, 60);

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737). A connection that negotiated it
/// carries no HTTP: close it right after the handshake.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A certificate chain file and its private key file, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where a served certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    Static,
    Acme,
}

/// The state of one host's certificate, for metrics, logs and the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStatus {
    /// The DNS name (`*.example.com` for wildcards). A static certificate without DNS names
    /// is listed under its file path.
    pub host: String,
    pub source: CertSource,
    /// Serial number of the served certificate, lowercase hex; `None` while an ACME host
    /// has no certificate yet.
    pub serial: Option<String>,
    /// notAfter in seconds since the Unix epoch; `None` while an ACME host has none yet.
    pub not_after: Option<i64>,
    /// Seconds until notAfter (negative once expired).
    pub seconds_left: Option<i64>,
    /// Failed ACME attempts since the last success (always 0 for static certificates).
    pub renewal_failures: u32,
    /// Why the last ACME attempt failed, while it keeps failing.
    pub last_error: Option<String>,
}

/// Static and ACME certificates, resolved by SNI. Cheap to clone; all clones share state.
#[derive(Clone, Default)]
pub struct CertStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    statics: ArcSwap<StaticSet>,
    acme: ArcSwap<HashMap<String, Arc<Loaded>>>,
    /// Serializes writers of `acme` (read, copy, swap).
    acme_writer: Mutex<()>,
    /// One entry per host the ACME manager is responsible for.
    acme_status: Mutex<BTreeMap<String, AcmeHostStatus>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

#[derive(Default)]
struct StaticSet {
    default: Option<Arc<Loaded>>,
    by_name: HashMap<String, Arc<Loaded>>,
    files: Vec<(PathBuf, Arc<Loaded>)>,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct AcmeHostStatus {
    pub failures: u32,
    pub last_error: Option<String>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("static", &self.inner.statics.load().files.len())
            .field("acme", &self.inner.acme.load().len())
            .finish()
    }
}

impl CertStore {
    /// An empty store: every handshake fails until certificates are loaded or obtained.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the static certificates (start and reload). The first is the default for
    /// client hellos without SNI or with a name no certificate covers. On error the previous
    /// set stays in place. Expired certificates are loaded with a warning.
    pub fn load_static(&self, certs: &[StaticCert]) -> Result<(), TlsError> {
        let now = unix_now();
        let mut set = StaticSet::default();
        for (i, spec) in certs.iter().enumerate() {
            let loaded = Arc::new(load_files(&spec.cert, &spec.key)?);
            let info = &loaded.info;
            if info.not_after < now {
                tracing::warn!(
                    file = %spec.cert.display(),
                    not_after = info.not_after,
                    "static certificate has expired; clients will reject it: replace the file and reload"
                );
            } else if info.not_before > now {
                tracing::warn!(
                    file = %spec.cert.display(),
                    not_before = info.not_before,
                    "static certificate is not valid yet; check the clock or the file"
                );
            }
            if info.dns_names.is_empty() && i > 0 {
                tracing::warn!(
                    file = %spec.cert.display(),
                    "static certificate names no DNS host (subjectAltName) and is not the first, so it is never served"
                );
            }
            for name in &info.dns_names {
                set.by_name
                    .entry(name.clone())
                    .or_insert_with(|| loaded.clone());
            }
            if i == 0 {
                set.default = Some(loaded.clone());
            }
            set.files.push((spec.cert.clone(), loaded));
        }
        tracing::info!(
            certificates = set.files.len(),
            names = set.by_name.len(),
            "static certificates loaded"
        );
        self.inner.statics.store(Arc::new(set));
        Ok(())
    }

    /// Server settings for the https listener: TLS 1.2 and 1.3, ALPN `h2`, `http/1.1` (and
    /// `acme-tls/1` for validation, see [`ACME_TLS_ALPN`]), certificates from this store.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(certs::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Arc::new(config)
    }

    /// Every served host with its expiry and ACME health.
    pub fn status(&self) -> Vec<CertStatus> {
        let now = unix_now();
        let mut out = Vec::new();
        for (path, loaded) in &self.inner.statics.load().files {
            let info = &loaded.info;
            let hosts = if info.dns_names.is_empty() {
                vec![path.display().to_string()]
            } else {
                info.dns_names.clone()
            };
            for host in hosts {
                out.push(CertStatus {
                    host,
                    source: CertSource::Static,
                    serial: Some(info.serial.clone()),
                    not_after: Some(info.not_after),
                    seconds_left: Some(info.not_after - now),
                    renewal_failures: 0,
                    last_error: None,
                });
            }
        }
        let acme = self.inner.acme.load();
        for (host, st) in lock(&self.inner.acme_status).iter() {
            let cert = acme.get(host);
            out.push(CertStatus {
                host: host.clone(),
                source: CertSource::Acme,
                serial: cert.map(|c| c.info.serial.clone()),
                not_after: cert.map(|c| c.info.not_after),
                seconds_left: cert.map(|c| c.info.not_after - now),
                renewal_failures: st.failures,
                last_error: st.last_error.clone(),
            });
        }
        out
    }

    /// The certificate for a server name (`None`: no SNI).
    fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let statics = self.inner.statics.load();
        if let Some(sni) = sni {
            let name = sni.trim_end_matches('.').to_ascii_lowercase();
            let acme = self.inner.acme.load();
            if let Some(c) = statics.by_name.get(&name).or_else(|| acme.get(&name)) {
                return Some(c.key.clone());
            }
            if let Some(p) = parent(&name) {
                let wildcard = format!("*.{p}");
                if let Some(c) = statics
                    .by_name
                    .get(&wildcard)
                    .or_else(|| acme.get(&wildcard))
                {
                    return Some(c.key.clone());
                }
            }
            if let Some(default) = &statics.default {
                if let Some(suppressed) = SNI_LOG.take() {
                    tracing::info!(
                        sni = %name,
                        suppressed,
                        "no certificate names this server name (SNI); serving the default certificate"
                    );
                }
                return Some(default.key.clone());
            }
            return None;
        }
        let default = statics.default.as_ref()?;
        if let Some(suppressed) = SNI_LOG.take() {
            tracing::info!(
                suppressed,
                "client hello without a server name (SNI); serving the default certificate"
            );
        }
        Some(default.key.clone())
    }

    // ---- used by the ACME manager ----

    /// Whether a static certificate covers `host`, so that no ACME order is needed.
    pub(crate) fn covered_by_static(&self, host: &str) -> bool {
        let statics = self.inner.statics.load();
        statics.files.iter().any(|(_, c)| c.covers(host))
    }

    /// Makes `hosts` the ACME hosts: status entries for them, and certificates of hosts no
    /// longer listed are no longer served.
    pub(crate) fn set_acme_hosts(&self, hosts: &HashSet<String>) {
        {
            let mut status = lock(&self.inner.acme_status);
            status.retain(|h, _| hosts.contains(h));
            for h in hosts {
                status.entry(h.clone()).or_default();
            }
        }
        let _writer = lock(&self.inner.acme_writer);
        let current = self.inner.acme.load();
        if current.keys().any(|h| !hosts.contains(h)) {
            let kept = current
                .iter()
                .filter(|(h, _)| hosts.contains(*h))
                .map(|(h, c)| (h.clone(), c.clone()))
                .collect();
            self.inner.acme.store(Arc::new(kept));
        }
    }

    pub(crate) fn acme_cert(&self, host: &str) -> Option<Arc<Loaded>> {
        self.inner.acme.load().get(host).cloned()
    }

    pub(crate) fn publish_acme(&self, host: &str, cert: Arc<Loaded>) {
        let _writer = lock(&self.inner.acme_writer);
        let mut map = HashMap::clone(&self.inner.acme.load());
        map.insert(host.to_string(), cert);
        self.inner.acme.store(Arc::new(map));
    }

    /// Records the outcome of an ACME attempt for `host`; returns the failure count.
    pub(crate) fn record_acme_result(&self, host: &str, result: Result<(), String>) -> u32 {
        let mut status = lock(&self.inner.acme_status);
        let Some(st) = status.get_mut(host) else {
            return 0;
        };
        match result {
            Ok(()) => *st = AcmeHostStatus::default(),
            Err(e) => {
                st.failures += 1;
                st.last_error = Some(e);
            }
        }
        st.failures
    }

    pub(crate) fn set_challenge(&self, host: &str, cert: Arc<CertifiedKey>) {
        write(&self.inner.challenges).insert(host.to_string(), cert);
    }

    pub(crate) fn clear_challenge(&self, host: &str) {
        write(&self.inner.challenges).remove(host);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let only_acme_tls = hello.alpn().is_some_and(|mut offered| {
            offered.next() == Some(ACME_TLS_ALPN) && offered.next().is_none()
        });
        if only_acme_tls {
            let name = hello
                .server_name()?
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let found = read(&self.inner.challenges).get(&name).cloned();
            if found.is_none() {
                tracing::debug!(sni = %name, "acme-tls/1 hello without a pending challenge");
            }
            return found;
        }
        let found = self.lookup(hello.server_name());
        if found.is_none() {
            tracing::debug!(sni = ?hello.server_name(), "no certificate to serve; handshake refused");
        }
        found
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
