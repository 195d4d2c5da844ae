//! Sealing: turning the keyring into bytes the host may store but not read.
//!
//! [`Seal`] is the seam: the Vault Transit and AWS KMS seals, and the
//! development seal `DangerousDevSeal` (feature `dangerous-dev` only), whose
//! key-encryption key comes from a passphrase — anyone with the passphrase and
//! the blob has the keys, so it exists for development and tests only and says
//! so in its name.
//!
//! Blob layout (all seals):
//! `"PIIKR" ‖ 0x02 ‖ len:u8 ‖ seal-id ‖ generation:u64be ‖ prev:[u8;32] ‖ seal-specific bytes`.
//!
//! The associated data of the keyring's encryption binds the seal id, the
//! seal's [`Seal::binding`] (the deployment id from the measured config and
//! the key-encryption key's name), the keyring generation and the SHA-256 of
//! the blob this one replaces ([`Lineage`]). So a blob cannot be replayed
//! through another seal, moved to another deployment that shares the KEK and
//! the image, or relabelled with another generation; the engine refuses an
//! older generation, an equal generation with other bytes, and a successor
//! that does not name the blob it replaces (`transit::Engine`). Version-1
//! blobs (no lineage) are refused.

use std::future::Future;
use std::pin::Pin;

use aws_lc_rs::aead::LessSafeKey;
use zeroize::Zeroizing;

const BLOB_MAGIC: &[u8; 5] = b"PIIKR";
const BLOB_VERSION: u8 = 2;
const AAD_LABEL: &[u8] = b"pii-enclave/keyring/v2";

/// Where a blob sits in the keyring's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lineage {
    /// The keyring generation inside the blob.
    pub generation: u64,
    /// SHA-256 of the blob this one replaces (zero for the first).
    pub prev: [u8; 32],
}

/// A `deployment_id` outside 1–64 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seal.deployment_id {0:?} must be 1-64 characters of A-Z a-z 0-9 . _ -")]
pub struct BadDeploymentId(pub String);

/// A seal configuration that cannot be used (refused at start, before any
/// secret is fetched).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealConfigError {
    #[error(transparent)]
    DeploymentId(#[from] BadDeploymentId),
    #[error("seal.address {0:?} is not an http(s) URL")]
    NotHttpUrl(String),
    #[error(
        "seal.address {0:?} is plain http: the host relaying it would read the secret_id, \
         the Vault token and every data key; use https (TLS ends in the enclave)"
    )]
    PlainHttp(String),
    #[error("seal.role_id is empty")]
    EmptyRoleId,
    #[error(
        "seal.key_id {0:?} must be a full KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>): \
         a key id or alias could be made to name another key"
    )]
    KeyNotArn(String),
    #[error("seal.region {0:?} is not an AWS region")]
    BadRegion(String),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("seal.proxy: {0}")]
    Proxy(String),
    #[error("{path}: {why}")]
    CaCert { path: String, why: String },
    #[error("HTTP client: {0}")]
    HttpClient(String),
    #[error("seal.anchor needs a table and a base64 credentials_ciphertext")]
    AnchorIncomplete,
    #[error(
        "seal.anchor is required: without a rollback anchor the host can serve \
         an older keyring after a restart ([seal.anchor] table, credentials_ciphertext)"
    )]
    AnchorMissing,
}

/// A configured AWS endpoint that may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    #[error("{what} {ep:?} is not an http(s) URL")]
    NotUrl { what: &'static str, ep: String },
    #[error("{what} {ep:?} is plain http: the host relaying it could read or forge the answers; use https (TLS ends in the enclave)")]
    PlainHttp { what: &'static str, ep: String },
}

/// A deployment id: 1–64 of `[A-Za-z0-9._-]`.
pub fn check_deployment_id(id: &str) -> Result<(), BadDeploymentId> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BadDeploymentId(id.to_owned()))
    }
}

/// SHA-256 of a whole sealed blob (what the next blob's [`Lineage::prev`] names).
pub fn blob_hash(blob: &[u8]) -> [u8; 32] {
    crate::attest::sha256(blob)
}

/// A blob opened by [`open_blob`].
pub struct Opened {
    pub lineage: Lineage,
    pub plaintext: Zeroizing<Vec<u8>>,
}

