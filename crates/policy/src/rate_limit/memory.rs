//! The in-memory GCRA table: 64 mutex-guarded shards of `key hash → TAT`, 16 bytes of
//! payload per key. Memory stays bounded under millions of distinct keys: when a shard is
//! full, entries whose TAT has passed are dropped (forgetting them changes no decision),
//! and if that is not enough, the entries whose TAT is nearest are dropped until the shard
//! is 7/8 full — those are the keys closest to being forgotten anyway.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::time::Instant;

use super::gcra::{self, Rate, Verdict};

const SHARDS: usize = 64;

/// Keys are already keyed SipHash outputs; this only spreads their bits for hashbrown
/// (whose bucket index uses the low bits and whose tags use the top seven).
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Shard = HashMap<u64, u64, BuildHasherDefault<MixHasher>>;

pub(crate) struct MemoryTable {
    shards: Box<[Mutex<Shard>]>,
    shard_cap: usize,
    epoch: Instant,
}

impl MemoryTable {
    pub fn new(max_entries: usize) -> MemoryTable {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect();
        MemoryTable {
            shards,
            shard_cap: (max_entries / SHARDS).max(8),
            epoch: Instant::now(),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// One GCRA step for `key` (a keyed hash of namespace and key).
    pub fn check(&self, key: u64, rate: &Rate) -> Verdict {
        let now = self.now_ns();
        // The top bits pick the shard; the multiply in MixHasher mixes them back in.
        let index = (key >> 58) as usize % SHARDS;
        let mut shard = self.shards[index].lock().unwrap_or_else(|p| p.into_inner());
        let (verdict, new_tat) = gcra::step(shard.get(&key).copied(), now, rate);
        if let Some(tat) = new_tat {
            if !shard.contains_key(&key) && shard.len() >= self.shard_cap {
                evict(&mut shard, now, self.shard_cap);
            }
            shard.insert(key, tat);
        }
        verdict
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// The most keys the table will hold.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.shard_cap * SHARDS
    }
}

fn evict(shard: &mut Shard, now: u64, cap: usize) {
    shard.retain(|_, tat| *tat > now);
    let target = cap - cap / 8;
    if shard.len() <= target {
        return;
    }
    let mut tats: Vec<u64> = shard.values().copied().collect();
    let drop = tats.len() - target;
    let (_, threshold, _) = tats.select_nth_unstable(drop - 1);
    let threshold = *threshold;
    shard.retain(|_, tat| *tat > threshold);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;
    use std::time::Duration;

    #[test]
    fn a_million_keys_stay_bounded() {
        let table = MemoryTable::new(64 * 1024);
        let hasher = std::collections::hash_map::RandomState::new();
        // One request per hour each: every entry stays "active" for an hour, so only the
        // capacity bound can keep the table small.
        let rate = Rate::new(1, Duration::from_secs(3600), Some(1)).unwrap();
        for i in 0..1_000_000u64 {
            let v = table.check(hasher.hash_one(i), &rate);
            assert!(v.allowed);
        }
        let len = table.len();
        assert!(len <= table.capacity(), "{len} > {}", table.capacity());
        assert!(len >= table.capacity() / 2, "evicted far too much: {len}");
        // The most recent keys are still limited.
        let v = table.check(hasher.hash_one(999_999u64), &rate);
        assert!(!v.allowed);
    }

    #[test]
    fn expired_entries_are_dropped_first() {
        let mut shard = Shard::default();
        for k in 0..100u64 {
            shard.insert(k, if k < 50 { 10 } else { 1_000 });
        }
        evict(&mut shard, 500, 100);
        assert_eq!(shard.len(), 50);
        assert!(shard.values().all(|t| *t == 1_000));
        // Still over 7/8 of a cap of 40: the nearest TATs go.
        for k in 0..50u64 {
            shard.insert(k + 1_000, 2_000 + k);
        }
        evict(&mut shard, 500, 40);
        assert_eq!(shard.len(), 35);
        assert!(shard.values().all(|t| *t >= 2_015));
    }
}
