//! The enclave's running state: the keyring in memory (or none: sealed), its
//! life cycle (load, mutate with compare-and-swap, reload, rollback checks),
//! nonce budgets, encode allowances and the audit log.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use pii_custody::seal::{
    blob_hash, open_blob, seal_blob_at, unseal_blob, Advance, Head, Lineage, Seal, SealError,
};
use pii_engine::clock::{Clock, SystemClock};
use pii_engine::keyring::{Key, Keyring, NonceLimits};
use pii_proto::SealedBlob;
use zeroize::Zeroizing;

use crate::error::{vault, Error, Result};
use crate::store::{BlobStore, StoreOutcome};

/// Result of a mutation closure.
pub enum Change<R> {
    Unchanged(R),
    Changed(Keyring, R),
}

/// The engine: the keyring in memory (or none: sealed) and its writer.
pub struct Engine {
    keyring: ArcSwapOption<Keyring>,
    write: tokio::sync::Mutex<()>,
    seal: Arc<dyn Seal>,
    /// Generation and SHA-256 of the newest blob accepted: an older
    /// generation, the same generation with other bytes, or a successor that
    /// names another predecessor are refused (rollback and forks).
    head: std::sync::Mutex<Option<(u64, [u8; 32])>>,
    /// Why the store's answer was last refused as a rollback or fork.
    rollback: std::sync::Mutex<Option<String>>,
    /// The rollback anchor's last failure, cleared by the next success.
    anchor_error: std::sync::Mutex<Option<String>>,
    /// Why this enclave stopped serving: the anchor records a newer keyring
    /// than it holds and the store did not provide it (a stale replica).
    stale: std::sync::Mutex<Option<String>>,
    /// Unix seconds of the next freshness check, and the interval.
    fresh_due: std::sync::atomic::AtomicI64,
    fresh_every: std::sync::atomic::AtomicI64,
    audit: crate::audit::AuditLog,
    /// The seal backend's last failure, cleared by the next success.
    seal_error: std::sync::Mutex<Option<String>>,
    nonce_limits: std::sync::Mutex<NonceLimits>,
    clock: Arc<dyn Clock>,
    /// Encode allowances on low-entropy roles, per (role, token).
    encodes: std::sync::Mutex<std::collections::HashMap<(String, String), Allowance>>,
}

/// A token bucket refilled continuously at `per_minute`. A new one (and so
/// every one after a restart) starts empty: restarting the enclave grants no
/// burst.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    left: f64,
    at: Duration,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("seal", &self.seal.id())
            .finish_non_exhaustive()
    }
}

/// How often a compare-and-swap write is retried before giving up.
pub const MAX_CAS_ATTEMPTS: usize = 8;

/// A std mutex's guard; a poisoned lock still holds consistent state here
/// (every critical section is a plain assignment or clone).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
/// How often a serving enclave compares its keyring with the anchor's.
pub const FRESH_CHECK_SECS: i64 = 30;

/// The key `name`, or Vault's "encryption key not found".
pub fn key_or_not_found(kr: &Keyring, name: &str) -> Result<Arc<Key>> {
    kr.keys
        .get(name)
        .cloned()
        .ok_or_else(|| Error::key_not_found(vault::ENCRYPTION_KEY_NOT_FOUND))
}

impl Engine {
    /// An engine on the system clock.
    pub fn new(seal: Arc<dyn Seal>) -> Engine {
        Engine::with_clock(seal, Arc::new(SystemClock))
    }