/// Why sealing or unsealing failed. Deliberately coarse.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    #[error("sealed keyring is malformed")]
    Malformed,
    #[error("sealed keyring was sealed by {found:?}, this enclave uses {ours:?}")]
    WrongSeal { found: String, ours: String },
    #[error("sealed keyring failed authentication (wrong seal key, another deployment, or a tampered blob)")]
    Authentication,
    #[error("sealed keyring has format version {0}; this enclave reads version 2 only (v1 blobs carry no rollback protection)")]
    OldFormat(u8),
    #[error("seal backend unreachable: {0}")]
    Unreachable(String),
    #[error("seal backend refused: {0}")]
    Denied(String),
    #[error("random number generator failed")]
    Rng,
}

pub type SealFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SealError>> + Send + 'a>>;

/// The keyring's head as recorded by a rollback [`Anchor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub generation: u64,
    /// SHA-256 of the blob at that generation ([`blob_hash`]).
    pub hash: [u8; 32],
}

/// Outcome of [`Anchor::advance`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advance {
    Done,
    /// The record was not the expected one; this is what it holds now.
    Conflict(Option<Head>),
}

/// A record of the keyring's newest head kept outside the host and written
/// over the enclave's own TLS with the enclave's own credentials, so that
/// after a restart the enclave can tell an old blob from the newest one.
pub trait Anchor: Send + Sync {
    /// Where the head is kept (for logs and health).
    fn describe(&self) -> String;
    /// The recorded head (none yet: a new deployment).
    fn read(&self) -> SealFuture<'_, Option<Head>>;
    /// Record `next` if the record still is `expected` (compare-and-swap).
    fn advance(&self, expected: Option<Head>, next: Head) -> SealFuture<'_, Advance>;
    /// The measured config says a record must exist (set once the first head
    /// is anchored): a missing record is then a rollback, not a new
    /// deployment (no trust on first use).
    fn expects_record(&self) -> bool {
        false
    }
    /// The audit log's checkpoints (bytes the audit layer writes and
    /// parses) and the record's version for compare-and-swap; `(0, None)`
    /// when there are none yet.
    fn read_checkpoints(&self) -> SealFuture<'_, (u64, Option<Vec<u8>>)>;
    /// Replace the checkpoints if the record is still at `version`;
    /// `false` when another writer came first.
    fn write_checkpoints(&self, version: u64, bytes: Vec<u8>) -> SealFuture<'_, bool>;
}

/// A key-encryption backend.
pub trait Seal: Send + Sync + 'static {
    /// Short stable identifier, stored in every blob (`dangerous-dev`, …).
    fn id(&self) -> &str;
    /// What else every blob is bound to: the deployment id from the measured
    /// configuration and the key-encryption key's name.
    fn binding(&self) -> String;
    /// Encrypt `plaintext` with `aad` bound; output is backend-specific.
    fn wrap<'a>(&'a self, plaintext: &'a [u8], aad: &'a [u8]) -> SealFuture<'a, Vec<u8>>;
    /// Inverse of `wrap`.
    fn unwrap<'a>(&'a self, wrapped: &'a [u8], aad: &'a [u8])
        -> SealFuture<'a, Zeroizing<Vec<u8>>>;
    /// The seal's rollback anchor, if it has one.
    fn anchor(&self) -> Option<&dyn Anchor> {
        None
    }
    /// A credential delivered at run time, already decrypted inside the
    /// enclave (the Vault seal's secret_id). Seals that need none refuse it.
    fn provide_credential(&self, secret: Zeroizing<Vec<u8>>) -> SealFuture<'_, ()> {
        drop(secret);
        Box::pin(async { Err(SealError::Denied("this seal takes no credential".into())) })
    }
}

fn aad_for(seal: &dyn Seal, lineage: &Lineage) -> Vec<u8> {
    let id = seal.id();
    let binding = seal.binding();
    let mut a = Vec::with_capacity(AAD_LABEL.len() + id.len() + binding.len() + 52);
    a.extend_from_slice(AAD_LABEL);
    for part in [id.as_bytes(), binding.as_bytes()] {
        a.extend_from_slice(&(part.len() as u32).to_be_bytes());
        a.extend_from_slice(part);
    }
    a.extend_from_slice(&lineage.generation.to_be_bytes());
    a.extend_from_slice(&lineage.prev);
    a
}

