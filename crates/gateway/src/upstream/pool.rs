//! Pooled HTTP/1.1 clients, one per distinct (certificate checking, connect timeout) pair,
//! kept across reloads so that kept-alive upstream connections survive a SIGHUP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kakuremichi_tunnel::AgentRegistry;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::connector::Connector;
use super::tls::{self, TlsSetupError};
use crate::body::UpstreamBody;

pub type HttpClient = Client<Connector, UpstreamBody>;

/// Makes and remembers clients.
pub struct ClientCache {
    verifying: Arc<rustls::ClientConfig>,
    unverified: Arc<rustls::ClientConfig>,
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
    tunnel: Option<AgentRegistry>,
}

/// Clients differ by certificate checking, connect timeout and `via` group.
type ClientKey = (bool, Duration, Option<Arc<str>>);

impl ClientCache {
    pub fn new(
        ca_roots: Option<&std::path::Path>,
        tunnel: Option<AgentRegistry>,
    ) -> Result<Self, TlsSetupError> {
        // With no roots at all, https upstreams fail at connect time with an "unknown
        // issuer" error naming the upstream; plain http routes are unaffected.
        let verifying = tls::verifying(tls::root_store(ca_roots)?)?;
        Ok(ClientCache {
            verifying,
            unverified: tls::unverified()?,
            clients: Mutex::new(HashMap::new()),
            tunnel,
        })
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
                Client::builder(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(1024)
                    .retry_canceled_requests(true)
                    .set_host(false)
                    .build(Connector::new(tls, connect_timeout, tunnel))
            })
            .clone()
    }
}
