//! The Transit engine: key lifecycle and cryptographic operations with Vault's
//! semantics, plus the keyring's life cycle (load, mutate with
//! compare-and-swap, reload).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use pii_proto::{Method, SealedBlob};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use crate::api::{
    unsupported_operation, unsupported_path, value_to_int, value_to_string, Ctx, Reply,
};
use crate::auth::Capability;
use crate::b64;
use crate::error::{Error, Result};
use crate::keyring::{HmacAlg, Key, KeyDoc, KeyType, Keyring, NonceLimits};
use crate::seal::{
    blob_hash, open_blob, seal_blob_at, unseal_blob, Advance, Head, Lineage, Seal, SealError,
};

// ---------------------------------------------------------------------------
// Keyring storage seam

/// Why the host's store could not be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("keyring store unavailable: {0}")]
pub struct StoreError(pub String);

/// Result of a compare-and-swap write.
#[derive(Debug)]
pub enum StoreOutcome {
    Stored(u64),
    Conflict(SealedBlob),
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where sealed keyring blobs go (the host's store, reached over the link).
pub trait BlobStore: Send + Sync {
    fn load(&self) -> StoreFuture<'_, Option<SealedBlob>>;
    fn store(&self, expected: u64, blob: Vec<u8>) -> StoreFuture<'_, StoreOutcome>;
    /// Durably append audit records (JSON lines, in order) to `stream`.
    fn append_audit<'a>(&'a self, stream: &'a str, records: Vec<Vec<u8>>) -> StoreFuture<'a, ()>;
    /// Durably store token mappings (ciphertexts under keyed-hash keys).
    fn token_put(&self, entries: Vec<pii_proto::TokenEntry>) -> StoreFuture<'_, ()>;
    /// Fetch token mappings, one answer per key.
    fn token_get(&self, keys: Vec<String>) -> StoreFuture<'_, Vec<Option<Vec<u8>>>>;
    /// Delete mappings that expired before `now`.
    fn token_tidy(&self, now: u64) -> StoreFuture<'_, u64>;
}

/// A [`BlobStore`] in memory, with compare-and-swap: for tests, fuzzing and
/// benchmarks of the engine without a host.
#[derive(Default)]
pub struct MemoryStore(
    std::sync::Mutex<Vec<Vec<u8>>>,
    pub std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    std::sync::Mutex<std::collections::HashMap<String, pii_proto::TokenEntry>>,
);

impl BlobStore for MemoryStore {
    fn load(&self) -> StoreFuture<'_, Option<SealedBlob>> {
        let r = self
            .0
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|v| {
                v.last().map(|b| SealedBlob {
                    version: v.len() as u64,
                    bytes: b.clone(),
                })
            });
        Box::pin(async move { r })
    }

    fn store(&self, expected: u64, blob: Vec<u8>) -> StoreFuture<'_, StoreOutcome> {
        let r = self
            .0
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|mut v| {
                if v.len() as u64 == expected {
                    v.push(blob);
                    StoreOutcome::Stored(v.len() as u64)
                } else {
                    StoreOutcome::Conflict(SealedBlob {
                        version: v.len() as u64,
                        bytes: v.last().cloned().unwrap_or_default(),
                    })
                }
            });
        Box::pin(async move { r })
    }

    fn append_audit<'a>(&'a self, stream: &'a str, records: Vec<Vec<u8>>) -> StoreFuture<'a, ()> {
        let r = self
            .1
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|mut log| log.extend(records.into_iter().map(|r| (stream.to_owned(), r))));
        Box::pin(async move { r })
    }

    fn token_put(&self, entries: Vec<pii_proto::TokenEntry>) -> StoreFuture<'_, ()> {
        let r = self
            .2
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|mut m| {
                for e in entries {
                    m.insert(e.key.clone(), e);
                }
            });
        Box::pin(async move { r })
    }

    fn token_get(&self, keys: Vec<String>) -> StoreFuture<'_, Vec<Option<Vec<u8>>>> {
        let r = self
            .2
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|m| {
                keys.iter()
                    .map(|k| m.get(k).map(|e| e.value.clone()))
                    .collect()
            });
        Box::pin(async move { r })
    }

    fn token_tidy(&self, now: u64) -> StoreFuture<'_, u64> {
        let r = self
            .2
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|mut m| {
                let before = m.len();
                m.retain(|_, e| e.expires_at == 0 || e.expires_at >= now);
                (before - m.len()) as u64
            });
        Box::pin(async move { r })
    }
}

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
    /// Encode allowances on low-entropy roles, per (role, token).
    encodes: std::sync::Mutex<std::collections::HashMap<(String, String), Allowance>>,
}

/// A token bucket refilled continuously at `per_minute`. A new one (and so
/// every one after a restart) starts empty: restarting the enclave grants no
/// burst.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    left: f64,
    at: std::time::Instant,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("seal", &self.seal.id())
            .finish_non_exhaustive()
    }
}

const MAX_CAS_ATTEMPTS: usize = 8;