/// Seal `plaintext` into a self-describing blob at `lineage`.
pub async fn seal_blob_at(
    seal: &dyn Seal,
    plaintext: &[u8],
    lineage: Lineage,
) -> Result<Vec<u8>, SealError> {
    let id = seal.id();
    let id_len = u8::try_from(id.len()).map_err(|_| SealError::Malformed)?;
    let inner = seal.wrap(plaintext, &aad_for(seal, &lineage)).await?;
    let mut out = Vec::with_capacity(7 + id.len() + 40 + inner.len());
    out.extend_from_slice(BLOB_MAGIC);
    out.push(BLOB_VERSION);
    out.push(id_len);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&lineage.generation.to_be_bytes());
    out.extend_from_slice(&lineage.prev);
    out.extend_from_slice(&inner);
    Ok(out)
}

/// Seal `plaintext` as a first blob (generation 0): for seal round-trip
/// checks; the engine seals with [`seal_blob_at`].
pub async fn seal_blob(seal: &dyn Seal, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    seal_blob_at(seal, plaintext, Lineage::default()).await
}

/// Open a blob produced by [`seal_blob_at`]: its lineage (authenticated) and plaintext.
pub async fn open_blob(seal: &dyn Seal, blob: &[u8]) -> Result<Opened, SealError> {
    if blob.len() < 7 || &blob[..5] != BLOB_MAGIC {
        return Err(SealError::Malformed);
    }
    if blob[5] != BLOB_VERSION {
        return Err(SealError::OldFormat(blob[5]));
    }
    let id_len = usize::from(blob[6]);
    let id = blob.get(7..7 + id_len).ok_or(SealError::Malformed)?;
    let id = std::str::from_utf8(id).map_err(|_| SealError::Malformed)?;
    if id != seal.id() {
        return Err(SealError::WrongSeal {
            found: id.to_owned(),
            ours: seal.id().to_owned(),
        });
    }
    let rest = &blob[7 + id_len..];
    let (gen, rest) = rest.split_at_checked(8).ok_or(SealError::Malformed)?;
    let (prev, inner) = rest.split_at_checked(32).ok_or(SealError::Malformed)?;
    let lineage = Lineage {
        generation: u64::from_be_bytes(gen.try_into().map_err(|_| SealError::Malformed)?),
        prev: prev.try_into().map_err(|_| SealError::Malformed)?,
    };
    let plaintext = seal.unwrap(inner, &aad_for(seal, &lineage)).await?;
    Ok(Opened { lineage, plaintext })
}

/// The plaintext of a blob (lineage checked by the caller, if it cares).
pub async fn unseal_blob(seal: &dyn Seal, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    Ok(open_blob(seal, blob).await?.plaintext)
}

/// AES-256-GCM with a random nonce: `nonce ‖ ciphertext ‖ tag` (the
/// engine's one AEAD framing, with the seal's errors).
pub(crate) fn gcm_seal(
    key: &LessSafeKey,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, SealError> {
    pii_engine::crypto::seal(key, plaintext, aad).map_err(|e| match e {
        pii_engine::CryptoError::Random => SealError::Rng,
        _ => SealError::Authentication,
    })
}

/// An AES-256-GCM key from a data key a seal backend returned (a wrong
/// length is a malformed answer).
pub(crate) fn data_key(dk: &[u8]) -> Result<LessSafeKey, SealError> {
    Ok(LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, dk)
            .map_err(|_| SealError::Malformed)?,
    ))
}

/// Inverse of [`gcm_seal`]; the plaintext is zeroized on drop.
pub(crate) fn gcm_open(
    key: &LessSafeKey,
    wrapped: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    pii_engine::crypto::open(key, wrapped, aad).map_err(|e| match e {
        pii_engine::crypto::OpenError::Short => SealError::Malformed,
        _ => SealError::Authentication,
    })
}

/// **Development only** (feature `dangerous-dev`). AES-256-GCM under a key
/// derived from a passphrase.
///
/// The passphrase travels through the host (command line, environment), so
/// the host can unseal everything this seal protects. Never use it for real
/// data; production uses the Vault or KMS seal.
#[cfg(feature = "dangerous-dev")]
pub struct DangerousDevSeal {
    key: LessSafeKey,
    deployment_id: String,
}

#[cfg(feature = "dangerous-dev")]
impl std::fmt::Debug for DangerousDevSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DangerousDevSeal(<redacted>)")
    }
}

#[cfg(feature = "dangerous-dev")]
impl DangerousDevSeal {
    pub const ID: &'static str = "dangerous-dev";

