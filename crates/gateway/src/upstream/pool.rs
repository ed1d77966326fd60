//! Pooled HTTP/1.1 clients, one per distinct (certificate checking, connect timeout) pair,
//! kept across reloads so that kept-alive upstream connections survive a SIGHUP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
    clients: Mutex<HashMap<(bool, Duration), HttpClient>>,
}

impl ClientCache {
    pub fn new(ca_roots: Option<&std::path::Path>) -> Result<Self, TlsSetupError> {
        // With no roots at all, https upstreams fail at connect time with an "unknown
        // issuer" error naming the upstream; plain http routes are unaffected.
        let verifying = tls::verifying(tls::root_store(ca_roots)?)?;
        Ok(ClientCache {
            verifying,
            unverified: tls::unverified()?,
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub fn get(&self, tls_verify: bool, connect_timeout: Duration) -> HttpClient {
        let mut map = match self.clients.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        map.entry((tls_verify, connect_timeout))
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
                    .build(Connector::new(tls, connect_timeout))
            })
            .clone()
    }
}
