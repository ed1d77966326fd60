//! [`PolicyEnv`]: what the policies of every route share, and what outlives a reload —
//! JWKS caches keyed by URL, the HTTPS client that fetches them, Redis clients keyed by
//! URL, the in-memory rate-limit table and quota counters, and counters for metrics.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::Uri;

use crate::error::PolicyError;
use crate::fetch::HttpFetcher;
use crate::jwks::{JwksCache, JwksTiming};
use crate::rate_limit::memory::MemoryTable;
use crate::rate_limit::quota::MemoryQuotas;
use crate::redis::{RedisClient, RedisUrl};

/// Tunables of a [`PolicyEnv`]. The defaults suit production; tests shorten the intervals.
#[derive(Debug, Clone)]
pub struct PolicyEnvOptions {
    /// Least time between two fetches of one JWKS, whatever asks for it (unknown `kid`,
    /// expiry, failed fetch). Also the shortest lifetime a fetched set gets. Default 30 s.
    pub jwks_refresh_interval: Duration,
    /// Lifetime of a JWKS whose response has no `Cache-Control: max-age`. Default 10 min.
    pub jwks_default_ttl: Duration,
    /// Longest lifetime, whatever `max-age` says. Default 24 h.
    pub jwks_max_ttl: Duration,
    /// Time limit of one JWKS fetch (connect, TLS, request, body). Default 10 s.
    pub jwks_fetch_timeout: Duration,
    /// Time limit of one rate-limit store operation, connecting included. Default 250 ms.
    pub store_timeout: Duration,
    /// Most connections to one Redis store. Default 64.
    pub store_max_connections: usize,
    /// Most keys the in-memory rate-limit table holds (about 40 bytes each); past it, the
    /// entries closest to being forgotten anyway are dropped first. Default 1 Mi.
    pub memory_max_entries: usize,
}

impl Default for PolicyEnvOptions {
    fn default() -> Self {
        PolicyEnvOptions {
            jwks_refresh_interval: Duration::from_secs(30),
            jwks_default_ttl: Duration::from_secs(600),
            jwks_max_ttl: Duration::from_secs(24 * 3600),
            jwks_fetch_timeout: Duration::from_secs(10),
            store_timeout: Duration::from_millis(250),
            store_max_connections: 64,
            memory_max_entries: 1 << 20,
        }
    }
}

/// Counters kept by the policies, for the gateway's metrics.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub jwks_fetches: AtomicU64,
    pub jwks_fetch_errors: AtomicU64,
    pub store_errors: AtomicU64,
}

/// A snapshot of [`PolicyEnv`] counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyStats {
    /// JWKS fetch attempts, successful or not.
    pub jwks_fetches: u64,
    /// JWKS fetches that failed (the previous key set, if any, stayed in use).
    pub jwks_fetch_errors: u64,
    /// Rate-limit decisions the shared store could not make (then `on_store_error` applied).
    pub store_errors: u64,
    /// Keys currently held by the in-memory rate limiter.
    pub memory_limiter_entries: u64,
}

/// State shared by the policies of all routes, across reloads. Create one per gateway
/// (again only if `ca_roots` changes) and pass it to every [`crate::RoutePolicies::build`].
pub struct PolicyEnv {
    pub(crate) options: PolicyEnvOptions,
    fetcher: Arc<HttpFetcher>,
    jwks: Mutex<HashMap<String, Weak<JwksCache>>>,
    stores: Mutex<HashMap<String, Weak<RedisClient>>>,
    pub(crate) memory: MemoryTable,
    pub(crate) quotas: MemoryQuotas,
    pub(crate) stats: Arc<Stats>,
    /// Keys the in-memory tables' hashes, so that clients cannot aim at one shard.
    pub(crate) hasher: RandomState,
}

impl std::fmt::Debug for PolicyEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEnv")
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PolicyEnv {
    /// `ca_roots`: extra trust roots (PEM) for JWKS fetches, besides the system's.
    pub fn new(ca_roots: Option<&Path>) -> Result<Arc<Self>, PolicyError> {
        Self::with_options(ca_roots, PolicyEnvOptions::default())
    }

    pub fn with_options(
        ca_roots: Option<&Path>,
        options: PolicyEnvOptions,
    ) -> Result<Arc<Self>, PolicyError> {
        let fetcher = Arc::new(HttpFetcher::new(ca_roots, options.jwks_fetch_timeout)?);
        Ok(Arc::new(PolicyEnv {
            memory: MemoryTable::new(options.memory_max_entries),
            quotas: MemoryQuotas::default(),
            options,
            fetcher,
            jwks: Mutex::new(HashMap::new()),
            stores: Mutex::new(HashMap::new()),
            stats: Arc::new(Stats::default()),
            hasher: RandomState::new(),
        }))
    }

    pub fn stats(&self) -> PolicyStats {
        PolicyStats {
            jwks_fetches: self.stats.jwks_fetches.load(Ordering::Relaxed),
            jwks_fetch_errors: self.stats.jwks_fetch_errors.load(Ordering::Relaxed),
            store_errors: self.stats.store_errors.load(Ordering::Relaxed),
            memory_limiter_entries: self.memory.len() as u64,
        }
    }

    /// The cache for `uri`, shared with every other route naming it while any holds it.
    pub(crate) fn jwks_cache(&self, uri: Uri) -> Arc<JwksCache> {
        let mut map = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
        let key = uri.to_string();
        if let Some(cache) = map.get(&key).and_then(Weak::upgrade) {
            return cache;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let timing = JwksTiming {
            min_interval: self.options.jwks_refresh_interval,
            default_ttl: self.options.jwks_default_ttl,
            max_ttl: self.options.jwks_max_ttl,
        };
        let cache = Arc::new(JwksCache::new(
            uri,
            self.fetcher.clone(),
            timing,
            self.stats.clone(),
        ));
        map.insert(key, Arc::downgrade(&cache));
        cache
    }

    /// The client for a `redis://` store, shared by every route naming the same URL.
    pub(crate) fn store(&self, url: RedisUrl) -> Arc<RedisClient> {
        let mut map = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let key = url.identity();
        if let Some(client) = map.get(&key).and_then(Weak::upgrade) {
            return client;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let client = Arc::new(RedisClient::new(
            url,
            self.options.store_timeout,
            self.options.store_max_connections,
        ));
        map.insert(key, Arc::downgrade(&client));
        client
    }
}
