//! Pooled HTTP/1.1 clients, one per distinct (certificate checking, connect timeout, `via`)
//! triple, kept across reloads so that kept-alive upstream connections survive a SIGHUP.
//! Each serving thread has its own pool, so a request only reuses connections its own
//! thread drives; work on the main runtime (health checks) has one more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kakuremichi_tunnel::AgentRegistry;
use std::time::Duration;

use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::connector::Connector;
use super::direct::DirectClient;
use super::tls::{self, TlsSetupError};
use crate::body::UpstreamBody;

/// One pooled client per serving thread, and one for every other thread, sharing a
/// connector.
#[derive(Clone)]
pub struct HttpClient {
    per_thread: Arc<[Client<Connector, UpstreamBody>]>,
    /// For body-less requests to plain `http` upstreams; `None` for tunneled routes.
    direct: Option<DirectClient>,
}

impl HttpClient {
    /// The direct client, when this client's upstreams can use it (not through a tunnel).
    pub fn direct(&self) -> Option<&DirectClient> {
        self.direct.as_ref()
    }

    /// Sends `request` on a connection of the calling thread's pool.
    pub fn request(&self, request: http::Request<UpstreamBody>) -> ResponseFuture {
        let last = self.per_thread.len() - 1;
        let i = crate::workers::index().map_or(last, |i| i.min(last));
        self.per_thread[i].request(request)
    }
}

/// Makes and remembers clients.
pub struct ClientCache {
    verifying: Arc<rustls::ClientConfig>,
    unverified: Arc<rustls::ClientConfig>,
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
    tunnel: Option<AgentRegistry>,
    workers: usize,
}

/// Clients differ by certificate checking, connect timeout and `via` group.
type ClientKey = (bool, Duration, Option<Arc<str>>);

impl ClientCache {
    /// `workers`: how many serving threads (and so pools per client) there are.
    pub fn new(
        ca_roots: Option<&std::path::Path>,
        tunnel: Option<AgentRegistry>,
        workers: usize,
    ) -> Result<Self, TlsSetupError> {
        // With no roots at all, https upstreams fail at connect time with an "unknown
        // issuer" error naming the upstream; plain http routes are unaffected.
        let verifying = tls::verifying(tls::root_store(ca_roots)?)?;
        Ok(ClientCache {
            verifying,
            unverified: tls::unverified()?,
            clients: Mutex::new(HashMap::new()),
            tunnel,
            workers: workers.max(1),
        })
    }

    /// How many serving threads the clients are made for.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// `via`: the agent group for tunneled routes. Without a tunnel listener such routes are
    /// refused when the configuration is built, so `via` is only given with one.
    pub fn get(
        &self,
        tls_verify: bool,
        connect_timeout: Duration,
        via: Option<&str>,
    ) -> HttpClient {
        let mut map = match self.clients.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let via: Option<Arc<str>> = via.map(Arc::from);
        let tunnel = match (&via, &self.tunnel) {
            (Some(group), Some(registry)) => Some((registry.clone(), group.clone())),
            _ => None,
        };
        map.entry((tls_verify, connect_timeout, via))
            .or_insert_with(|| {
                let tls = if tls_verify {
                    self.verifying.clone()
                } else {
                    self.unverified.clone()
                };
                let direct = tunnel.is_none().then(|| {
                    DirectClient::new(
                        Connector::new(tls.clone(), connect_timeout, None),
                        self.workers + 1,
                    )
                });
                let connector = Connector::new(tls, connect_timeout, tunnel);
                let per_thread = (0..=self.workers)
                    .map(|_| {
                        Client::builder(TokioExecutor::new())
                            .timer(TokioTimer::new())
                            .pool_timer(TokioTimer::new())
                            .pool_idle_timeout(Duration::from_secs(60))
                            .pool_max_idle_per_host(1024)
                            .retry_canceled_requests(true)
                            .set_host(false)
                            .build(connector.clone())
                    })
                    .collect();
                HttpClient { per_thread, direct }
            })
            .clone()
    }
}
