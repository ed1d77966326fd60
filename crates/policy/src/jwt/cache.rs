//! Tokens that passed verification on one route, by the token text itself. A hit skips the
//! signature check, which dominates the cost of a JWT route (an RS256 verification takes
//! tens of µs), but never the `exp`/`nbf` checks. The map hashes with the standard library's
//! keyed SipHash (random per process, so tokens cannot be chosen to collide) and a hit
//! compares the whole token: about a third of what a SHA-256 of the token cost, and no
//! reliance on a digest for the match.
//!
//! An entry holds the generation of the JWKS key set that verified it and is used only
//! while that set is current: when the set is refreshed (its lifetime ran out, or an
//! unknown `kid` made the gateway refetch it), every token is verified again once, so a
//! retired key stops being accepted exactly as without the cache. HS* entries have no
//! generation; their secret is fixed for the life of the route's policies (a reload builds
//! new ones, with an empty cache).
//!
//! Only tokens that passed are cached: forged or invalid tokens cannot fill it. Memory is
//! bounded: at most [`CAPACITY`] entries per route, tokens up to [`MAX_TOKEN`] bytes (a
//! token is kept next to its claims, which take about as much again).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};

use super::claims::LEEWAY_SECS;

/// Most tokens remembered per route.
pub(crate) const CAPACITY: usize = 4096;
/// Longer tokens are verified every time (Cognito's are 1–2 KiB).
pub(crate) const MAX_TOKEN: usize = 4096;

struct Entry {
    claims: Arc<Map<String, Value>>,
    generation: Option<u64>,
    /// `exp` (seconds since the epoch), to drop expired entries first.
    exp: f64,
}

pub(crate) struct VerifiedCache {
    entries: RwLock<HashMap<Box<str>, Entry>>,
    capacity: usize,
}

/// Whether a token is short enough to be cached.
pub(crate) fn cacheable(token: &str) -> bool {
    token.len() <= MAX_TOKEN
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            entries: RwLock::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The claims of a token verified under key-set `generation` (`None`: a shared secret).
    pub fn get(&self, token: &str, generation: Option<u64>) -> Option<Arc<Map<String, Value>>> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(token)?;
        (entry.generation == generation).then(|| entry.claims.clone())
    }

    pub fn insert(
        &self,
        token: &str,
        claims: Arc<Map<String, Value>>,
        generation: Option<u64>,
        now: f64,
    ) {
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NEG_INFINITY);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(token) {
            // Expired tokens and tokens of an older key set first; if that frees nothing,
            // start over (the busiest tokens come back at the cost of one verification).
            entries.retain(|_, e| e.exp + LEEWAY_SECS >= now && e.generation == generation);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            token.into(),
            Entry {
                claims,
                generation,
                exp,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: f64) -> Arc<Map<String, Value>> {
        let mut m = Map::new();
        m.insert("exp".into(), serde_json::json!(exp));
        Arc::new(m)
    }

    #[test]
    fn hits_only_under_the_same_key_set() {
        let c = VerifiedCache::new(8);
        let d = "a.b.c";
        c.insert(d, claims(100.0), Some(1), 0.0);
        assert!(c.get(d, Some(1)).is_some());
        assert!(
            c.get(d, Some(2)).is_none(),
            "a refreshed set verifies again"
        );
        assert!(c.get(d, None).is_none());
        assert!(c.get("a.b.d", Some(1)).is_none());
        assert!(!cacheable(&"x".repeat(MAX_TOKEN + 1)));
    }

    #[test]
    fn stays_within_capacity() {
        let c = VerifiedCache::new(4);
        for i in 0..4 {
            c.insert(&format!("t{i}"), claims(10.0), Some(1), 0.0);
        }
        // Past the capacity, expired entries go first.
        c.insert("fresh", claims(1000.0), Some(1), 500.0);
        assert_eq!(c.len(), 1);
        for i in 0..10 {
            c.insert(&format!("u{i}"), claims(1000.0), Some(1), 500.0);
            assert!(c.len() <= 4);
        }
    }
}
