//! The ACME manager: keeps a valid certificate for every host it was given and for no other.
//!
//! - [`AcmeManager::set_hosts`] names the hosts (at start and on every reload); stored
//!   certificates of new hosts are served at once, missing ones are ordered by [`run`].
//! - [`run`] wakes when hosts change, when an order finishes, and when the next renewal or
//!   retry is due. It starts at most one order per host at a time (a host is `in_flight`
//!   until its order ends) and at most [`MAX_CONCURRENT_ORDERS`] in all. Handshakes never
//!   start orders, so an unknown SNI (or a thousand first connections) cannot cause one.
//! - A failure is recorded in the store's status and retried after `retry_min`, doubling up
//!   to `retry_max` (or the server's `Retry-After`); the old certificate keeps being served.
//! - A certificate is renewed when it expires within `renew_before`; one obtained by this
//!   process is not renewed before a third of its lifetime has passed, so a `renew_before`
//!   longer than the lifetime cannot make the manager order in a loop.
//!
//! [`run`]: AcmeManager::run

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::Account;
use super::issue::{Solver, issue};
use super::persist::StateDir;
use super::{AcmeSettings, Challenge};
use crate::certs::unix_now;
use crate::dns::DnsProvider;
use crate::dns::cloudflare::Cloudflare;
use crate::error::{AcmeError, TlsError};
use crate::http_client::HttpClient;
use crate::store::CertStore;

/// Orders running at once, across hosts.
pub(crate) const MAX_CONCURRENT_ORDERS: usize = 4;
/// The loop re-plans at least this often (clock changes, missed wake-ups).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Obtains and renews certificates into a [`CertStore`]. Cheap to clone.
#[derive(Clone)]
pub struct AcmeManager {
    shared: Arc<Shared>,
}

struct Shared {
    settings: AcmeSettings,
    store: CertStore,
    state: StateDir,
    http: HttpClient,
    solver: Solver,
    hosts: Mutex<HashMap<String, HostState>>,
    wake: Notify,
    account: tokio::sync::Mutex<Option<Arc<Account>>>,
    orders: AtomicU64,
}

#[derive(Debug, Default)]
struct HostState {
    in_flight: bool,
    failures: u32,
    next_attempt: Option<Instant>,
    obtained_at: Option<Instant>,
}

impl std::fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeManager")
            .field("directory", &self.shared.settings.directory)
            .field("challenge", &self.shared.settings.challenge)
            .finish()
    }
}

