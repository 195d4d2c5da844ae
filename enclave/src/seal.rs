//! Sealing: turning the keyring into bytes the host may store but not read.
//!
//! [`Seal`] is the seam. This build ships one implementation,
//! [`DangerousDevSeal`], whose key-encryption key comes from a passphrase on
//! the command line — anyone with the passphrase and the blob has the keys, so
//! it exists for development and tests only and says so in its name. Vault
//! Transit and AWS KMS seals plug into the same trait.
//!
//! Blob layout (all seals):
//! `"PIIKR" ‖ 0x01 ‖ len:u8 ‖ seal-id ‖ seal-specific bytes`.
//! The seal id is bound as associated data, so a blob cannot be replayed
//! through a different seal.

use std::future::Future;
use std::pin::Pin;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

const BLOB_MAGIC: &[u8; 5] = b"PIIKR";
const BLOB_VERSION: u8 = 1;
const AAD_LABEL: &[u8] = b"pii-enclave/keyring/v1";

/// Why sealing or unsealing failed. Deliberately coarse.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    #[error("sealed keyring is malformed")]
    Malformed,
    #[error("sealed keyring was sealed by {found:?}, this enclave uses {ours:?}")]
    WrongSeal { found: String, ours: String },
    #[error("sealed keyring failed authentication (wrong seal key or tampered blob)")]
    Authentication,
    #[error("seal backend unreachable: {0}")]
    Unreachable(String),
    #[error("seal backend refused: {0}")]
    Denied(String),
    #[error("random number generator failed")]
    Rng,
}

pub type SealFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SealError>> + Send + 'a>>;

/// A key-encryption backend.
pub trait Seal: Send + Sync + 'static {
    /// Short stable identifier, stored in every blob (`dangerous-dev`, …).
    fn id(&self) -> &str;
    /// Encrypt `plaintext` with `aad` bound; output is backend-specific.
    fn wrap<'a>(&'a self, plaintext: &'a [u8], aad: &'a [u8]) -> SealFuture<'a, Vec<u8>>;
    /// Inverse of `wrap`.
    fn unwrap<'a>(&'a self, wrapped: &'a [u8], aad: &'a [u8])
        -> SealFuture<'a, Zeroizing<Vec<u8>>>;
}

fn aad_for(id: &str) -> Vec<u8> {
    let mut a = AAD_LABEL.to_vec();
    a.push(0);
    a.extend_from_slice(id.as_bytes());
    a
}

/// Seal `plaintext` into a self-describing blob.
pub async fn seal_blob(seal: &dyn Seal, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let id = seal.id();
    let id_len = u8::try_from(id.len()).map_err(|_| SealError::Malformed)?;
    let inner = seal.wrap(plaintext, &aad_for(id)).await?;
    let mut out = Vec::with_capacity(7 + id.len() + inner.len());
    out.extend_from_slice(BLOB_MAGIC);
    out.push(BLOB_VERSION);
    out.push(id_len);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&inner);
    Ok(out)
}

/// Open a blob produced by [`seal_blob`].
pub async fn unseal_blob(seal: &dyn Seal, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if blob.len() < 7 || &blob[..5] != BLOB_MAGIC || blob[5] != BLOB_VERSION {
        return Err(SealError::Malformed);
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
    seal.unwrap(&blob[7 + id_len..], &aad_for(id)).await
}

/// AES-256-GCM with a random nonce: `nonce ‖ ciphertext ‖ tag`.
pub(crate) fn gcm_seal(
    key: &LessSafeKey,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Rng)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| SealError::Authentication)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Inverse of [`gcm_seal`]; the plaintext is zeroized on drop.
pub(crate) fn gcm_open(
    key: &LessSafeKey,
    wrapped: &[u8],
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if wrapped.len() < NONCE_LEN + 16 {
        return Err(SealError::Malformed);
    }
    let nonce = Nonce::try_assume_unique_for_key(&wrapped[..NONCE_LEN])
        .map_err(|_| SealError::Malformed)?;
    let mut buf = Zeroizing::new(wrapped[NONCE_LEN..].to_vec());
    let n = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| SealError::Authentication)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

/// **Development only.** AES-256-GCM under a key derived from a passphrase.
///
/// The passphrase travels through the host (command line, environment), so
/// the host can unseal everything this seal protects. Never use it for real
/// data; production uses the Vault or KMS seal.
pub struct DangerousDevSeal {
    key: LessSafeKey,
}

impl std::fmt::Debug for DangerousDevSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DangerousDevSeal(<redacted>)")
    }
}

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
        let key = Zeroizing::new(d.as_ref().to_vec());
        let unbound =
            UnboundKey::new(&AES_256_GCM, &key).unwrap_or_else(|_| unreachable!("32-byte key"));
        DangerousDevSeal {
            key: LessSafeKey::new(unbound),
        }
    }
}

impl Seal for DangerousDevSeal {
    fn id(&self) -> &str {
        Self::ID
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

#[cfg(test)]
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
    }
}
