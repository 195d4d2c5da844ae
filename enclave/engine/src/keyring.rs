//! Named, versioned transit keys: what is persisted (sealed) and what is kept
//! ready in memory.
//!
//! [`KeyDoc`] is the persisted form, serialized to CBOR inside the sealed
//! keyring blob. [`Key`] adds the prepared AEAD and HMAC keys so the hot path
//! does no key schedule. Every byte of key material sits in `Zeroizing`
//! buffers; nothing here implements `Debug` with secrets in it.
//!
//! Why one file: the keyring document, its key versions and their nonce budgets are one state machine over a few structs; splitting them would put the invariants (a version's nonce range, its derived keys) in different files from the code that keeps them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_lc_rs::aead::{self, LessSafeKey, UnboundKey, NONCE_LEN};
use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, zbytes, OpenError};
pub use crate::error::MISSING_CONTEXT;
use crate::error::{CryptoError, EngineError, Result};

/// Supported key types (Vault's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    #[serde(rename = "aes256-gcm96")]
    Aes256Gcm96,
    #[serde(rename = "aes128-gcm96")]
    Aes128Gcm96,
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

impl KeyType {
    pub fn parse(s: &str) -> Option<KeyType> {
        match s {
            "aes256-gcm96" => Some(KeyType::Aes256Gcm96),
            "aes128-gcm96" => Some(KeyType::Aes128Gcm96),
            "chacha20-poly1305" => Some(KeyType::ChaCha20Poly1305),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyType::Aes256Gcm96 => "aes256-gcm96",
            KeyType::Aes128Gcm96 => "aes128-gcm96",
            KeyType::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            KeyType::Aes128Gcm96 => 16,
            _ => 32,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            KeyType::Aes256Gcm96 => &aead::AES_256_GCM,
            KeyType::Aes128Gcm96 => &aead::AES_128_GCM,
            KeyType::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// Persisted material of one key version.
#[derive(Clone, Serialize, Deserialize)]
pub struct VersionDoc {
    #[serde(with = "zbytes")]
    pub key: Zeroizing<Vec<u8>>,
    #[serde(with = "zbytes")]
    pub hmac_key: Zeroizing<Vec<u8>>,
    /// Unix seconds.
    pub created: i64,
    /// Random nonces reserved for this version so far: an upper bound of
    /// the encryptions made with it (see [`NonceBudget`]).
    #[serde(default)]
    pub random_nonces: u64,
    /// Made after convergent nonces began to bind associated data. Older
    /// versions may hold ciphertexts whose nonce is `HMAC(plaintext)` under
    /// associated data, so none of their new nonces takes that form.
    #[serde(default)]
    pub nonce_v2: bool,
}

/// Random 96-bit nonces per key version: NIST SP 800-38D §8.3 allows 2^32
/// encryptions before the chance of a repeated nonce passes 2^-32.
pub const NONCE_LIMIT: u64 = 1 << 32;

/// Limits of the random-nonce budget; the defaults are production's (tests
/// shrink them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonceLimits {
    /// Nonces reserved (persisted) at a time.
    pub block: u64,
    /// A version that has reserved this many is rotated away from.
    pub rotate_at: u64,
    /// No version is ever used for more (explicit `key_version` included).
    pub limit: u64,
}

impl Default for NonceLimits {
    fn default() -> Self {
        NonceLimits {
            block: 1 << 20,
            rotate_at: NONCE_LIMIT / 2,
            limit: NONCE_LIMIT,
        }
    }
}

/// In-memory count of one version's random-nonce encryptions. `reserved`
/// never exceeds what the stored keyring records (the reservation is stored
/// before nonces from it are used), so a restart, a crash or a host that
/// serves an old keyring can only make the count larger than the truth.
#[derive(Debug, Default)]
pub struct NonceBudget {
    used: AtomicU64,
    reserved: AtomicU64,
}

impl NonceBudget {
    fn starting_at(n: u64) -> NonceBudget {
        NonceBudget {
            used: AtomicU64::new(n),
            reserved: AtomicU64::new(n),
        }
    }

    /// Take `n` nonces from the reservation; `false` when it does not hold
    /// that many (reserve more, then retry).
    pub fn take(&self, n: u64) -> bool {
        let reserved = self.reserved.load(Ordering::Acquire);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|next| *next <= reserved)
            })
            .is_ok()
    }

    /// Nonces left in the reservation.
    pub fn remaining(&self) -> u64 {
        self.reserved
            .load(Ordering::Acquire)
            .saturating_sub(self.used.load(Ordering::Acquire))
    }

    /// Encryptions counted so far (an upper bound across restarts).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// After the keyring that moved the stored counter from `from` to `to`
    /// was stored: this enclave owns `[from, to)`. `used` moves first, so no
    /// concurrent `take` can draw below `from` (another writer's range).
    pub fn advance(&self, from: u64, to: u64) {
        self.used.fetch_max(from, Ordering::AcqRel);
        self.reserved.fetch_max(to, Ordering::AcqRel);
    }

    fn unused(reserved: u64) -> NonceBudget {
        NonceBudget {
            used: AtomicU64::new(0),
            reserved: AtomicU64::new(reserved),
        }
    }
}