/// A std mutex's guard; a poisoned lock still holds consistent state here
/// (every critical section is a plain assignment or clone).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
/// How often a serving enclave compares its keyring with the anchor's.
pub const FRESH_CHECK_SECS: i64 = 30;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Engine {
    pub fn new(seal: Arc<dyn Seal>) -> Engine {
        Engine {
            keyring: ArcSwapOption::empty(),
            write: tokio::sync::Mutex::new(()),
            seal,
            head: std::sync::Mutex::new(None),
            rollback: std::sync::Mutex::new(None),
            anchor_error: std::sync::Mutex::new(None),
            stale: std::sync::Mutex::new(None),
            fresh_due: std::sync::atomic::AtomicI64::new(0),
            fresh_every: std::sync::atomic::AtomicI64::new(FRESH_CHECK_SECS),
            audit: crate::audit::AuditLog::default(),
            seal_error: std::sync::Mutex::new(None),
            nonce_limits: std::sync::Mutex::new(NonceLimits::default()),
            encodes: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Take `n` encodes on a low-entropy `role` for `caller` (a token id);
    /// false when its allowance does not hold that many.
    pub fn take_encodes(&self, role: &str, caller: &str, per_minute: u32, n: u32) -> bool {
        let now = std::time::Instant::now();
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
        a.left = (a.left + now.duration_since(a.at).as_secs_f64() * rate).min(cap);
        a.at = now;
        if a.left >= f64::from(n) {
            a.left -= f64::from(n);
            true
        } else {
            false
        }
    }

    /// Replace the random-nonce limits (tests shrink them).
    pub fn set_nonce_limits(&self, l: NonceLimits) {
        *lock(&self.nonce_limits) = l;
    }

    fn nonce_limits(&self) -> NonceLimits {
        *lock(&self.nonce_limits)
    }

    /// Random nonces a new key reserves in the write that creates it.
    fn first_nonces(&self, o: &CreateOpts) -> u64 {
        if o.convergent {
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
        let t = now();
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
                let next = kr.with_audit_key(crate::audit::generate_key()?)?;
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
// Routing

pub(crate) fn valid_name(n: &str) -> bool {
    // Vault's GenericNameRegex: \w(([\w-.@]+)?\w)?
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = n.chars();
    match (chars.next(), n.chars().last()) {
        (Some(f), Some(l)) if word(f) && word(l) => n
            .chars()
            .all(|c| word(c) || c == '-' || c == '.' || c == '@'),
        _ => false,
    }
}

pub async fn route(ctx: &mut Ctx<'_>, rest: &[&str]) -> Result<Reply> {
    let m = ctx.method;
    let post = matches!(m, Method::Post | Method::Put);
    match rest {
        ["keys"] | ["keys", ""] if m == Method::List => list_keys(ctx),
        ["keys", name] if valid_name(name) => match m {
            Method::Get => read_key(ctx, name),
            Method::Delete => delete_key(ctx, name).await,
            _ if post => create_key(ctx, name).await,
            _ => Err(unsupported_operation()),
        },
        ["keys", name, op] if valid_name(name) && post => match *op {
            "config" => config_key(ctx, name).await,
            "rotate" => rotate_key(ctx, name).await,
            "trim" => trim_key(ctx, name).await,
            _ => Err(unsupported_path()),
        },
        ["encrypt", name] if valid_name(name) => post_only(m, encrypt(ctx, name)).await,
        ["decrypt", name] if valid_name(name) => post_only(m, decrypt(ctx, name)).await,
        ["rewrap", name] if valid_name(name) => post_only(m, rewrap(ctx, name)).await,
        ["datakey", kind, name] if valid_name(name) => post_only(m, datakey(ctx, kind, name)).await,
        ["hmac", name] if valid_name(name) => post_only(m, hmac(ctx, name, None)).await,
        ["hmac", name, alg] if valid_name(name) => post_only(m, hmac(ctx, name, Some(alg))).await,
        ["verify", name] if valid_name(name) => post_only(m, verify(ctx, name, None)).await,
        ["verify", name, alg] if valid_name(name) => {
            post_only(m, verify(ctx, name, Some(alg))).await
        }
        ["random"] => post_only(m, async { random(ctx, None) }).await,
        ["random", a] => post_only(m, async { random(ctx, Some(a)) }).await,
        ["random", _source, a] => post_only(m, async { random(ctx, Some(a)) }).await,
        ["hash"] => post_only(m, async { hash(ctx, None) }).await,
        ["hash", alg] => post_only(m, async { hash(ctx, Some(alg)) }).await,
        _ => Err(unsupported_path()),
    }
}

async fn post_only(m: Method, f: impl Future<Output = Result<Reply>>) -> Result<Reply> {
    if matches!(m, Method::Post | Method::Put) {
        f.await
    } else {
        Err(unsupported_operation())
    }
}

// ---------------------------------------------------------------------------
// Key management

fn key_info(k: &KeyDoc) -> Value {
    let keys: Map<String, Value> = k
        .versions
        .iter()
        .filter(|(v, _)| **v >= k.min_decryption_version)
        .map(|(v, d)| (v.to_string(), json!(d.created)))
        .collect();
    let mut info = json!({
        "allow_plaintext_backup": false,
        "auto_rotate_period": k.auto_rotate_period,
        "deletion_allowed": k.deletion_allowed,
        "derived": k.derived,
        "exportable": false,
        "imported_key": false,
        "keys": keys,
        "latest_version": k.latest_version,
        "min_available_version": k.min_available_version,
        "min_decryption_version": k.min_decryption_version,
        "min_encryption_version": k.min_encryption_version,
        "name": k.name,
        "soft_deleted": false,
        "supports_decryption": true,
        "supports_derivation": true,
        "supports_encryption": true,
        "supports_signing": false,
        "type": k.key_type.name(),
    });
    if k.derived {
        info["convergent_encryption"] = json!(k.convergent);
        info["kdf"] = json!("hkdf_sha256");
        if k.convergent {
            info["convergent_encryption_version"] = json!(-1);
        }
    }
    info
}

fn list_keys(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let kr = ctx.engine.current()?;
    let keys: Vec<&String> = kr.keys.keys().collect();
    if keys.is_empty() {
        return Ok(Reply::NotFound);
    }
    Ok(Reply::Data(json!({ "keys": keys })))
}

fn read_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let kr = ctx.engine.current()?;
    match kr.keys.get(name) {
        Some(k) => Ok(Reply::Data(key_info(&k.doc))),
        None => Ok(Reply::NotFound),
    }
}

/// Options that may create a key (on `keys/:name` and on encrypt's upsert).
struct CreateOpts {
    kt: KeyType,
    derived: bool,
    convergent: bool,
}

fn create_opts(ctx: &mut Ctx<'_>, derived_default: bool) -> Result<CreateOpts> {
    let kt_name = ctx.str("type").unwrap_or_else(|| "aes256-gcm96".into());
    let derived = ctx.field_bool("derived")?.unwrap_or(derived_default);
    let convergent = ctx.field_bool("convergent_encryption")?.unwrap_or(false);
    if ctx.field_bool("exportable")? == Some(true)
        || ctx.field_bool("allow_plaintext_backup")? == Some(true)
    {
        return Err(Error::bad(
            "exportable keys and plaintext backups are not supported: key material never leaves the enclave",
        ));
    }
    let kt = KeyType::parse(&kt_name)
        .ok_or_else(|| Error::bad(format!("unknown key type {kt_name}")))?;
    if convergent && !derived {
        return Err(Error::bad(
            "convergent encryption requires derivation to be enabled",
        ));
    }
    Ok(CreateOpts {
        kt,
        derived,
        convergent,
    })
}

fn new_key(name: &str, o: &CreateOpts, auto_rotate: u64, nonces: u64) -> Result<Arc<Key>> {
    let mut doc = KeyDoc::new(name, o.kt, o.derived, o.convergent, now())?;
    doc.auto_rotate_period = auto_rotate;
    doc.reserve_latest(nonces);
    Ok(Arc::new(Key::created(doc)?))
}

fn check_auto_rotate(p: u64) -> Result<()> {
    if p != 0 && p < 3600 {
        return Err(Error::bad(
            "auto rotate period must be 0 to disable or at least an hour",
        ));
    }
    Ok(())
}

async fn create_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let o = create_opts(ctx, false)?;
    let auto = ctx.field_duration("auto_rotate_period")?.unwrap_or(0);
    check_auto_rotate(auto)?;
    ctx.seen.insert("context");
    let info = ctx
        .engine
        .mutate(ctx.store, |kr| match kr.keys.get(name) {
            Some(k) => Ok(Change::Unchanged(key_info(&k.doc))),
            None => {
                let k = new_key(name, &o, auto, ctx.engine.first_nonces(&o))?;
                let info = key_info(&k.doc);
                Ok(Change::Changed(kr.with_key(name, Some(k)), info))
            }
        })
        .await?;
    Ok(Reply::Data(info))
}

async fn delete_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    ctx.engine
        .mutate(ctx.store, |kr| match kr.keys.get(name) {
            None => Err(Error::bad(format!(
                "error deleting policy {name}: could not delete key; not found"
            ))),
            Some(k) if !k.doc.deletion_allowed => Err(Error::bad(format!(
                "error deleting policy {name}: deletion is not allowed for this key"
            ))),
            Some(_) => Ok(Change::Changed(kr.with_key(name, None), ())),
        })
        .await?;
    Ok(Reply::NoContent)
}

/// Apply an edit to one existing key, persisting it.
async fn edit_key(
    ctx: &mut Ctx<'_>,
    name: &str,
    edit: impl Fn(&mut KeyDoc) -> Result<bool>,
) -> Result<Reply> {
    let info = ctx
        .engine
        .mutate(ctx.store, |kr| {
            let k = kr
                .keys
                .get(name)
                .ok_or_else(|| Error::bad("key not found"))?;
            let mut doc = k.doc.clone();
            if !edit(&mut doc)? {
                return Ok(Change::Unchanged(key_info(&k.doc)));
            }
            let info = key_info(&doc);
            Ok(Change::Changed(
                kr.with_key(name, Some(Arc::new(k.successor(doc)?))),
                info,
            ))
        })
        .await?;
    Ok(Reply::Data(info))
}

async fn rotate_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    ctx.seen.insert("managed_key_name");
    ctx.seen.insert("managed_key_id");
    let t = now();
    let block = ctx.engine.nonce_limits().block;
    edit_key(ctx, name, |d| {
        d.rotate(t)?;
        if !d.convergent {
            d.reserve_latest(block);
        }
        Ok(true)
    })
    .await
}

async fn config_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let min_dec = ctx.field_int("min_decryption_version")?;
    let min_enc = ctx.field_int("min_encryption_version")?;
    let deletion = ctx.field_bool("deletion_allowed")?;
    let auto = ctx.field_duration("auto_rotate_period")?;
    if ctx.field_bool("exportable")? == Some(true)
        || ctx.field_bool("allow_plaintext_backup")? == Some(true)
    {
        return Err(Error::bad(
            "exportable keys and plaintext backups are not supported: key material never leaves the enclave",
        ));
    }
    if let Some(a) = auto {
        check_auto_rotate(a)?;
    }
    edit_key(ctx, name, move |d| {
        let latest = i64::from(d.latest_version);
        let mut dec = i64::from(d.min_decryption_version);
        let mut enc = i64::from(d.min_encryption_version);
        if let Some(v) = min_dec {
            if v > latest {
                return Err(Error::bad(format!(
                    "cannot set min decryption version of {v}, latest key version is {latest}"
                )));
            }
            dec = v.max(1);
            if d.min_available_version > 0 && dec < i64::from(d.min_available_version) {
                return Err(Error::bad("min decryption version should not be less then min available version"));
            }
        }
        if let Some(v) = min_enc {
            if v > latest {
                return Err(Error::bad(format!(
                    "cannot set min encryption version of {v}, latest key version is {latest}"
                )));
            }
            enc = v.max(0);
        }
        if enc != 0 && enc < dec {
            return Err(Error::bad(format!(
                "cannot set min encryption/decryption values; min encryption version of {enc} must be greater than or equal to min decryption version of {dec}"
            )));
        }
        d.min_decryption_version = dec as u32;
        d.min_encryption_version = enc as u32;
        if let Some(b) = deletion {
            d.deletion_allowed = b;
        }
        if let Some(a) = auto {
            d.auto_rotate_period = a;
        }
        Ok(true)
    })
    .await
}

