//! Random-nonce budgets: the limits, per-version usage for the metrics, and
//! taking nonces from the reservation in memory, reserving more in the
//! stored keyring (and rotating) when it runs out.

use std::sync::Arc;

use pii_engine::keyring::{Key, NonceLimits};

use super::{key_or_not_found, lock, Change, Engine, MAX_CAS_ATTEMPTS};
use crate::error::{Error, Result};
use crate::store::BlobStore;

impl Engine {
    /// Replace the random-nonce limits (tests shrink them).
    pub fn set_nonce_limits(&self, l: NonceLimits) {
        *lock(&self.nonce_limits) = l;
    }

    pub(crate) fn nonce_limits(&self) -> NonceLimits {
        *lock(&self.nonce_limits)
    }

    /// Random nonces a new key reserves in the write that creates it.
    pub fn first_nonces(&self, convergent: bool) -> u64 {
        if convergent {
            0
        } else {
            self.nonce_limits().block
        }
    }

    /// Random-nonce encryptions counted per key version, for the metrics:
    /// `(key, version, count)`.
    pub fn nonce_usage(&self) -> Vec<(String, u32, u64)> {
        let Ok(kr) = self.current() else {
            return vec![];
        };
        kr.keys
            .iter()
            .filter(|(_, k)| !k.doc.convergent)
            .flat_map(|(n, k)| {
                k.doc
                    .versions
                    .keys()
                    .filter_map(move |v| k.version(*v).map(|vk| (n.clone(), *v, vk.budget.used())))
            })
            .collect()
    }

    /// Take `n` random nonces for `version` of key `name` (the latest when
    /// `None`), reserving more in the stored keyring when the reservation in
    /// memory runs out, and rotating when the latest version has reserved
    /// [`NonceLimits::rotate_at`]. Returns the key to encrypt with: after a
    /// rotation its latest version is the new one.
    pub async fn take_nonces(
        &self,
        store: &dyn BlobStore,
        name: &str,
        mut key: Arc<Key>,
        version: Option<u32>,
        n: u64,
    ) -> Result<Arc<Key>> {
        if key.doc.convergent || n == 0 {
            return Ok(key);
        }
        for _ in 0..MAX_CAS_ATTEMPTS {
            let v = version.unwrap_or(key.doc.latest_version);
            let vk = key
                .version(v)
                .ok_or_else(|| Error::bad("no such key version"))?;
            if vk.budget.take(n) {
                return Ok(key);
            }
            key = self.reserve_nonces(store, name, version, n).await?;
        }
        Err(Error::new(503, "could not reserve nonces; retry"))
    }

    async fn reserve_nonces(
        &self,
        store: &dyn BlobStore,
        name: &str,
        version: Option<u32>,
        n: u64,
    ) -> Result<Arc<Key>> {
        let lim = self.nonce_limits();
        let t = self.now();
        let done = self
            .mutate(store, |kr| {
                let k = key_or_not_found(kr, name)?;
                let mut v = version.unwrap_or(k.doc.latest_version);
                let vk = k
                    .version(v)
                    .ok_or_else(|| Error::bad("no such key version"))?;
                if vk.budget.remaining() >= n {
                    return Ok(Change::Unchanged((k, None)));
                }
                let want = n.max(lim.block);
                let mut doc = k.doc.clone();
                let reserved = doc.versions.get(&v).map_or(0, |d| d.random_nonces);
                if version.is_none() && reserved.saturating_add(want) > lim.rotate_at {
                    doc.rotate(t)?;
                    v = doc.latest_version;
                    tracing::warn!(
                        key = name,
                        version = v,
                        "rotated: the previous version has used half of its random-nonce budget"
                    );
                }
                let vd = doc
                    .versions
                    .get_mut(&v)
                    .ok_or_else(|| Error::bad("no such key version"))?;
                let next = vd.random_nonces.saturating_add(want);
                if next > lim.limit {
                    return Err(Error::bad(format!(
                        "key version {v} has used its budget of {} random nonces; \
                     encrypt with a newer version (rotate the key)",
                        lim.limit
                    )));
                }
                let from = vd.random_nonces;
                vd.random_nonces = next;
                let key = Arc::new(k.successor(doc)?);
                Ok(Change::Changed(
                    kr.with_key(name, Some(key.clone())),
                    (key, Some((v, from, next))),
                ))
            })
            .await?;
        // Only now, with the reservation stored, may it be used.
        let (key, reserved) = done;
        if let Some((v, from, to)) = reserved {
            if let Some(vk) = key.version(v) {
                vk.budget.advance(from, to);
            }
        }
        Ok(key)
    }
}