/// Persisted form of a named key.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyDoc {
    pub name: String,
    pub key_type: KeyType,
    pub derived: bool,
    pub convergent: bool,
    pub deletion_allowed: bool,
    pub min_decryption_version: u32,
    pub min_encryption_version: u32,
    pub min_available_version: u32,
    /// Seconds; 0 = never.
    pub auto_rotate_period: u64,
    pub latest_version: u32,
    pub versions: BTreeMap<u32, VersionDoc>,
}

pub use crate::crypto::random;
use crate::crypto::random_vec;

impl VersionDoc {
    pub fn generate(kt: KeyType, now: i64) -> Result<VersionDoc> {
        Ok(VersionDoc {
            key: random_vec(kt.key_len())?,
            hmac_key: random_vec(32)?,
            created: now,
            random_nonces: 0,
            nonce_v2: true,
        })
    }
}

impl KeyDoc {
    pub fn new(
        name: &str,
        kt: KeyType,
        derived: bool,
        convergent: bool,
        now: i64,
    ) -> Result<KeyDoc> {
        let mut versions = BTreeMap::new();
        versions.insert(1, VersionDoc::generate(kt, now)?);
        Ok(KeyDoc {
            name: name.to_owned(),
            key_type: kt,
            derived,
            convergent,
            deletion_allowed: false,
            min_decryption_version: 1,
            min_encryption_version: 0,
            min_available_version: 0,
            auto_rotate_period: 0,
            latest_version: 1,
            versions,
        })
    }

    pub fn rotate(&mut self, now: i64) -> Result<()> {
        let next = self.latest_version + 1;
        self.versions
            .insert(next, VersionDoc::generate(self.key_type, now)?);
        self.latest_version = next;
        Ok(())
    }

    /// Reserve the latest version's first `n` random nonces in the same
    /// write that creates it (so a new key or version encrypts without a
    /// second keyring write).
    pub fn reserve_latest(&mut self, n: u64) {
        if let Some(v) = self.versions.get_mut(&self.latest_version) {
            v.random_nonces = v.random_nonces.max(n);
        }
    }
}