async fn trim_key(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let Some(min_avail) = ctx.field_int("min_available_version")? else {
        return Err(Error::bad("missing min_available_version"));
    };
    edit_key(ctx, name, move |d| {
        if d.min_encryption_version == 0 {
            return Err(Error::bad(
                "minimum available version cannot be set when minimum encryption version is not set",
            ));
        }
        if min_avail > i64::from(d.min_encryption_version) {
            // (sic) OpenBao's spelling.
            return Err(Error::bad("minimum available version cannot be greater than minmum encryption version"));
        }
        if min_avail > i64::from(d.min_decryption_version) {
            return Err(Error::bad("minimum available version cannot be greater than minmum decryption version"));
        }
        if min_avail < i64::from(d.min_available_version) {
            return Err(Error::bad("minimum available version cannot be decremented"));
        }
        if min_avail < 1 {
            return Err(Error::bad("minimum available version should be positive"));
        }
        let m = min_avail as u32;
        d.versions.retain(|v, _| *v >= m);
        d.min_available_version = m;
        Ok(true)
    })
    .await
}

// ---------------------------------------------------------------------------
// Encrypt / decrypt / rewrap

pub(crate) fn decode_b64(s: &str) -> Result<Vec<u8>> {
    b64::decode(s).map_err(|e| Error::bad(e.to_string()))
}