impl AcmeManager {
    /// Checks the settings, opens `state_dir/acme` (creating the account key on first
    /// start). Nothing is sent to the ACME server until [`run`](Self::run).
    pub fn new(settings: AcmeSettings, store: CertStore) -> Result<Self, TlsError> {
        if !(settings.directory.starts_with("https://")
            || settings.directory.starts_with("http://"))
        {
            return Err(TlsError::Settings(format!(
                "directory {:?} is not an http(s) URL",
                settings.directory
            )));
        }
        if settings.retry_min.is_zero() || settings.retry_max < settings.retry_min {
            return Err(TlsError::Settings(
                "retry_min must be positive and retry_max at least retry_min".into(),
            ));
        }
        let dns: Option<Arc<dyn DnsProvider>> = match (&settings.challenge, &settings.dns) {
            (_, Some(dns)) if dns.provider == "cloudflare" => Some(Arc::new(Cloudflare::new(
                dns.api_token.clone(),
                dns.api_url.clone(),
                settings.ca_roots.as_deref(),
            )?)),
            (_, Some(dns)) => {
                return Err(TlsError::Settings(format!(
                    "unknown DNS provider {:?}; supported: \"cloudflare\"",
                    dns.provider
                )));
            }
            (Challenge::Dns01, None) => {
                return Err(TlsError::Settings(
                    "challenge \"dns-01\" needs [tls.acme.dns] with a provider and its API token"
                        .into(),
                ));
            }
            _ => None,
        };
        let state = StateDir::open(&settings.state_dir, &settings.directory)?;
        // Fail at start, not at the first order, if the key file is unusable.
        state.account_key()?;
        let http = HttpClient::new(settings.ca_roots.as_deref())?;
        let solver = Solver {
            challenge: settings.challenge,
            store: store.clone(),
            http01: Arc::default(),
            dns,
            propagation: settings
                .dns
                .as_ref()
                .map(|d| d.propagation_delay)
                .unwrap_or_default(),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                store,
                state,
                http,
                solver,
                hosts: Mutex::default(),
                wake: Notify::new(),
                account: tokio::sync::Mutex::new(None),
                orders: AtomicU64::new(0),
            }),
        })
    }

    /// The hosts that must have certificates: exact names, and `*.wildcards` with dns-01.
    /// Call at start and on every reload. Stored certificates of newly added hosts are
    /// served at once; missing ones are ordered by [`run`](Self::run). Hosts dropped from
    /// the list are no longer served or renewed (their files stay). Names that cannot get a
    /// certificate (IP addresses, single labels, wildcards without dns-01) are logged and
    /// skipped. Hosts covered by a static certificate are not ordered.
    pub fn set_hosts(&self, hosts: Vec<String>) {
        let mut wanted: HashSet<String> = HashSet::new();
        for raw in hosts {
            let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
            match check_host(&host, self.shared.settings.challenge) {
                Ok(()) => {
                    wanted.insert(host);
                }
                Err(reason) => {
                    tracing::warn!(host = %raw, "no ACME certificate for this host: {reason}")
                }
            }
        }
        let shared = &self.shared;
        let mut map = lock(&shared.hosts);
        shared.store.set_acme_hosts(&wanted);
        map.retain(|h, _| wanted.contains(h));
        for host in &wanted {
            if map.contains_key(host) {
                continue;
            }
            map.insert(host.clone(), HostState::default());
            if let Some(loaded) = shared.state.load_cert(host) {
                tracing::info!(
                    host = %host,
                    serial = %loaded.info.serial,
                    not_after = loaded.info.not_after,
                    "ACME certificate loaded from state_dir"
                );
                shared.store.publish_acme(host, Arc::new(loaded));
            }
        }
        drop(map);
        shared.wake.notify_one();
    }

    /// The key authorization for an HTTP-01 `token` while its challenge is pending: the body
    /// of `GET /.well-known/acme-challenge/{token}` on the http listener (`text/plain`).
    pub fn http01_answer(&self, token: &str) -> Option<String> {
        lock(&self.shared.solver.http01).get(token).cloned()
    }

    /// How many orders this manager has sent (for metrics and tests).
    pub fn orders_started(&self) -> u64 {
        self.shared.orders.load(Ordering::Relaxed)
    }

    /// Obtains missing certificates and renews due ones until `shutdown`; orders still
    /// running then are abandoned (a pending DNS-01 TXT record may stay behind).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        loop {
            let next = self.start_due(&mut tasks);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.shared.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
        tasks.shutdown().await;
        // Abandoned orders no longer block a later `run`.
        for st in lock(&self.shared.hosts).values_mut() {
            st.in_flight = false;
        }
    }

    /// Starts the orders that are due; returns when the next one will be.
    fn start_due(&self, tasks: &mut JoinSet<()>) -> Instant {
        let shared = &self.shared;
        let now = Instant::now();
        let unix = unix_now();
        let mut next = now + MAX_SLEEP;
        let mut hosts = lock(&shared.hosts);
        let mut slots =
            MAX_CONCURRENT_ORDERS.saturating_sub(hosts.values().filter(|s| s.in_flight).count());
        for (host, st) in hosts.iter_mut() {
            if st.in_flight || shared.store.covered_by_static(host) {
                continue;
            }
            let due = self.due_at(host, st, now, unix);
            if due > now {
                next = next.min(due);
            } else if slots > 0 {
                slots -= 1;
                st.in_flight = true;
                tasks.spawn(self.clone().attempt(host.clone()));
            }
        }
        next
    }

    fn due_at(&self, host: &str, st: &HostState, now: Instant, unix: i64) -> Instant {
        let mut due = match self.shared.store.acme_cert(host) {
            None => now,
            Some(cert) => {
                let renew_before = self.shared.settings.renew_before.as_secs() as i64;
                let renew_at = cert.info.not_after.saturating_sub(renew_before);
                let mut at = now + Duration::from_secs(renew_at.saturating_sub(unix).max(0) as u64);
                if let Some(obtained) = st.obtained_at {
                    let lifetime = (cert.info.not_after - cert.info.not_before).max(0) as u64;
                    at = at.max(obtained + Duration::from_secs(lifetime / 3));
                }
                at
            }
        };
        if let Some(retry) = st.next_attempt {
            due = due.max(retry);
        }
        due
    }

    /// One order for `host`, then the bookkeeping.
    async fn attempt(self, host: String) {
        let shared = &self.shared;
        let renewing = shared.store.acme_cert(&host).is_some();
        tracing::info!(host = %host, renewing, "requesting a certificate");
        let result = async {
            let account = self.account().await?;
            shared.orders.fetch_add(1, Ordering::Relaxed);
            issue(&account, &host, &shared.solver).await
        }
        .await;

        let mut hosts = lock(&shared.hosts);
        let still_wanted = hosts.contains_key(&host);
        let now = Instant::now();
        match result {
            Ok(issued) => {
                if let Err(e) =
                    shared
                        .state
                        .save_cert(&host, &issued.chain_pem, issued.key_pem.as_bytes())
                {
                    tracing::error!(host = %host, error = %e, "cannot store the new certificate; serving it from memory only");
                }
                let info = &issued.loaded.info;
                let lifetime = info.not_after - info.not_before;
                if lifetime <= shared.settings.renew_before.as_secs() as i64 {
                    tracing::warn!(
                        host = %host,
                        lifetime_secs = lifetime,
                        renew_before_secs = shared.settings.renew_before.as_secs(),
                        "renew_before is not shorter than the certificate lifetime; renewing after a third of the lifetime instead"
                    );
                }
                tracing::info!(host = %host, serial = %info.serial, not_after = info.not_after, "certificate obtained");
                if still_wanted {
                    shared.store.publish_acme(&host, Arc::new(issued.loaded));
                    shared.store.record_acme_result(&host, Ok(()));
                }
                if let Some(st) = hosts.get_mut(&host) {
                    st.failures = 0;
                    st.next_attempt = None;
                    st.obtained_at = Some(now);
                }
            }
            Err(e) => {
                if matches!(
                    &e,
                    AcmeError::Problem {
                        status: 401 | 403,
                        ..
                    }
                ) || matches!(&e, AcmeError::Problem { kind, .. } if kind.ends_with(":accountDoesNotExist"))
                {
                    // The account may be gone: register again next time.
                    if let Ok(mut account) = shared.account.try_lock() {
                        *account = None;
                    }
                }
                if let Some(st) = hosts.get_mut(&host) {
                    st.failures += 1;
                    let delay = backoff(
                        st.failures,
                        shared.settings.retry_min,
                        shared.settings.retry_max,
                        e.retry_after(),
                    );
                    st.next_attempt = Some(now + delay);
                    shared.store.record_acme_result(&host, Err(e.to_string()));
                    tracing::warn!(
                        host = %host,
                        error = %e,
                        failures = st.failures,
                        retry_in_secs = delay.as_secs_f64(),
                        serving_old = renewing,
                        "certificate request failed"
                    );
                }
            }
        }
        if let Some(st) = hosts.get_mut(&host) {
            st.in_flight = false;
        }
    }

    /// The registered account, registering on first use.
    async fn account(&self) -> Result<Arc<Account>, AcmeError> {
        let shared = &self.shared;
        let mut cached = shared.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let key = shared.state.account_key()?;
        let account = Arc::new(
            Account::register(
                shared.http.clone(),
                &shared.settings.directory,
                key,
                shared.settings.email.as_deref(),
            )
            .await?,
        );
        tracing::info!(directory = %shared.settings.directory, "ACME account ready");
        *cached = Some(account.clone());
        Ok(account)
    }
}