/// HKDF-SHA256 with a domain label and the caller's context as `info`.
fn hkdf(ikm: &[u8], label: &[u8], context: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>> {
    Ok(crypto::hkdf_sha256(
        ikm,
        &[label, &[0u8][..], context],
        len,
    )?)
}

const LABEL_DERIVE: &[u8] = b"pii-enclave/transit/derive/v1";
const LABEL_CONVERGENT: &[u8] = b"pii-enclave/transit/convergent-nonce/v1";
/// Convergent nonces when associated data is present: their own key, over a
/// length-prefixed encoding of the associated data and the plaintext.
const LABEL_CONVERGENT_AD: &[u8] = b"pii-enclave/transit/convergent-nonce-ad/v2";

/// Nonce-derivation keys of a convergent key.
struct NonceKeys {
    /// `HMAC(plain, plaintext)` when there is no associated data: the
    /// nonce, and so the whole ciphertext, is a function of the plaintext
    /// alone, so equal ciphertexts are all it reveals (and the equality
    /// lookups of existing data keep working).
    plain: hmac::Key,
    /// `HMAC(with_ad, u64be(len ad) ‖ ad ‖ plaintext)` otherwise. Before
    /// v2 the nonce ignored the associated data: one plaintext under two
    /// associated-data values reused a nonce with two tags, which gives away
    /// GCM's authentication key (Poly1305's for ChaCha20) and lets anyone
    /// forge. OpenBao 2.7.2 still does that; we do not.
    with_ad: hmac::Key,
    /// A version from before v2: every nonce takes the `with_ad` form (a
    /// `plain` nonce could equal an old ciphertext's, made under other
    /// associated data). Equality with its pre-v2 ciphertexts is lost.
    legacy: bool,
}

impl NonceKeys {
    fn derive(ikm: &[u8], context: &[u8], legacy: bool) -> Result<NonceKeys> {
        Ok(NonceKeys {
            legacy,
            plain: hmac::Key::new(
                hmac::HMAC_SHA256,
                &hkdf(ikm, LABEL_CONVERGENT, context, 32)?,
            ),
            with_ad: hmac::Key::new(
                hmac::HMAC_SHA256,
                &hkdf(ikm, LABEL_CONVERGENT_AD, context, 32)?,
            ),
        })
    }

    fn nonce(&self, plaintext: &[u8], aad: &[u8]) -> [u8; NONCE_LEN] {
        let tag = if aad.is_empty() && !self.legacy {
            hmac::sign(&self.plain, plaintext)
        } else {
            let mut c = hmac::Context::with_key(&self.with_ad);
            c.update(&(aad.len() as u64).to_be_bytes());
            c.update(aad);
            c.update(plaintext);
            c.sign()
        };
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
        nonce
    }
}

/// Prepared keys of one version.
pub struct VersionKeys {
    aead: LessSafeKey,
    raw: Zeroizing<Vec<u8>>,
    hmac_raw: Zeroizing<Vec<u8>>,
    /// Nonce-derivation keys for convergent keys.
    nonce_key: Option<NonceKeys>,
    /// Random-nonce encryptions of this version (shared by every copy of
    /// the key in memory).
    pub budget: Arc<NonceBudget>,
    /// Made before convergent nonces v2 ([`VersionDoc::nonce_v2`]).
    legacy_nonce: bool,
}

/// The AEAD to use for one operation: the version key, or one derived from it.
pub enum OpKey<'a> {
    Base(&'a VersionKeys),
    Derived(Box<DerivedKey>),
}

/// A per-context key derived for one operation.
pub struct DerivedKey {
    aead: LessSafeKey,
    nonce_key: Option<NonceKeys>,
}

impl OpKey<'_> {
    fn parts(&self) -> (&LessSafeKey, Option<&NonceKeys>) {
        match self {
            OpKey::Base(v) => (&v.aead, v.nonce_key.as_ref()),
            OpKey::Derived(d) => (&d.aead, d.nonce_key.as_ref()),
        }
    }

    /// Whether sealing draws a random nonce (and so counts against the
    /// version's [`NonceBudget`]).
    pub fn random_nonces(&self) -> bool {
        self.parts().1.is_none()
    }

    /// `nonce ‖ ciphertext ‖ tag`. Convergent keys derive the nonce from the
    /// associated data and the plaintext (same inputs + context → same
    /// ciphertext; see [`NonceKeys`]); others draw it at random — callers
    /// take it from the version's budget first.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let (key, nonce_key) = self.parts();
        let nonce = match nonce_key {
            Some(nk) => nk.nonce(plaintext, aad),
            None => crypto::random_nonce()?,
        };
        Ok(crypto::seal_framed(key, &[], nonce, plaintext, aad)?)
    }

    /// Inverse of [`OpKey::seal`]. Errors carry Vault's strings.
    pub fn open(&self, data: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let (key, _) = self.parts();
        if data.len() < NONCE_LEN {
            return Err(EngineError::CiphertextLength);
        }
        crypto::open(key, data, aad).map_err(|e| match e {
            // Shorter than a tag, or a tag that does not verify: both are
            // Vault's authentication failure.
            OpenError::Short | OpenError::Authentication => EngineError::Authentication {
                chacha: key.algorithm() == &aead::CHACHA20_POLY1305,
            },
        })
    }
}