pub(crate) fn opt_b64(v: Option<String>) -> Result<Option<Vec<u8>>> {
    v.filter(|s| !s.is_empty())
        .map(|s| decode_b64(&s))
        .transpose()
}

/// The version to encrypt with, checked as Vault does.
fn encryption_version(k: &KeyDoc, requested: Option<i64>) -> Result<u32> {
    match requested {
        None | Some(0) => Ok(k.latest_version),
        Some(v) => {
            if v > i64::from(k.latest_version) {
                return Err(Error::bad(
                    "requested version for encryption is higher than the latest key version",
                ));
            }
            if k.min_encryption_version > 0 && v < i64::from(k.min_encryption_version) {
                return Err(Error::bad("requested version for encryption is less than the minimum encryption key version"));
            }
            if v < i64::from(k.min_decryption_version) || !k.versions.contains_key(&(v as u32)) {
                return Err(Error::bad("no such key version"));
            }
            Ok(v as u32)
        }
    }
}

fn encrypt_one(
    k: &Key,
    version: u32,
    plaintext: &[u8],
    context: Option<&[u8]>,
    ad: &[u8],
) -> Result<String> {
    let vk = k
        .version(version)
        .ok_or_else(|| Error::bad("no such key version"))?;
    let op = k.op_key(vk, context)?;
    let ct = op.seal(plaintext, ad)?;
    let mut out = String::with_capacity(12 + ct.len() * 4 / 3 + 4);
    out.push_str("vault:v");
    out.push_str(&version.to_string());
    out.push(':');
    b64::encode_to(&ct, &mut out);
    Ok(out)
}