    /// An engine on `clock` (tests pass a `ManualClock`).
    pub fn with_clock(seal: Arc<dyn Seal>, clock: Arc<dyn Clock>) -> Engine {
        Engine {
            clock: clock.clone(),
            keyring: ArcSwapOption::empty(),
            write: tokio::sync::Mutex::new(()),
            seal,
            head: std::sync::Mutex::new(None),
            rollback: std::sync::Mutex::new(None),
            anchor_error: std::sync::Mutex::new(None),
            stale: std::sync::Mutex::new(None),
            fresh_due: std::sync::atomic::AtomicI64::new(0),
            fresh_every: std::sync::atomic::AtomicI64::new(FRESH_CHECK_SECS),
            audit: crate::audit::AuditLog::new(clock.clone()),
            seal_error: std::sync::Mutex::new(None),
            nonce_limits: std::sync::Mutex::new(NonceLimits::default()),
            encodes: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Take `n` encodes on a low-entropy `role` for `caller` (a token id);
    /// false when its allowance does not hold that many.
    pub fn take_encodes(&self, role: &str, caller: &str, per_minute: u32, n: u32) -> bool {
        let now = self.clock.monotonic();
        let rate = f64::from(per_minute) / 60.0;
        let cap = f64::from(per_minute);
        let mut g = lock(&self.encodes);
        if g.len() > 100_000 {
            // Bounded memory; dropping buckets only ever makes them empty.
            g.clear();
        }
        let a = g
            .entry((role.to_owned(), caller.to_owned()))
            .or_insert(Allowance { left: 0.0, at: now });
        a.left = (a.left + now.saturating_sub(a.at).as_secs_f64() * rate).min(cap);
        a.at = now;
        if a.left >= f64::from(n) {
            a.left -= f64::from(n);
            true
        } else {
            false
        }
    }

    /// The time, in Unix seconds, on this engine's clock.
    pub fn now(&self) -> i64 {
        self.clock.unix()
    }

    /// This engine's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

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

    /// Why the seal backend last failed, if its last call failed.
    pub fn seal_error(&self) -> Option<String> {
        lock(&self.seal_error).clone()
    }

    fn note_seal<T>(&self, r: &std::result::Result<T, SealError>) {
        let mut g = lock(&self.seal_error);
        match r {
            Ok(_) => *g = None,
            Err(SealError::Unreachable(m)) => *g = Some(m.clone()),
            Err(_) => {}
        }
    }

    /// The audit signing key, created (and stored in the keyring) on first use.
    pub async fn audit_key(
        &self,
        store: &dyn BlobStore,
    ) -> Result<Arc<aws_lc_rs::signature::Ed25519KeyPair>> {
        if let Some(k) = self.current()?.audit_key.clone() {
            return Ok(k);
        }
        self.mutate(store, |kr| match &kr.audit_key {
            Some(k) => Ok(Change::Unchanged(k.clone())),
            None => {
                let next = kr.with_audit_key(pii_engine::audit_key::generate()?)?;
                let k = next
                    .audit_key
                    .clone()
                    .ok_or_else(|| Error::internal("audit key missing"))?;
                Ok(Change::Changed(next, k))
            }
        })
        .await
    }

    /// Record `event` durably in the audit log (fail closed); the record's
    /// signed checkpoint is the answer's receipt.
    pub async fn audit(
        &self,
        store: &dyn BlobStore,
        event: pii_proto::audit::AuditEvent,
    ) -> Result<pii_proto::audit::SignedCheckpoint> {
        let key = self.audit_key(store).await?;
        self.audit
            .append(store, self.seal.anchor(), &key, event)
            .await
    }

    /// 0 (default): an audit checkpoint reaches the anchor before every
    /// decrypt/decode answer; N: at most every N seconds.
    pub fn set_audit_checkpoint_secs(&self, secs: u64) {
        self.audit.set_checkpoint_secs(secs);
    }

    pub fn seal_id(&self) -> &str {
        self.seal.id()
    }

    /// Hand the seal a credential decrypted inside the enclave (see
    /// [`Seal::provide_credential`]).
    pub async fn provide_seal_credential(
        &self,
        secret: Zeroizing<Vec<u8>>,
    ) -> std::result::Result<(), SealError> {
        self.seal.provide_credential(secret).await
    }

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

    /// Every [`FRESH_CHECK_SECS`] (at `now`, Unix seconds): compare the
    /// keyring in memory with the anchor's head; if the anchor is ahead, load
    /// the newest from the store, and if the store does not provide it, stop
    /// serving (a host could otherwise keep a second replica on an old
    /// keyring by never telling it about changes).
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

impl Engine {
    /// Rotate every key whose `auto_rotate_period` has elapsed since its
    /// newest version was created (Vault's rule). Returns the rotated names.
    pub async fn rotate_due(&self, store: &dyn BlobStore, now: i64) -> Result<Vec<String>> {
        let block = self.nonce_limits().block;
        let due = |kr: &Keyring| -> Vec<String> {
            kr.keys
                .values()
                .filter(|k| {
                    let p = k.doc.auto_rotate_period;
                    let created = k
                        .doc
                        .versions
                        .get(&k.doc.latest_version)
                        .map(|v| v.created)
                        .unwrap_or(0);
                    p > 0 && now.saturating_sub(created) >= p as i64
                })
                .map(|k| k.doc.name.clone())
                .collect()
        };
        if due(&*self.current()?).is_empty() {
            return Ok(vec![]);
        }
        self.mutate(store, |kr| {
            let names = due(kr);
            if names.is_empty() {
                return Ok(Change::Unchanged(names));
            }
            let mut next = kr.next_generation();
            for n in &names {
                if let Some(k) = kr.keys.get(n) {
                    let mut doc = k.doc.clone();
                    doc.rotate(now)?;
                    if !doc.convergent {
                        doc.reserve_latest(block);
                    }
                    next.keys.insert(n.clone(), Arc::new(k.successor(doc)?));
                }
            }
            Ok(Change::Changed(next, names))
        })
        .await
    }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use pii_engine::keyring::{KeyDoc, KeyType};

    #[tokio::test]
    async fn auto_rotation_when_due() {
        let engine = Engine::new(Arc::new(
            pii_custody::seal::DangerousDevSeal::from_passphrase("t"),
        ));
        let store = MemoryStore::default();
        engine.load(&store).await.unwrap();
        engine
            .mutate(&store, |kr| {
                let mut doc = KeyDoc::new("auto", KeyType::Aes256Gcm96, false, false, 1000)?;
                doc.auto_rotate_period = 3600;
                let still = KeyDoc::new("still", KeyType::Aes256Gcm96, false, false, 1000)?;
                let next = kr
                    .with_key("auto", Some(Arc::new(Key::from_doc(doc)?)))
                    .with_key("still", Some(Arc::new(Key::from_doc(still)?)));
                Ok(Change::Changed(next, ()))
            })
            .await
            .unwrap();
        assert!(engine
            .rotate_due(&store, 1000 + 3599)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            engine.rotate_due(&store, 1000 + 3600).await.unwrap(),
            vec!["auto".to_string()]
        );
        let kr = engine.current().unwrap();
        assert_eq!(kr.keys["auto"].doc.latest_version, 2);
        assert_eq!(kr.keys["still"].doc.latest_version, 1);
        // The rotation was persisted: a fresh engine loads it from the store.
        let fresh = Engine::new(Arc::new(
            pii_custody::seal::DangerousDevSeal::from_passphrase("t"),
        ));
        fresh.load(&store).await.unwrap();
        assert_eq!(fresh.current().unwrap().keys["auto"].doc.latest_version, 2);
        // Not due again until another period has passed.
        assert!(engine
            .rotate_due(&store, 1000 + 3600 + 10)
            .await
            .unwrap()
            .is_empty());
    }
}