/// HMAC algorithms (Vault's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlg {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HmacAlg {
    pub fn parse(s: &str) -> Option<HmacAlg> {
        match s {
            "sha2-224" => Some(HmacAlg::Sha224),
            "sha2-256" => Some(HmacAlg::Sha256),
            "sha2-384" => Some(HmacAlg::Sha384),
            "sha2-512" => Some(HmacAlg::Sha512),
            _ => None,
        }
    }
    fn algorithm(self) -> hmac::Algorithm {
        match self {
            HmacAlg::Sha224 => hmac::HMAC_SHA224,
            HmacAlg::Sha256 => hmac::HMAC_SHA256,
            HmacAlg::Sha384 => hmac::HMAC_SHA384,
            HmacAlg::Sha512 => hmac::HMAC_SHA512,
        }
    }
}

impl VersionKeys {
    fn new(
        kt: KeyType,
        convergent: bool,
        doc: &VersionDoc,
        budget: Option<Arc<NonceBudget>>,
    ) -> Result<VersionKeys> {
        let unbound =
            UnboundKey::new(kt.algorithm(), &doc.key).map_err(|_| CryptoError::KeyLength)?;
        let nonce_key = if convergent {
            Some(NonceKeys::derive(&doc.key, &[], !doc.nonce_v2)?)
        } else {
            None
        };
        // A shared budget is raised only once the keyring that reserves more
        // is stored ([`NonceBudget::advance`]).
        let budget =
            budget.unwrap_or_else(|| Arc::new(NonceBudget::starting_at(doc.random_nonces)));
        Ok(VersionKeys {
            aead: LessSafeKey::new(unbound),
            raw: doc.key.clone(),
            hmac_raw: doc.hmac_key.clone(),
            nonce_key,
            budget,
            legacy_nonce: !doc.nonce_v2,
        })
    }

    /// HMAC of `input` with this version's HMAC key.
    pub fn hmac(&self, alg: HmacAlg, input: &[u8]) -> Vec<u8> {
        let k = hmac::Key::new(alg.algorithm(), &self.hmac_raw);
        hmac::sign(&k, input).as_ref().to_vec()
    }
}

/// A key ready for use: the persisted doc plus prepared per-version keys.
pub struct Key {
    pub doc: KeyDoc,
    versions: BTreeMap<u32, VersionKeys>,
}

impl Key {
    /// A key as loaded: each version's budget starts used up to what the
    /// keyring records as reserved.
    pub fn from_doc(doc: KeyDoc) -> Result<Key> {
        Key::build(doc, None)
    }

    /// A key this enclave just made (the write that stores it also stores
    /// its reservations): budgets start at 0.
    pub fn created(doc: KeyDoc) -> Result<Key> {
        let none = Key {
            doc: doc.clone(),
            versions: BTreeMap::new(),
        };
        Key::build(doc, Some(&none))
    }

    /// A changed copy of `self` (same lineage, this enclave's own change):
    /// versions both have share their in-memory budget.
    pub fn successor(&self, doc: KeyDoc) -> Result<Key> {
        Key::build(doc, Some(self))
    }

