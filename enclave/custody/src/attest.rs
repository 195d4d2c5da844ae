//! Attestation documents the enclave hands out, and what it lets a caller bind.
//!
//! The NSM signs whatever it is given, and AWS KMS trusts a document's
//! `public_key` as the enclave's own: a document carrying a key the host chose
//! would let the host receive the keyring's data key (the attestation oracle).
//! So no caller outside the enclave chooses the bytes of a document:
//!
//! - `public_key` is absent on documents made on request ([`Purpose::Report`]);
//!   otherwise it is a key whose private half never leaves the enclave: the KMS
//!   seal's per-call RSA key, or the Vault bootstrap key ([`BootstrapKey`]),
//!   which decrypts only with its own OAEP label and only into the seal's
//!   credential slot (never back to a caller);
//! - `user_data` is always the enclave-built [`UserData`] structure: its purpose,
//!   the SHA-256 of the audit public key, and only the *hash* of any caller data;
//! - `nonce` is the caller's, bounded to [`NONCE_MIN`]..=[`NONCE_MAX`] bytes
//!   (freshness is the one thing a caller legitimately supplies).
//!
//! The host–enclave protocol has no attestation request at all: documents are
//! asked for through the API (`GET sys/attestation`), with a token whose
//! policy grants `read` on that path.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256,
};
use pii_proto::attest::{
    Purpose, UserData, CALLER_DATA_MAX, NONCE_MAX, NONCE_MIN, SECRET_ID_MAX,
    VAULT_BOOTSTRAP_OAEP_LABEL,
};
use zeroize::Zeroizing;

use crate::nsm::{AttestRequest, Nsm, NsmError};

/// Why a document could not be made.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttestError {
    #[error("attestation is unavailable: this enclave has no NSM")]
    NoNsm,
    #[error("nonce must be {NONCE_MIN} to {NONCE_MAX} bytes")]
    BadNonce,
    #[error("user_data must be at most {CALLER_DATA_MAX} bytes")]
    CallerDataTooLong,
    #[error(transparent)]
    Nsm(#[from] NsmError),
    #[error("the bootstrap key could not be made")]
    KeyGeneration,
    #[error("the ciphertext does not open with this enclave's bootstrap key")]
    NotForUs,
}

/// The enclave's Vault bootstrap key: RSA-3072, made on first use inside the
/// enclave, kept in memory only, used only to open a secret_id sent to it.
pub struct BootstrapKey {
    spki: Vec<u8>,
    key: OaepPrivateDecryptingKey,
}

impl BootstrapKey {
    fn generate() -> Result<BootstrapKey, AttestError> {
        let k = PrivateDecryptingKey::generate(KeySize::Rsa3072)
            .map_err(|_| AttestError::KeyGeneration)?;
        let spki = k
            .public_key()
            .as_der()
            .map_err(|_| AttestError::KeyGeneration)?
            .as_ref()
            .to_vec();
        let key = OaepPrivateDecryptingKey::new(k).map_err(|_| AttestError::KeyGeneration)?;
        Ok(BootstrapKey { spki, key })
    }

    /// Decrypt a secret_id sent to this key (OAEP-SHA-256, the bootstrap label).
    fn open(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, AttestError> {
        let mut out = Zeroizing::new(vec![0u8; self.key.min_output_size()]);
        let n = self
            .key
            .decrypt(
                &OAEP_SHA256_MGF1SHA256,
                ciphertext,
                &mut out,
                Some(VAULT_BOOTSTRAP_OAEP_LABEL),
            )
            .map_err(|_| AttestError::NotForUs)?
            .len();
        out.truncate(n);
        if out.is_empty() || out.len() > SECRET_ID_MAX {
            return Err(AttestError::NotForUs);
        }
        Ok(out)
    }
}

/// SHA-256 as a fixed array.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The enclave's attestation service (the NSM, when there is one).
#[derive(Clone, Default)]
pub struct Attestor {
    nsm: Option<Arc<dyn Nsm>>,
    bootstrap: Arc<std::sync::OnceLock<Arc<BootstrapKey>>>,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("nsm", &self.nsm.is_some())
            .finish()
    }
}

impl Attestor {
    pub fn new(nsm: Option<Arc<dyn Nsm>>) -> Attestor {
        Attestor {
            nsm,
            bootstrap: Arc::default(),
        }
    }

    /// A document binding the bootstrap key (made now if there is none yet),
    /// with the caller's nonce: what `host-proxy vault bootstrap` verifies
    /// before it encrypts a secret_id to the key. Blocking (key generation).
    pub fn bootstrap_document(&self, nonce: &[u8]) -> Result<Vec<u8>, AttestError> {
        if !(NONCE_MIN..=NONCE_MAX).contains(&nonce.len()) {
            return Err(AttestError::BadNonce);
        }
        if self.nsm.is_none() {
            return Err(AttestError::NoNsm);
        }
        let key = match self.bootstrap.get() {
            Some(k) => k.clone(),
            None => {
                let k = Arc::new(BootstrapKey::generate()?);
                // Two racing callers: the first key wins, both use it.
                self.bootstrap.get_or_init(|| k).clone()
            }
        };
        self.document(
            nonce,
            Some(key.spki.clone()),
            UserData::new(Purpose::VaultBootstrap, None, None),
        )
    }

    /// Open a secret_id encrypted to the bootstrap key. Only the seal's
    /// credential slot receives the result; it is never returned to a caller.
    pub fn open_bootstrap(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, AttestError> {
        self.bootstrap
            .get()
            .ok_or(AttestError::NotForUs)?
            .open(ciphertext)
    }

    pub fn nsm(&self) -> Option<&Arc<dyn Nsm>> {
        self.nsm.as_ref()
    }

    /// A document for a caller outside the enclave: its nonce, no public key,
    /// and the enclave's own `user_data` ([`Purpose::Report`]).
    pub fn report(
        &self,
        nonce: &[u8],
        caller_data: Option<&[u8]>,
        audit_public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, AttestError> {
        if !(NONCE_MIN..=NONCE_MAX).contains(&nonce.len()) {
            return Err(AttestError::BadNonce);
        }
        if caller_data.is_some_and(|d| d.len() > CALLER_DATA_MAX) {
            return Err(AttestError::CallerDataTooLong);
        }
        let ud = UserData::new(
            Purpose::Report,
            audit_public_key.map(sha256),
            caller_data.map(sha256),
        );
        self.document(nonce, None, ud)
    }

    /// A document binding `public_key`, for seal code inside the enclave only
    /// (the key's private half must never leave the enclave).
    pub(crate) fn bind_own_key(
        &self,
        purpose: Purpose,
        public_key: Vec<u8>,
    ) -> Result<Vec<u8>, AttestError> {
        let mut nonce = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| NsmError("no randomness".into()))?;
        self.document(&nonce, Some(public_key), UserData::new(purpose, None, None))
    }

    fn document(
        &self,
        nonce: &[u8],
        public_key: Option<Vec<u8>>,
        user_data: UserData,
    ) -> Result<Vec<u8>, AttestError> {
        let nsm = self.nsm.as_ref().ok_or(AttestError::NoNsm)?;
        Ok(nsm.attest(&AttestRequest {
            nonce: Some(nonce.to_vec()),
            public_key,
            user_data: Some(user_data.encode()),
        })?)
    }

    /// For the development NSM only: the PEM root its documents chain to.
    pub fn dangerous_dev_root_pem(&self) -> Option<String> {
        self.nsm.as_ref().and_then(|n| n.dangerous_dev_root_pem())
    }
}