/// Split `vault:vN:payload`, with Vault's checks and messages.
fn parse_versioned<'a>(k: &KeyDoc, value: &'a str, what: &str) -> Result<(u32, &'a str)> {
    let rest = value
        .strip_prefix("vault:v")
        .ok_or_else(|| Error::bad(format!("invalid {what}: no prefix")))?;
    let (ver, payload) = rest
        .split_once(':')
        .ok_or_else(|| Error::bad(format!("invalid {what}: wrong number of fields")))?;
    let ver: i64 = ver.parse().map_err(|_| {
        Error::bad(format!(
            "invalid {what}: version number could not be decoded"
        ))
    })?;
    let ver = if ver == 0 { 1 } else { ver };
    if ver < 0 {
        return Err(Error::bad(format!(
            "invalid {what}: version number could not be decoded"
        )));
    }
    if ver > i64::from(k.latest_version) {
        return Err(Error::bad(format!("invalid {what}: version is too new")));
    }
    if ver < i64::from(k.min_decryption_version) {
        return Err(Error::bad(
            "ciphertext or signature version is disallowed by policy (too old)",
        ));
    }
    Ok((ver as u32, payload))
}

fn decrypt_one(
    k: &Key,
    ciphertext: &str,
    context: Option<&[u8]>,
    ad: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let (ver, payload) = parse_versioned(&k.doc, ciphertext, "ciphertext")?;
    let raw = b64::decode(payload)
        .map_err(|_| Error::bad("invalid ciphertext: could not decode base64"))?;
    let vk = k.version(ver).ok_or_else(|| {
        Error::bad("ciphertext or signature version is disallowed by policy (too old)")
    })?;
    let op = k.op_key(vk, context)?;
    op.open(&raw, ad)
}

/// One item of a (possibly single-item) request.
pub(crate) struct Item {
    pub(crate) params: Map<String, Value>,
    /// From `batch_input` (type errors are reported the way Vault's batch decoder does).
    batch: bool,
}

impl Item {
    pub(crate) fn str(&self, name: &str) -> Option<String> {
        match self.params.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(value_to_string(v)),
        }
    }
    fn int(&self, name: &str) -> Result<Option<i64>> {
        match self.params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) if !self.batch => value_to_int(v)
                .map(Some)
                .ok_or_else(|| Error::bad(crate::api::int_error(name))),
            Some(v) => value_to_int(v).map(Some).ok_or_else(|| {
                Error::new(
                    500,
                    format!(
                        "1 error occurred:\n\t* failed to parse batch input: '[0].{name}' expected type 'int', got unconvertible type '{}'\n\n",
                        match v {
                            Value::String(_) => "string",
                            Value::Bool(_) => "bool",
                            _ => "interface {}",
                        }
                    ),
                )
            }),
        }
    }
    fn reference(&self) -> Value {
        match self.params.get("reference") {
            None | Some(Value::Null) => json!(""),
            Some(v) => v.clone(),
        }
    }
}

/// Common shape of batch endpoints: `batch_input` or top-level fields.
pub(crate) fn items(ctx: &mut Ctx<'_>, fields: &[&'static str]) -> Result<(Vec<Item>, bool)> {
    for f in fields {
        ctx.seen.insert(f);
    }
    ctx.seen.insert("reference");
    ctx.seen.insert("partial_failure_response_code");
    match ctx.batch()? {
        Some(b) => {
            if b.is_empty() {
                return Err(Error::bad("missing batch input to process"));
            }
            Ok((
                b.into_iter()
                    .map(|params| Item {
                        params,
                        batch: true,
                    })
                    .collect(),
                true,
            ))
        }
        None => {
            let mut params = Map::new();
            for f in fields.iter().chain(&["reference"]) {
                if let Some(v) = ctx.params.get(*f) {
                    params.insert((*f).to_owned(), v.clone());
                }
            }
            Ok((
                vec![Item {
                    params,
                    batch: false,
                }],
                false,
            ))
        }
    }
}

/// How a batch with failed items is answered.
#[derive(Clone, Copy)]
pub(crate) enum OnItemError {
    /// 400, or the caller's `partial_failure_response_code` (encrypt, decrypt).
    Status400,
    /// 200 (rewrap, hmac, verify).
    Status200,
}

pub(crate) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Run `op` over the items. A single request answers with the op's object or
/// its error; a batch collects `{…, reference}` per item, failed items as
/// `{error, reference}` plus `on_error`'s fields. Internal (5xx) errors abort.
pub(crate) fn run_items(
    ctx: &mut Ctx<'_>,
    items: &[Item],
    batch: bool,
    policy: OnItemError,
    on_error: &[(&str, Value)],
    op: impl Fn(&Item) -> Result<Map<String, Value>>,
) -> Result<Reply> {
    if !batch {
        let item = items
            .first()
            .ok_or_else(|| Error::bad("missing batch input to process"))?;
        return op(item).map(|m| Reply::Data(Value::Object(m)));
    }
    let mut results = Vec::with_capacity(items.len());
    let mut failed = 0usize;
    for it in items {
        let mut m = match op(it) {
            Ok(m) => m,
            Err(e) if e.status >= 500 => return Err(e),
            Err(e) => {
                failed += 1;
                let mut m: Map<String, Value> = on_error
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                m.insert("error".into(), json!(e.message()));
                m
            }
        };
        m.insert("reference".into(), it.reference());
        results.push(Value::Object(m));
    }
    let data = json!({ "batch_results": results });
    match policy {
        OnItemError::Status200 => Ok(Reply::Data(data)),
        OnItemError::Status400 => Ok(Reply::Batch {
            status: batch_status(ctx, failed > 0, failed == items.len())?,
            data,
        }),
    }
}