    fn build(doc: KeyDoc, prev: Option<&Key>) -> Result<Key> {
        let mut versions = BTreeMap::new();
        for (v, vd) in &doc.versions {
            // A version this change created (a rotation) is ours from 0.
            let shared = prev.map(|p| match p.versions.get(v) {
                Some(pv) if pv.raw == vd.key => pv.budget.clone(),
                Some(_) => Arc::new(NonceBudget::starting_at(vd.random_nonces)),
                // Created by this change: not visible before it is stored.
                None => Arc::new(NonceBudget::unused(vd.random_nonces)),
            });
            versions.insert(
                *v,
                VersionKeys::new(doc.key_type, doc.convergent, vd, shared)?,
            );
        }
        Ok(Key { doc, versions })
    }

    pub fn version(&self, v: u32) -> Option<&VersionKeys> {
        self.versions.get(&v)
    }

    /// The key for one operation. Derived keys need a context; for others the
    /// context is ignored, as Vault does.
    pub fn op_key<'a>(&'a self, vk: &'a VersionKeys, context: Option<&[u8]>) -> Result<OpKey<'a>> {
        if !self.doc.derived {
            return Ok(OpKey::Base(vk));
        }
        let ctx = match context {
            Some(c) if !c.is_empty() => c,
            _ => return Err(EngineError::MissingContext),
        };
        let kt = self.doc.key_type;
        let dk = hkdf(&vk.raw, LABEL_DERIVE, ctx, kt.key_len())?;
        let unbound = UnboundKey::new(kt.algorithm(), &dk).map_err(|_| CryptoError::Derive)?;
        let nonce_key = if self.doc.convergent {
            Some(NonceKeys::derive(&dk, ctx, vk.legacy_nonce)?)
        } else {
            None
        };
        Ok(OpKey::Derived(Box::new(DerivedKey {
            aead: LessSafeKey::new(unbound),
            nonce_key,
        })))
    }
}

/// The whole keyring as served: immutable, swapped atomically on change.
#[derive(Default)]
pub struct Keyring {
    /// Monotonic counter inside the sealed blob (rollback detection).
    pub generation: u64,
    /// Version of the blob in the host's store this keyring came from.
    pub store_version: u64,
    pub keys: BTreeMap<String, Arc<Key>>,
    /// Tokenization configuration and keys.
    pub transform: Arc<crate::transform::TransformState>,
    /// The audit signing key (PKCS#8), created on first use.
    pub audit_key: Option<Arc<aws_lc_rs::signature::Ed25519KeyPair>>,
    audit_pkcs8: Option<Zeroizing<Vec<u8>>>,
}

/// Persisted form of the whole keyring.
#[derive(Serialize, Deserialize)]
pub struct KeyringDoc {
    pub format: u32,
    pub generation: u64,
    pub keys: Vec<KeyDoc>,
    #[serde(default)]
    pub transform: crate::transform::TransformDoc,
    #[serde(default, with = "zbytes::option")]
    pub audit_key: Option<Zeroizing<Vec<u8>>>,
}

pub const KEYRING_FORMAT: u32 = 1;

impl Keyring {
    pub fn to_cbor(&self) -> Result<Zeroizing<Vec<u8>>> {
        let doc = KeyringDoc {
            format: KEYRING_FORMAT,
            generation: self.generation,
            keys: self.keys.values().map(|k| k.doc.clone()).collect(),
            transform: self.transform.doc.clone(),
            audit_key: self.audit_pkcs8.clone(),
        };
        let mut out = Zeroizing::new(Vec::new());
        ciborium::into_writer(&doc, &mut *out).map_err(|_| EngineError::KeyringEncode)?;
        Ok(out)
    }