/// Wait after the `failures`-th failure in a row.
fn backoff(failures: u32, min: Duration, max: Duration, retry_after: Option<Duration>) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let delay = min.saturating_mul(1u32 << exp).min(max);
    match retry_after {
        Some(server) => delay.max(server.min(MAX_RETRY_AFTER)),
        None => delay,
    }
}

/// Whether ACME can issue for `host` with `challenge`.
fn check_host(host: &str, challenge: Challenge) -> Result<(), &'static str> {
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    if wildcard && challenge != Challenge::Dns01 {
        return Err("wildcard names need challenge = \"dns-01\"");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("IP addresses cannot get ACME certificates here");
    }
    if name.len() > 253 || !name.contains('.') {
        return Err("not a fully qualified DNS name");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !name.split('.').all(label_ok) {
        return Err("not a valid DNS name");
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_honours_retry_after() {
        let min = Duration::from_secs(60);
        let max = Duration::from_secs(3600);
        assert_eq!(backoff(1, min, max, None), min);
        assert_eq!(backoff(2, min, max, None), Duration::from_secs(120));
        assert_eq!(backoff(4, min, max, None), Duration::from_secs(480));
        assert_eq!(backoff(40, min, max, None), max);
        assert_eq!(
            backoff(1, min, max, Some(Duration::from_secs(7200))),
            Duration::from_secs(7200)
        );
        assert_eq!(
            backoff(1, min, max, Some(Duration::from_secs(10 * 86_400))),
            MAX_RETRY_AFTER
        );
    }

    #[test]
    fn only_names_acme_can_prove() {
        assert!(check_host("a.example.com", Challenge::Http01).is_ok());
        assert!(check_host("xn--bcher-kva.example", Challenge::TlsAlpn01).is_ok());
        assert!(check_host("*.example.com", Challenge::Dns01).is_ok());
        assert!(check_host("*.example.com", Challenge::Http01).is_err());
        assert!(check_host("127.0.0.1", Challenge::Http01).is_err());
        assert!(check_host("localhost", Challenge::Http01).is_err());
        assert!(check_host("a..b", Challenge::Http01).is_err());
        assert!(check_host("-a.b", Challenge::Http01).is_err());
        assert!(check_host("a/b.c", Challenge::Http01).is_err());
        assert!(check_host("*.*.b.c", Challenge::Dns01).is_err());
    }
}