/// Batch status: 400 if any item failed (or the caller's partial-failure code).
fn batch_status(ctx: &mut Ctx<'_>, any_failed: bool, all_failed: bool) -> Result<u16> {
    let code = ctx.int("partial_failure_response_code")?;
    if !any_failed {
        return Ok(200);
    }
    match code {
        Some(c) if !all_failed && (200..600).contains(&c) => Ok(c as u16),
        _ => Ok(400),
    }
}

/// Take the random nonces `items` will draw from `key`'s budget, per
/// requested version (items whose version is invalid fail on their own).
async fn take_item_nonces(
    ctx: &Ctx<'_>,
    name: &str,
    mut key: Arc<Key>,
    items: &[Item],
) -> Result<Arc<Key>> {
    // Until the key stays the same: a take may return a newer key (another
    // request rotated it), and items must be charged to the versions they
    // will really use. Extra rounds only over-count.
    if key.doc.convergent {
        return Ok(key);
    }
    for _ in 0..MAX_CAS_ATTEMPTS {
        let mut demand: std::collections::BTreeMap<Option<u32>, u64> = Default::default();
        for it in items {
            let Ok(requested) = it.int("key_version") else {
                continue;
            };
            if encryption_version(&key.doc, requested).is_err() {
                continue;
            }
            let v = requested.filter(|v| *v != 0).map(|v| v as u32);
            *demand.entry(v).or_default() += 1;
        }
        let before = (key.doc.latest_version, key.doc.min_encryption_version);
        for (v, n) in demand {
            key = ctx.engine.take_nonces(ctx.store, name, key, v, n).await?;
        }
        // The same versions resolve as when the demand was counted.
        if before == (key.doc.latest_version, key.doc.min_encryption_version) {
            return Ok(key);
        }
    }
    Err(Error::new(503, "the key kept changing; retry"))
}

fn key_or_not_found(kr: &Keyring, name: &str) -> Result<Arc<Key>> {
    kr.keys
        .get(name)
        .cloned()
        .ok_or_else(|| Error::bad("encryption key not found"))
}

async fn encrypt(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let (items, batch) = items(
        ctx,
        &["plaintext", "context", "key_version", "associated_data"],
    )?;
    if !batch && items[0].str("plaintext").is_none() {
        return Err(Error::bad("missing plaintext to encrypt"));
    }
    // Vault requires context in every item or in none.
    let with_ctx = items
        .iter()
        .filter(|i| i.str("context").is_some_and(|c| !c.is_empty()))
        .count();
    if with_ctx != 0 && with_ctx != items.len() {
        return Err(Error::bad(
            "context should be set either in all the request blocks or in none",
        ));
    }
    let kr = ctx.engine.current()?;
    let key = match kr.keys.get(name) {
        Some(k) => {
            ctx.seen
                .extend(["type", "convergent_encryption", "derived"]);
            k.clone()
        }
        None => {
            // Upsert, as Vault does: needs the `create` capability.
            if !ctx.allowed(Capability::Create) {
                return Err(Error::denied());
            }
            let o = create_opts(ctx, with_ctx > 0)?;
            let n = name.to_owned();
            ctx.engine
                .mutate(ctx.store, |kr| match kr.keys.get(&n) {
                    Some(k) => Ok(Change::Unchanged(k.clone())),
                    None => {
                        let k = new_key(&n, &o, 0, ctx.engine.first_nonces(&o))?;
                        Ok(Change::Changed(kr.with_key(&n, Some(k.clone())), k))
                    }
                })
                .await?
        }
    };
    let key = take_item_nonces(ctx, name, key, &items).await?;
    run_items(ctx, &items, batch, OnItemError::Status400, &[], |it| {
        let pt = Zeroizing::new(decode_b64(&it.str("plaintext").unwrap_or_default())?);
        let context = opt_b64(it.str("context"))?;
        let ad = opt_b64(it.str("associated_data"))?.unwrap_or_default();
        let ver = encryption_version(&key.doc, it.int("key_version")?)?;
        let ct = encrypt_one(&key, ver, &pt, context.as_deref(), &ad)?;
        Ok(obj(json!({"ciphertext": ct, "key_version": ver})))
    })
}

async fn decrypt(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let (items, batch) = items(ctx, &["ciphertext", "context", "associated_data"])?;
    if !batch && items[0].str("ciphertext").is_none() {
        return Err(Error::bad("missing ciphertext to decrypt"));
    }
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    ctx.seen.insert("reason");
    let reason = ctx.str("reason").unwrap_or_default();
    // The audit record is stored before any plaintext is returned.
    ctx.audit(crate::audit::Event::decrypt(
        "transit/decrypt",
        name,
        &reason,
        items.len(),
    ))
    .await?;
    // Failed decrypt items carry an empty plaintext, as OpenBao's do.
    let on_error = [("plaintext", json!(""))];
    run_items(
        ctx,
        &items,
        batch,
        OnItemError::Status400,
        &on_error,
        |it| {
            let ct = it.str("ciphertext").unwrap_or_default();
            let context = opt_b64(it.str("context"))?;
            let ad = opt_b64(it.str("associated_data"))?.unwrap_or_default();
            let pt = decrypt_one(&key, &ct, context.as_deref(), &ad)?;
            Ok(obj(json!({"plaintext": b64::encode(&pt)})))
        },
    )
}