    pub fn from_passphrase(passphrase: &str) -> DangerousDevSeal {
        // A fixed, public salt: this seal is not meant to resist anyone.
        let d = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &[
                b"pii-enclave/dangerous-dev-seal/v1\0".as_slice(),
                passphrase.as_bytes(),
            ]
            .concat(),
        );
        use aws_lc_rs::aead::{UnboundKey, AES_256_GCM};
        let key = Zeroizing::new(d.as_ref().to_vec());
        let unbound =
            UnboundKey::new(&AES_256_GCM, &key).unwrap_or_else(|_| unreachable!("32-byte key"));
        DangerousDevSeal {
            key: LessSafeKey::new(unbound),
            deployment_id: "dev".into(),
        }
    }

    /// The same seal bound to another deployment id (blobs do not move between them).
    pub fn with_deployment(mut self, deployment_id: &str) -> DangerousDevSeal {
        self.deployment_id = deployment_id.to_owned();
        self
    }
}

#[cfg(feature = "dangerous-dev")]
impl Seal for DangerousDevSeal {
    fn id(&self) -> &str {
        Self::ID
    }

    fn binding(&self) -> String {
        format!("deployment={}", self.deployment_id)
    }

    fn wrap<'a>(&'a self, plaintext: &'a [u8], aad: &'a [u8]) -> SealFuture<'a, Vec<u8>> {
        Box::pin(async move { gcm_seal(&self.key, plaintext, aad) })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a [u8],
        aad: &'a [u8],
    ) -> SealFuture<'a, Zeroizing<Vec<u8>>> {
        Box::pin(async move { gcm_open(&self.key, wrapped, aad) })
    }
}

#[cfg(all(test, feature = "dangerous-dev"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip_and_tamper() {
        let s = DangerousDevSeal::from_passphrase("dev");
        let blob = seal_blob(&s, b"keyring bytes").await.unwrap();
        assert!(!blob.windows(13).any(|w| w == b"keyring bytes"));
        assert_eq!(&unseal_blob(&s, &blob).await.unwrap()[..], b"keyring bytes");
        let mut t = blob.clone();
        *t.last_mut().unwrap() ^= 1;
        assert_eq!(unseal_blob(&s, &t).await, Err(SealError::Authentication));
        let other = DangerousDevSeal::from_passphrase("other");
        assert_eq!(
            unseal_blob(&other, &blob).await,
            Err(SealError::Authentication)
        );
        assert_eq!(unseal_blob(&s, b"PIIKR").await, Err(SealError::Malformed));
        assert_eq!(
            unseal_blob(&s, &blob[..20]).await,
            Err(SealError::Malformed)
        );
        let mut renamed = blob.clone();
        renamed[7] = b'X';
        assert!(matches!(
            unseal_blob(&s, &renamed).await,
            Err(SealError::WrongSeal { .. })
        ));
        // Another deployment with the same KEK cannot open it.
        let elsewhere = DangerousDevSeal::from_passphrase("dev").with_deployment("other");
        assert_eq!(
            unseal_blob(&elsewhere, &blob).await,
            Err(SealError::Authentication)
        );
        // A v1 blob is refused by name.
        let mut v1 = blob.clone();
        v1[5] = 1;
        assert_eq!(unseal_blob(&s, &v1).await, Err(SealError::OldFormat(1)));
    }

    #[tokio::test]
    async fn lineage_is_authenticated() {
        let s = DangerousDevSeal::from_passphrase("dev");
        let l = Lineage {
            generation: 7,
            prev: [9; 32],
        };
        let blob = seal_blob_at(&s, b"kr", l).await.unwrap();
        let o = open_blob(&s, &blob).await.unwrap();
        assert_eq!(o.lineage, l);
        assert_eq!(&o.plaintext[..], b"kr");
        let off = 7 + DangerousDevSeal::ID.len();
        // Relabel the generation or the previous hash: refused.
        for i in [off + 7, off + 8, off + 39] {
            let mut t = blob.clone();
            t[i] ^= 1;
            assert_eq!(
                open_blob(&s, &t).await.err(),
                Some(SealError::Authentication),
                "byte {i}"
            );
        }
        // Truncated anywhere in the header: malformed, never a panic.
        for n in 0..off + 40 {
            assert!(open_blob(&s, &blob[..n]).await.is_err());
        }
    }
}
