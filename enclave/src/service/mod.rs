//! The enclave's running state: the keyring in memory (or none: sealed), its
//! life cycle (load, mutate with compare-and-swap, reload, rollback checks),
//! nonce budgets, encode allowances and the audit log.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use pii_custody::seal::{Seal, SealError};
use pii_engine::clock::{Clock, SystemClock};
use pii_engine::keyring::{Key, Keyring, NonceLimits};
use zeroize::Zeroizing;

use crate::error::{vault, Error, Result};
use crate::store::BlobStore;

mod keyring_life;
mod nonces;

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

#[cfg(all(test, feature = "dangerous-dev"))]
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