async fn rewrap(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let (items, batch) = items(
        ctx,
        &["ciphertext", "context", "key_version", "associated_data"],
    )?;
    if !batch && items[0].str("ciphertext").is_none() {
        return Err(Error::bad("missing ciphertext to decrypt"));
    }
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    let key = take_item_nonces(ctx, name, key, &items).await?;
    // OpenBao answers 200 for rewrap batches with failed items.
    run_items(ctx, &items, batch, OnItemError::Status200, &[], |it| {
        let ct = it.str("ciphertext").unwrap_or_default();
        let context = opt_b64(it.str("context"))?;
        let ad = opt_b64(it.str("associated_data"))?.unwrap_or_default();
        let pt = decrypt_one(&key, &ct, context.as_deref(), &ad)?;
        let ver = encryption_version(&key.doc, it.int("key_version")?)?;
        let ct = encrypt_one(&key, ver, &pt, context.as_deref(), &ad)?;
        Ok(obj(json!({"ciphertext": ct, "key_version": ver})))
    })
}

async fn datakey(ctx: &mut Ctx<'_>, kind: &str, name: &str) -> Result<Reply> {
    let with_plaintext = match kind {
        "plaintext" => true,
        "wrapped" => false,
        _ => return Err(Error::bad("Invalid path, must be 'plaintext' or 'wrapped'")),
    };
    let context = opt_b64(ctx.str("context"))?;
    let ad = opt_b64(ctx.str("associated_data"))?.unwrap_or_default();
    ctx.seen.insert("nonce");
    let bits = ctx.int("bits")?.unwrap_or(256);
    let requested = ctx.int("key_version")?;
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    let n = match bits {
        128 => 16,
        256 => 32,
        512 => 64,
        _ => return Err(Error::bad("invalid bit length")),
    };
    encryption_version(&key.doc, requested)?;
    let explicit = requested.filter(|v| *v != 0).map(|v| v as u32);
    let key = ctx
        .engine
        .take_nonces(ctx.store, name, key, explicit, 1)
        .await?;
    let ver = encryption_version(&key.doc, requested)?;
    let mut dk = Zeroizing::new(vec![0u8; n]);
    crate::keyring::random(&mut dk)?;
    let ct = encrypt_one(&key, ver, &dk, context.as_deref(), &ad)?;
    let mut data = json!({"ciphertext": ct, "key_version": ver});
    if with_plaintext {
        data["plaintext"] = json!(b64::encode(&dk));
    }
    Ok(Reply::Data(data))
}

// ---------------------------------------------------------------------------
// HMAC / verify / random / hash

fn hmac_alg(ctx: &mut Ctx<'_>, path_alg: Option<&str>) -> Result<HmacAlg> {
    let param = ctx.str("algorithm");
    let name = path_alg
        .map(str::to_owned)
        .or(param)
        .unwrap_or_else(|| "sha2-256".into());
    // (sic) OpenBao prints the unsupported name this way.
    HmacAlg::parse(&name).ok_or_else(|| Error::bad("unsupported algorithm '\\x00'"))
}

async fn hmac(ctx: &mut Ctx<'_>, name: &str, path_alg: Option<&str>) -> Result<Reply> {
    let alg = hmac_alg(ctx, path_alg)?;
    let (items, batch) = items(ctx, &["input", "key_version"])?;
    if !batch && items[0].str("input").is_none() {
        return Err(Error::bad("missing input for HMAC"));
    }
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    run_items(ctx, &items, batch, OnItemError::Status200, &[], |it| {
        let ver = match it.int("key_version")? {
            None | Some(0) => key.doc.latest_version,
            Some(v) if v > i64::from(key.doc.latest_version) || v < 0 => {
                return Err(Error::bad(format!(
                    "key version does not exist; latest key version is {}",
                    key.doc.latest_version
                )))
            }
            Some(v) => v as u32,
        };
        let input = b64::decode(&it.str("input").unwrap_or_default())
            .map_err(|e| Error::bad(format!("unable to decode input as base64: {e}")))?;
        let vk = key.version(ver).ok_or_else(|| {
            Error::bad("ciphertext or signature version is disallowed by policy (too old)")
        })?;
        let mut out = format!("vault:v{ver}:");
        b64::encode_to(&vk.hmac(alg, &input), &mut out);
        Ok(obj(json!({ "hmac": out })))
    })
}