    pub fn from_cbor(bytes: &[u8], store_version: u64) -> Result<Keyring> {
        let mut rd = bytes;
        let doc: KeyringDoc =
            ciborium::from_reader(&mut rd).map_err(|_| EngineError::KeyringDecode)?;
        if !rd.is_empty() || doc.format != KEYRING_FORMAT {
            return Err(EngineError::KeyringFormat);
        }
        let mut keys = BTreeMap::new();
        for kd in doc.keys {
            keys.insert(kd.name.clone(), Arc::new(Key::from_doc(kd)?));
        }
        Ok(Keyring {
            generation: doc.generation,
            store_version,
            keys,
            transform: Arc::new(crate::transform::TransformState::from_doc(doc.transform)?),
            audit_key: match &doc.audit_key {
                Some(k) => Some(Arc::new(crate::audit_key::load(k)?)),
                None => None,
            },
            audit_pkcs8: doc.audit_key,
        })
    }

    /// Loaded from the store over `old` (another writer's change): versions
    /// both hold keep this enclave's in-memory budget. Safe because each
    /// enclave's reservation is a range of the stored counter that no other
    /// writer gets, and `old`'s `reserved` is never raised to the stored
    /// value (which counts the other writers' ranges).
    pub fn keep_nonce_budgets(&mut self, old: &Keyring) {
        for (name, key) in self.keys.iter_mut() {
            let (Some(prev), Some(k)) = (old.keys.get(name), Arc::get_mut(key)) else {
                continue;
            };
            for (v, vk) in k.versions.iter_mut() {
                if let Some(pv) = prev.versions.get(v).filter(|pv| pv.raw == vk.raw) {
                    vk.budget = pv.budget.clone();
                }
            }
        }
    }

    /// A copy with the generation bumped, for several edits at once.
    pub fn next_generation(&self) -> Keyring {
        Keyring {
            // Saturates: a blob at u64::MAX (only forgeable) then fails the
            // lineage check instead of wrapping to an old generation.
            generation: self.generation.saturating_add(1),
            store_version: self.store_version,
            keys: self.keys.clone(),
            transform: self.transform.clone(),
            audit_key: self.audit_key.clone(),
            audit_pkcs8: self.audit_pkcs8.clone(),
        }
    }

    /// A copy with a new audit key, generation bumped.
    pub fn with_audit_key(&self, pkcs8: Zeroizing<Vec<u8>>) -> Result<Keyring> {
        let mut next = self.next_generation();
        next.audit_key = Some(Arc::new(crate::audit_key::load(&pkcs8)?));
        next.audit_pkcs8 = Some(pkcs8);
        Ok(next)
    }

    /// A copy with new Transform configuration, generation bumped.
    pub fn with_transform(&self, doc: crate::transform::TransformDoc) -> Result<Keyring> {
        let mut next = self.next_generation();
        next.transform = Arc::new(crate::transform::TransformState::from_doc(doc)?);
        Ok(next)
    }

