//! A small client-side decrypt cache: ciphertext (and context) → plaintext,
//! bounded in entries and in age. **Off by default**; what it costs in
//! safety (docs/fle.md, "Decrypt cache"):
//!
//! - the plaintext of every cached row sits in the application's memory
//!   for up to the TTL (zeroized when evicted or replaced);
//! - a hit does not reach the sidecar, so the enclave neither authorizes nor
//!   audits that read: a revoked token, a tightened policy or a key whose
//!   `min_decryption_version` was raised keeps answering from the cache
//!   until the entry expires.
//!
//! Entries are keyed by the ciphertext itself, which names its key version,
//! so a row re-encrypted by a write or a rewrap is a new entry and a stale
//! plaintext can never be returned for a newer ciphertext. Time is passed in.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// The most entries and the longest TTL the cache accepts.
pub const MAX_ENTRIES: usize = 1_000_000;
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// A cache setting outside its bounds.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CacheError {
    #[error("decrypt cache size {0} is outside 1..={MAX_ENTRIES}")]
    Size(usize),
    #[error("decrypt cache TTL {0:?} is outside 1 ms..={MAX_TTL:?}")]
    Ttl(Duration),
}

struct Entry {
    context: Option<Vec<u8>>,
    plaintext: Zeroizing<Vec<u8>>,
    inserted: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Insertion order, for eviction (oldest first); may hold keys already
    /// replaced or removed, which eviction skips.
    order: VecDeque<(String, Instant)>,
    hits: u64,
    misses: u64,
}

/// See the module documentation.
pub struct DecryptCache {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl: Duration,
}

impl DecryptCache {
    pub fn new(capacity: usize, ttl: Duration) -> Result<DecryptCache, CacheError> {
        if capacity == 0 || capacity > MAX_ENTRIES {
            return Err(CacheError::Size(capacity));
        }
        if ttl < Duration::from_millis(1) || ttl > MAX_TTL {
            return Err(CacheError::Ttl(ttl));
        }
        Ok(DecryptCache {
            inner: Mutex::new(Inner::default()),
            capacity,
            ttl,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only counters or a map that
        // is still consistent (every mutation is one call); keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached plaintext of `ciphertext` under `context`, if fresh.
    pub fn get(
        &self,
        ciphertext: &str,
        context: Option<&[u8]>,
        now: Instant,
    ) -> Option<Zeroizing<Vec<u8>>> {
        let mut g = self.lock();
        let fresh = g.map.get(ciphertext).and_then(|e| {
            (e.context.as_deref() == context
                && now.saturating_duration_since(e.inserted) < self.ttl)
                .then(|| e.plaintext.clone())
        });
        match fresh {
            Some(p) => {
                g.hits += 1;
                Some(p)
            }
            None => {
                g.misses += 1;
                None
            }
        }
    }

    /// Remembers a plaintext the sidecar returned (or that was just encrypted).
    pub fn insert(&self, ciphertext: &str, context: Option<&[u8]>, plaintext: &[u8], now: Instant) {
        let mut g = self.lock();
        let g = &mut *g;
        // Expired entries first, then the oldest while full.
        while let Some((k, at)) = g.order.front() {
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            if !expired && g.map.len() < self.capacity {
                break;
            }
            let (k, at) = (k.clone(), *at);
            g.order.pop_front();
            if g.map.get(&k).is_some_and(|e| e.inserted == at) {
                g.map.remove(&k);
            }
        }
        g.map.insert(
            ciphertext.to_owned(),
            Entry {
                context: context.map(<[u8]>::to_vec),
                plaintext: Zeroizing::new(plaintext.to_vec()),
                inserted: now,
            },
        );
        g.order.push_back((ciphertext.to_owned(), now));
        // Replaced keys leave stale order entries; keep the queue bounded.
        if g.order.len() > 2 * self.capacity {
            let map = &g.map;
            g.order
                .retain(|(k, at)| map.get(k).is_some_and(|e| e.inserted == *at));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (hits, misses) since creation.
    pub fn stats(&self) -> (u64, u64) {
        let g = self.lock();
        (g.hits, g.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(n: usize, ttl_ms: u64) -> DecryptCache {
        DecryptCache::new(n, Duration::from_millis(ttl_ms)).unwrap()
    }

    #[test]
    fn bounds_are_enforced() {
        assert_eq!(
            DecryptCache::new(0, Duration::from_secs(1)).err(),
            Some(CacheError::Size(0))
        );
        assert!(DecryptCache::new(MAX_ENTRIES + 1, Duration::from_secs(1)).is_err());
        assert!(DecryptCache::new(10, Duration::ZERO).is_err());
        assert!(DecryptCache::new(10, MAX_TTL + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn hit_needs_same_context_and_a_fresh_entry() {
        let c = cache(10, 1000);
        let t0 = Instant::now();
        c.insert("vault:v1:a", Some(b"u1"), b"alice@example.com", t0);
        assert_eq!(
            c.get("vault:v1:a", Some(b"u1"), t0)
                .as_deref()
                .map(Vec::as_slice),
            Some(&b"alice@example.com"[..])
        );
        // Another context, no context, another ciphertext: misses.
        assert!(c.get("vault:v1:a", Some(b"u2"), t0).is_none());
        assert!(c.get("vault:v1:a", None, t0).is_none());
        assert!(c.get("vault:v2:a", Some(b"u1"), t0).is_none());
        // Expired at exactly the TTL.
        assert!(c
            .get("vault:v1:a", Some(b"u1"), t0 + Duration::from_millis(1000))
            .is_none());
        assert_eq!(c.stats(), (1, 4));
    }

    #[test]
    fn size_is_bounded_oldest_evicted_first() {
        let c = cache(3, 60_000);
        let t0 = Instant::now();
        for i in 0..10u64 {
            c.insert(
                &format!("vault:v1:{i}"),
                None,
                b"x",
                t0 + Duration::from_millis(i),
            );
            assert!(c.len() <= 3);
        }
        let now = t0 + Duration::from_millis(20);
        assert!(c.get("vault:v1:6", None, now).is_none());
        for i in 7..10 {
            assert!(c.get(&format!("vault:v1:{i}"), None, now).is_some());
        }
    }

    #[test]
    fn replacing_a_key_keeps_the_queue_bounded_and_the_new_value() {
        let c = cache(2, 60_000);
        let t0 = Instant::now();
        for i in 0..1000u64 {
            c.insert(
                "vault:v1:k",
                None,
                &i.to_be_bytes(),
                t0 + Duration::from_micros(i),
            );
        }
        assert_eq!(c.len(), 1);
        assert!(c.lock().order.len() <= 4);
        let got = c
            .get("vault:v1:k", None, t0 + Duration::from_millis(2))
            .unwrap();
        assert_eq!(got.as_slice(), &999u64.to_be_bytes());
    }

    #[test]
    fn expired_entries_are_dropped_on_insert() {
        let c = cache(100, 10);
        let t0 = Instant::now();
        for i in 0..50 {
            c.insert(&format!("vault:v1:{i}"), None, b"x", t0);
        }
        c.insert("vault:v1:new", None, b"y", t0 + Duration::from_millis(11));
        assert_eq!(c.len(), 1);
    }
}
