//! The keyring's life cycle: the keyring in memory, loading it from the
//! store, mutating it with compare-and-swap, and the freshness, lineage and
//! rollback-anchor checks every adopted blob passes.

use std::future::Future;
use std::sync::Arc;

use pii_custody::seal::{
    blob_hash, open_blob, seal_blob_at, unseal_blob, Advance, Head, Lineage, SealError,
};
use pii_engine::keyring::Keyring;
use pii_proto::SealedBlob;
use zeroize::Zeroizing;

use super::{lock, Change, Engine, MAX_CAS_ATTEMPTS};
use crate::error::{Error, Result};
use crate::store::{BlobStore, StoreOutcome};

impl Engine {
    /// The keyring, or 503 while sealed or stale.
    pub fn current(&self) -> Result<Arc<Keyring>> {
        if self.stale().is_some() {
            return Err(Error::new(
                503,
                "this enclave's keyring is behind the anchored one; refusing to serve until it loads the newest",
            ));
        }
        self.keyring.load_full().ok_or_else(Error::sealed)
    }

    /// Why the enclave refuses to serve as a stale replica, if it does.
    pub fn stale(&self) -> Option<String> {
        lock(&self.stale).clone()
    }

    /// Set how often [`Engine::check_fresh_if_due`] runs (0: every call).
    pub fn set_fresh_check_secs(&self, secs: i64) {
        self.fresh_every
            .store(secs.max(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// Every [`FRESH_CHECK_SECS`](super::FRESH_CHECK_SECS) (at `now`, Unix
    /// seconds): compare the keyring in memory with the anchor's head; if the
    /// anchor is ahead, load the newest from the store, and if the store does
    /// not provide it, stop serving (a host could otherwise keep a second
    /// replica on an old keyring by never telling it about changes).
    pub async fn check_fresh_if_due(&self, store: &dyn BlobStore, now: i64) {
        use std::sync::atomic::Ordering;
        let Some(anchor) = self.seal.anchor() else {
            return;
        };
        let due = self.fresh_due.load(Ordering::Relaxed);
        if now < due || !self.is_unsealed() {
            return;
        }
        let every = self.fresh_every.load(Ordering::Relaxed);
        if self
            .fresh_due
            .compare_exchange(due, now + every, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // another request is checking
        }
        let Ok(rec) = self.anchor_call(anchor.read()).await else {
            return; // reported as anchor_unreachable
        };
        let mine = self
            .head()
            .map(|(generation, hash)| Head { generation, hash });
        if rec == mine {
            *lock(&self.stale) = None;
            return;
        }
        if let Err(e) = self.load_inner(store, true).await {
            tracing::warn!(error = %e, "loading the anchored keyring failed");
        }
        let mine = self
            .head()
            .map(|(generation, hash)| Head { generation, hash });
        let mut g = lock(&self.stale);
        if mine == rec {
            *g = None;
        } else {
            let why = format!(
                "the rollback anchor ({}) records keyring generation {}; this enclave holds {} and the store did not provide the newer one",
                anchor.describe(),
                rec.map(|r| r.generation.to_string()).unwrap_or_else(|| "none".into()),
                mine.map(|m| m.generation.to_string()).unwrap_or_else(|| "none".into()),
            );
            tracing::error!(reason = %why, "SECURITY: stale keyring; refusing to serve");
            *g = Some(why);
        }
    }

    pub fn is_unsealed(&self) -> bool {
        self.keyring.load().is_some()
    }

    pub fn store_version(&self) -> u64 {
        self.keyring
            .load()
            .as_ref()
            .map(|k| k.store_version)
            .unwrap_or(0)
    }

    /// Why the store's last answer was refused as a rollback or fork, if it was.
    pub fn rollback_detected(&self) -> Option<String> {
        lock(&self.rollback).clone()
    }

    fn head(&self) -> Option<(u64, [u8; 32])> {
        *lock(&self.head)
    }

    /// Why the rollback anchor last failed, if its last call failed.
    pub fn anchor_error(&self) -> Option<String> {
        lock(&self.anchor_error).clone()
    }

    /// Record a refused rollback or fork and the error to answer with.
    fn rollback(&self, why: String) -> Error {
        tracing::error!(reason = %why, "SECURITY: refusing keyring rollback");
        *lock(&self.rollback) = Some(why);
        Error::new(
            503,
            "rollback detected: the keyring store returned an older or forked keyring",
        )
    }

    /// Refuse a blob that would take the keyring back or sideways.
    fn check_lineage(&self, l: &Lineage, hash: &[u8; 32]) -> Result<()> {
        let Some((gen, head)) = self.head() else {
            return Ok(());
        };
        let why = if l.generation < gen {
            format!(
                "the store returned keyring generation {}, older than generation {gen} already seen",
                l.generation
            )
        } else if l.generation == gen && *hash != head {
            format!("the store returned a different keyring for generation {gen}")
        } else if gen.checked_add(1) == Some(l.generation) && l.prev != head {
            format!(
                "keyring generation {} does not follow the generation {gen} in memory (forked history)",
                l.generation
            )
        } else {
            return Ok(());
        };
        Err(self.rollback(why))
    }

    /// One call to the anchor; failures are reported in health and refuse
    /// the operation (nothing is adopted without the anchor's word).
    async fn anchor_call<T>(
        &self,
        f: impl Future<Output = std::result::Result<T, SealError>>,
    ) -> Result<T> {
        let r = f.await;
        let mut g = lock(&self.anchor_error);
        match r {
            Ok(v) => {
                *g = None;
                Ok(v)
            }
            Err(e) => {
                tracing::warn!(error = %e, "rollback anchor unreachable");
                *g = Some(e.to_string());
                Err(Error::new(503, "rollback anchor unreachable"))
            }
        }
    }

    /// A blob is adopted only if the anchor records it, or records its
    /// direct predecessor (a writer stopped between storing and anchoring;
    /// the blob is then anchored here). Anything else is a rollback.
    async fn check_anchor(&self, l: &Lineage, hash: [u8; 32]) -> Result<()> {
        let Some(anchor) = self.seal.anchor() else {
            return Ok(());
        };
        let head = Head {
            generation: l.generation,
            hash,
        };
        for _ in 0..3 {
            let rec = self.anchor_call(anchor.read()).await?;
            let expected = match rec {
                Some(r) if r == head => return Ok(()),
                Some(r) if r.generation.checked_add(1) == Some(head.generation) && l.prev == r.hash => {
                    Some(r)
                }
                // No record: only the very first keyring (generation 1,
                // no predecessor) may be anchored. Any later blob with no
                // record means the anchor was lost or moved, and the host
                // could have picked any historic blob.
                None if head.generation == 1 && l.prev == [0u8; 32] && !anchor.expects_record() => {
                    None
                }
                None => {
                    return Err(self.rollback(format!(
                        "the rollback anchor ({}) has no record, but the store returned generation {}: \
                         only a new deployment's first keyring is anchored without one",
                        anchor.describe(),
                        head.generation
                    )))
                }
                Some(r) => {
                    return Err(self.rollback(format!(
                        "the rollback anchor ({}) records keyring generation {}; the store returned generation {}{}",
                        anchor.describe(),
                        r.generation,
                        head.generation,
                        if r.generation == head.generation { " with other bytes" } else { "" }
                    )))
                }
            };
            match self.anchor_call(anchor.advance(expected, head)).await? {
                Advance::Done => return Ok(()),
                Advance::Conflict(_) => continue,
            }
        }
        Err(Error::new(503, "the rollback anchor keeps changing; retry"))
    }

    fn install(&self, kr: Keyring, head: Option<(u64, [u8; 32])>) {
        if let Some(h) = head {
            *lock(&self.head) = Some(h);
            // Every installed blob passed the anchor check (open, mutate).
            if self.seal.anchor().is_some() {
                *lock(&self.stale) = None;
            }
        }
        self.keyring.store(Some(Arc::new(kr)));
    }

    /// Open, authenticate and check a stored blob: the keyring and its head.
    async fn open(&self, blob: &SealedBlob) -> Result<(Keyring, (u64, [u8; 32]))> {
        let opened = open_blob(self.seal.as_ref(), &blob.bytes).await;
        self.note_seal(&opened);
        let opened = opened.map_err(|e| {
            tracing::error!(error = %e, version = blob.version, "cannot unseal keyring");
            Error::sealed()
        })?;
        let kr = Keyring::from_cbor(&opened.plaintext, blob.version)?;
        if kr.generation != opened.lineage.generation {
            tracing::error!("SECURITY: keyring generation differs from its blob's lineage");
            return Err(Error::sealed());
        }
        let hash = blob_hash(&blob.bytes);
        self.check_lineage(&opened.lineage, &hash)?;
        self.check_anchor(&opened.lineage, hash).await?;
        Ok((kr, (opened.lineage.generation, hash)))
    }

    /// Load the newest blob from the store (or start empty if there is none).
    pub async fn load(&self, store: &dyn BlobStore) -> Result<()> {
        self.load_inner(store, false).await
    }

    /// As [`Engine::load`]; `force` opens the store's newest blob even if its
    /// store version is not above the one in memory (the host picks those).
    async fn load_inner(&self, store: &dyn BlobStore, force: bool) -> Result<()> {
        let _w = self.write.lock().await;
        match store
            .load()
            .await
            .map_err(|e| Error::new(503, e.to_string()))?
        {
            None => {
                if self.keyring.load().is_none() {
                    if let Some(anchor) = self.seal.anchor() {
                        let rec = self.anchor_call(anchor.read()).await?;
                        if rec.is_none() && anchor.expects_record() {
                            return Err(self.rollback(format!(
                                "the store holds no keyring and the rollback anchor ({}) no record, \
                                 but the config says one exists",
                                anchor.describe()
                            )));
                        }
                        if let Some(r) = rec {
                            return Err(self.rollback(format!(
                                "the store holds no keyring, but the rollback anchor ({}) records generation {}",
                                anchor.describe(),
                                r.generation
                            )));
                        }
                    }
                    tracing::info!("no keyring stored yet; starting with an empty one");
                    self.install(Keyring::default(), None);
                }
            }
            Some(blob) => {
                if !force && blob.version <= self.store_version() && self.is_unsealed() {
                    return Ok(());
                }
                let (mut kr, head) = self.open(&blob).await?;
                if let Some(old) = self.keyring.load_full() {
                    kr.keep_nonce_budgets(&old);
                }
                tracing::info!(
                    version = blob.version,
                    generation = kr.generation,
                    keys = kr.keys.len(),
                    "keyring loaded"
                );
                self.install(kr, Some(head));
            }
        }
        Ok(())
    }

    /// Apply `f` to the keyring and persist the result with compare-and-swap.
    /// The change is visible (and acknowledged) only once the host stored it.
    pub async fn mutate<R>(
        &self,
        store: &dyn BlobStore,
        f: impl Fn(&Keyring) -> Result<Change<R>>,
    ) -> Result<R> {
        let _w = self.write.lock().await;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let cur = self.current()?;
            let (mut next, r) = match f(&cur)? {
                Change::Unchanged(r) => return Ok(r),
                Change::Changed(k, r) => (k, r),
            };
            let pt: Zeroizing<Vec<u8>> = next.to_cbor()?;
            let lineage = Lineage {
                generation: next.generation,
                prev: self.head().map(|(_, h)| h).unwrap_or_default(),
            };
            let blob = seal_blob_at(self.seal.as_ref(), &pt, lineage).await;
            self.note_seal(&blob);
            let blob = blob.map_err(|e| {
                tracing::error!(error = %e, "sealing the keyring failed");
                Error::new(503, "seal backend unavailable")
            })?;
            // Two-phase: the new blob must unseal to exactly this keyring
            // before it may replace the stored one, so no seal fault (a KEK
            // that cannot decrypt, a truncated answer) can lose the keyring.
            let check = unseal_blob(self.seal.as_ref(), &blob).await;
            self.note_seal(&check);
            match check {
                Ok(back) if back.as_slice() == pt.as_slice() => {}
                Ok(_) => {
                    tracing::error!("sealed keyring does not round-trip; not storing it");
                    return Err(Error::new(
                        503,
                        "seal backend returned an inconsistent blob",
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %e, "new sealed keyring does not unseal; not storing it");
                    return Err(Error::new(503, "seal backend unavailable"));
                }
            }
            let hash = blob_hash(&blob);
            match store.store(cur.store_version, blob).await {
                Ok(StoreOutcome::Stored(v)) => {
                    // Acknowledged only once anchored. If this fails, the
                    // stored blob is the anchor's direct successor and the
                    // next load anchors it (check_anchor).
                    if let Some(anchor) = self.seal.anchor() {
                        let expected = self
                            .head()
                            .map(|(generation, hash)| Head { generation, hash });
                        let next_head = Head {
                            generation: lineage.generation,
                            hash,
                        };
                        match self
                            .anchor_call(anchor.advance(expected, next_head))
                            .await?
                        {
                            Advance::Done => {}
                            // A replica's load anchored this very blob first.
                            Advance::Conflict(Some(c)) if c == next_head => {}
                            Advance::Conflict(_) => {
                                return Err(Error::new(
                                    503,
                                    "the rollback anchor moved (another writer?); retry",
                                ))
                            }
                        }
                    }
                    next.store_version = v;
                    self.install(next, Some((lineage.generation, hash)));
                    return Ok(r);
                }
                Ok(StoreOutcome::Conflict(newer)) => {
                    if blob_hash(&newer.bytes) == hash {
                        // Our own blob returned as "someone else's": the
                        // store is lying about whether it stored it. Neither
                        // acknowledge the change nor apply it twice.
                        tracing::error!(
                            "SECURITY: the store answered a conflict with the blob just written"
                        );
                        return Err(Error::new(503, "keyring store answered inconsistently"));
                    }
                    tracing::info!(
                        version = newer.version,
                        "keyring changed elsewhere; reloading and retrying"
                    );
                    let (mut kr, head) = self.open(&newer).await?;
                    kr.keep_nonce_budgets(&cur);
                    self.install(kr, Some(head));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "keyring store unavailable; change not applied");
                    return Err(Error::new(503, "keyring store unavailable"));
                }
            }
        }
        Err(Error::new(503, "keyring is changing too fast; retry"))
    }
}