    /// A copy with `name` replaced (or removed with `None`), generation bumped.
    pub fn with_key(&self, name: &str, key: Option<Arc<Key>>) -> Keyring {
        let mut keys = self.keys.clone();
        match key {
            Some(k) => {
                keys.insert(name.to_owned(), k);
            }
            None => {
                keys.remove(name);
            }
        }
        Keyring {
            generation: self.generation.saturating_add(1),
            store_version: self.store_version,
            keys,
            transform: self.transform.clone(),
            audit_key: self.audit_key.clone(),
            audit_pkcs8: self.audit_pkcs8.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kt: KeyType, derived: bool, convergent: bool) -> Key {
        Key::from_doc(KeyDoc::new("k", kt, derived, convergent, 0).unwrap()).unwrap()
    }

    #[test]
    fn seal_open_every_type() {
        for kt in [
            KeyType::Aes256Gcm96,
            KeyType::Aes128Gcm96,
            KeyType::ChaCha20Poly1305,
        ] {
            let k = key(kt, false, false);
            let op = k.op_key(k.version(1).unwrap(), None).unwrap();
            let ct = op.seal(b"hello", b"ad").unwrap();
            assert_eq!(ct.len(), 12 + 5 + 16);
            assert_eq!(&op.open(&ct, b"ad").unwrap()[..], b"hello");
            assert!(op.open(&ct, b"other").is_err());
            let mut t = ct.clone();
            t[20] ^= 1;
            let want = if kt == KeyType::ChaCha20Poly1305 {
                "chacha20poly1305: message authentication failed"
            } else {
                "cipher: message authentication failed"
            };
            assert_eq!(op.open(&t, b"ad").unwrap_err().to_string(), want);
            assert_eq!(
                op.open(&ct[..5], b"ad").unwrap_err().to_string(),
                "invalid ciphertext length"
            );
        }
    }

    #[test]
    fn derived_and_convergent() {
        let k = key(KeyType::Aes256Gcm96, true, true);
        let vk = k.version(1).unwrap();
        assert_eq!(
            k.op_key(vk, None).err().unwrap().to_string(),
            MISSING_CONTEXT
        );
        let a = k.op_key(vk, Some(b"user-1")).unwrap();
        let b = k.op_key(vk, Some(b"user-2")).unwrap();
        let c1 = a.seal(b"x", b"").unwrap();
        assert_eq!(c1, a.seal(b"x", b"").unwrap(), "convergent: deterministic");
        assert_ne!(c1, b.seal(b"x", b"").unwrap(), "context separates");
        assert_ne!(c1, a.seal(b"y", b"").unwrap());
        assert!(b.open(&c1, b"").is_err(), "wrong context fails");
        assert_eq!(&a.open(&c1, b"").unwrap()[..], b"x");
        let r = key(KeyType::Aes256Gcm96, true, false);
        let op = r.op_key(r.version(1).unwrap(), Some(b"c")).unwrap();
        assert_ne!(
            op.seal(b"x", b"").unwrap(),
            op.seal(b"x", b"").unwrap(),
            "random nonces"
        );
    }

    #[test]
    fn convergent_nonces_depend_on_associated_data() {
        for derived in [false, true] {
            let k = key(KeyType::Aes256Gcm96, derived, true);
            let ctx = derived.then_some(&b"user-1"[..]);
            let op = k.op_key(k.version(1).unwrap(), ctx).unwrap();
            let a = op.seal(b"4111-1111", b"table=users").unwrap();
            let b = op.seal(b"4111-1111", b"table=orders").unwrap();
            assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN], "one nonce, two AD values");
            assert_eq!(a, op.seal(b"4111-1111", b"table=users").unwrap());
            // Length prefixing: moving bytes between AD and plaintext changes the nonce.
            let c = op.seal(b"b", b"a").unwrap();
            let d = op.seal(b"", b"ab").unwrap();
            assert_ne!(c[..NONCE_LEN], d[..NONCE_LEN]);
            // Without AD the nonce is v1's: HMAC(nonce key, plaintext).
            let e = op.seal(b"4111-1111", b"").unwrap();
            let (_, nk) = op.parts();
            let v1 = hmac::sign(&nk.unwrap().plain, b"4111-1111");
            assert_eq!(e[..NONCE_LEN], v1.as_ref()[..NONCE_LEN]);
        }
    }

    #[test]
    fn versions_from_before_v2_never_make_a_plain_nonce() {
        let mut doc = KeyDoc::new("k", KeyType::Aes256Gcm96, false, true, 0).unwrap();
        doc.versions.get_mut(&1).unwrap().nonce_v2 = false;
        let k = Key::from_doc(doc).unwrap();
        let op = k.op_key(k.version(1).unwrap(), None).unwrap();
        let (_, nk) = op.parts();
        let v1 = hmac::sign(&nk.unwrap().plain, b"secret");
        let ct = op.seal(b"secret", b"").unwrap();
        assert_ne!(ct[..NONCE_LEN], v1.as_ref()[..NONCE_LEN], "not v1's nonce");
        assert_eq!(ct, op.seal(b"secret", b"").unwrap(), "still deterministic");
        // A stored version without the field is from before v2.
        #[derive(Serialize)]
        struct Old<'a> {
            #[serde(with = "serde_bytes")]
            key: &'a [u8],
            #[serde(with = "serde_bytes")]
            hmac_key: &'a [u8],
            created: i64,
        }
        let mut b = vec![];
        ciborium::into_writer(
            &Old {
                key: &[0u8; 32],
                hmac_key: &[0u8; 32],
                created: 1,
            },
            &mut b,
        )
        .unwrap();
        let old: VersionDoc = ciborium::from_reader(&b[..]).unwrap();
        assert!(!old.nonce_v2);
    }

    #[test]
    fn ciphertexts_from_the_old_nonce_derivation_still_decrypt() {
        // Before v2, AD did not enter the nonce: build such a ciphertext by
        // hand and check today's code opens it.
        let k = key(KeyType::ChaCha20Poly1305, false, true);
        let op = k.op_key(k.version(1).unwrap(), None).unwrap();
        let (aead, nk) = op.parts();
        let tag = hmac::sign(&nk.unwrap().plain, b"secret");
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);
        let old = crypto::seal_framed(aead, &[], nonce, b"secret", b"ad").unwrap();
        assert_eq!(&op.open(&old, b"ad").unwrap()[..], b"secret");
        assert_ne!(old, op.seal(b"secret", b"ad").unwrap(), "new ones differ");
    }

    #[test]
    fn nonce_budget_counts_and_shares() {
        let mut doc = KeyDoc::new("k", KeyType::Aes256Gcm96, false, false, 0).unwrap();
        doc.versions.get_mut(&1).unwrap().random_nonces = 10;
        let k = Key::from_doc(doc.clone()).unwrap();
        let b = &k.version(1).unwrap().budget;
        assert_eq!((b.used(), b.remaining()), (10, 0), "a load starts used up");
        assert!(!b.take(1));
        doc.versions.get_mut(&1).unwrap().random_nonces = 14;
        let k2 = k.successor(doc.clone()).unwrap();
        let b2 = &k2.version(1).unwrap().budget;
        assert!(!b2.take(1), "not raised before the keyring is stored");
        b2.advance(10, 14);
        assert!(b2.take(3) && !b2.take(2) && b2.take(1));
        assert_eq!(k.version(1).unwrap().budget.used(), 14, "shared");
        // Another writer reserved [14, 18); this one then reserves [18, 22).
        b2.advance(18, 22);
        assert_eq!(b2.used(), 18, "never draws from another writer's range");
        assert_eq!(b2.remaining(), 4);
        // A reload keeps this enclave's range, without raising it.
        doc.versions.get_mut(&1).unwrap().random_nonces = 30;
        let mut kr = Keyring::default().with_key("k", Some(Arc::new(Key::from_doc(doc).unwrap())));
        let old = Keyring::default().with_key("k", Some(Arc::new(k2)));
        kr.keep_nonce_budgets(&old);
        assert_eq!(kr.keys["k"].version(1).unwrap().budget.remaining(), 4);
    }

    #[test]
    fn keyring_cbor_roundtrip() {
        let mut doc = KeyDoc::new("pii", KeyType::ChaCha20Poly1305, true, false, 42).unwrap();
        doc.rotate(43).unwrap();
        let kr = Keyring::default().with_key("pii", Some(Arc::new(Key::from_doc(doc).unwrap())));
        let bytes = kr.to_cbor().unwrap();
        let back = Keyring::from_cbor(&bytes, 7).unwrap();
        assert_eq!(back.generation, 1);
        assert_eq!(back.store_version, 7);
        let k = &back.keys["pii"];
        assert_eq!(k.doc.latest_version, 2);
        assert_eq!(k.doc.versions[&1].key, kr.keys["pii"].doc.versions[&1].key);
        let mut trailing = bytes.to_vec();
        trailing.push(0);
        assert!(Keyring::from_cbor(&trailing, 0).is_err());
    }
}