async fn verify(ctx: &mut Ctx<'_>, name: &str, path_alg: Option<&str>) -> Result<Reply> {
    let alg = hmac_alg(ctx, path_alg)?;
    let (items, batch) = items(ctx, &["input", "hmac", "signature"])?;
    if !batch {
        if items[0].str("input").is_none() {
            return Err(Error::bad("missing input to verify"));
        }
        if items[0].str("hmac").is_none() && items[0].str("signature").is_none() {
            return Err(Error::bad(
                "neither a 'signature' nor an 'hmac' were given to verify",
            ));
        }
    }
    let kr = ctx.engine.current()?;
    let key = key_or_not_found(&kr, name)?;
    run_items(ctx, &items, batch, OnItemError::Status200, &[], |it| {
        if it.str("signature").is_some() {
            return Err(Error::bad(format!(
                "key type {} does not support signing",
                key.doc.key_type.name()
            )));
        }
        let h = it.str("hmac").ok_or_else(|| {
            Error::bad("neither a 'signature' nor an 'hmac' were given to verify")
        })?;
        let input = b64::decode(&it.str("input").unwrap_or_default())
            .map_err(|e| Error::bad(format!("unable to decode input as base64: {e}")))?;
        let (ver, payload) = parse_versioned(&key.doc, &h, "HMAC to verify")?;
        let valid = match (b64::decode(payload), key.version(ver)) {
            (Ok(given), Some(vk)) => {
                let expected = vk.hmac(alg, &input);
                aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &given).is_ok()
            }
            _ => false,
        };
        Ok(obj(json!({ "valid": valid })))
    })
}

fn format_param(ctx: &mut Ctx<'_>, quoted: bool) -> Result<bool> {
    let f = ctx
        .str("format")
        .unwrap_or_else(|| if quoted { "base64" } else { "hex" }.into());
    match f.as_str() {
        "hex" => Ok(true),
        "base64" => Ok(false),
        other if quoted => Err(Error::bad(format!(
            "unsupported encoding format \"{other}\"; must be \"hex\" or \"base64\""
        ))),
        other => Err(Error::bad(format!(
            "unsupported encoding format {other}; must be \"hex\" or \"base64\""
        ))),
    }
}

fn random(ctx: &mut Ctx<'_>, path_bytes: Option<&str>) -> Result<Reply> {
    ctx.seen.insert("source");
    let bytes = match path_bytes {
        Some(b) if b.parse::<i64>().is_ok() => b.parse::<i64>().unwrap_or(32),
        // `random/:source` (platform, seal, all): all are the enclave's RNG.
        Some("platform" | "seal" | "all") => ctx.int("bytes")?.unwrap_or(32),
        Some(_) => return Err(unsupported_path()),
        None => ctx.int("bytes")?.unwrap_or(32),
    };
    ctx.seen.insert("bytes");
    let hex_out = format_param(ctx, true)?;
    if bytes < 1 {
        return Err(Error::bad("'bytes' cannot be less than 1"));
    }
    if bytes > 128 * 1024 {
        return Err(Error::bad("'bytes' should be less than 131072"));
    }
    let mut buf = vec![0u8; bytes as usize];
    crate::keyring::random(&mut buf)?;
    let s = if hex_out {
        hex::encode(&buf)
    } else {
        b64::encode(&buf)
    };
    Ok(Reply::Data(json!({ "random_bytes": s })))
}

fn hash(ctx: &mut Ctx<'_>, path_alg: Option<&str>) -> Result<Reply> {
    use aws_lc_rs::digest;
    let input = ctx.str("input");
    let param_alg = ctx.str("algorithm");
    let alg_name = path_alg
        .map(str::to_owned)
        .or(param_alg)
        .unwrap_or_else(|| "sha2-256".into());
    let hex_out = format_param(ctx, false)?;
    let Some(input) = input else {
        return Err(Error::bad("input missing"));
    };
    let alg = match alg_name.as_str() {
        "sha2-224" => &digest::SHA224,
        "sha2-256" => &digest::SHA256,
        "sha2-384" => &digest::SHA384,
        "sha2-512" => &digest::SHA512,
        "sha2-512/256" => &digest::SHA512_256,
        "sha3-256" => &digest::SHA3_256,
        "sha3-384" => &digest::SHA3_384,
        "sha3-512" => &digest::SHA3_512,
        other => return Err(Error::bad(format!("unsupported algorithm {other}"))),
    };
    let data = b64::decode(&input)
        .map_err(|e| Error::bad(format!("unable to decode input as base64: {e}")))?;
    let d = digest::digest(alg, &data);
    let s = if hex_out {
        hex::encode(d.as_ref())
    } else {
        b64::encode(d.as_ref())
    };
    Ok(Reply::Data(json!({ "sum": s })))
}

#[cfg(all(test, feature = "dangerous-dev"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn auto_rotation_when_due() {
        let engine = Engine::new(Arc::new(crate::seal::DangerousDevSeal::from_passphrase(
            "t",
        )));
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
        let fresh = Engine::new(Arc::new(crate::seal::DangerousDevSeal::from_passphrase(
            "t",
        )));
        fresh.load(&store).await.unwrap();
        assert_eq!(fresh.current().unwrap().keys["auto"].doc.latest_version, 2);
        // Not due again until another period has passed.
        assert!(engine
            .rotate_due(&store, 1000 + 3600 + 10)
            .await
            .unwrap()
            .is_empty());
    }

    #[test]
    fn names() {
        for ok in ["pii", "a", "my-key.v2", "x@y", "k_1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "bad name", "a/b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
