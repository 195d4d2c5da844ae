//! What the enclave puts in an attestation document's `user_data`.
//!
//! The NSM signs whatever `public_key`, `user_data` and `nonce` it is handed,
//! and services like AWS KMS trust a document's `public_key` as the enclave's
//! own. So the enclave never lets anyone outside choose those bytes: the
//! `public_key` of a document is always a key whose private half never leaves
//! the enclave (or absent), and `user_data` is always this structure, built by
//! the enclave, saying *why* the document exists ([`Purpose`]). A verifier that
//! reads `user_data` learns the purpose and, for documents made on request, the
//! SHA-256 of the enclave's audit signing key (so the audit key can be pinned
//! from a verified document rather than taken from the host).
//!
//! Encoding: a CBOR map with text keys, in this order, definite lengths:
//! `{"v": "pii-enclave/attestation/v1", "purpose": text,
//!   "audit_key_sha256": bytes(32) | null, "caller_data_sha256": bytes(32) | null}`.
//! Decoding rejects unknown purposes, wrong lengths, missing or extra keys, and
//! trailing bytes.

use serde::{Deserialize, Serialize};

/// The format label, the first field of every structure.
pub const LABEL: &str = "pii-enclave/attestation/v1";
/// Longest encoding (well under the NSM's 512-byte `user_data` limit).
pub const MAX_LEN: usize = 200;
/// Bounds of a caller's nonce on a document request, bytes.
pub const NONCE_MIN: usize = 8;
pub const NONCE_MAX: usize = 64;
/// Longest caller data accepted on a request (only its SHA-256 is bound).
pub const CALLER_DATA_MAX: usize = 1024;

/// The OAEP label of a Vault secret_id encrypted to the bootstrap key. A
/// ciphertext made for any other purpose (KMS's CMS key transport has no
/// label) does not decrypt under it.
pub const VAULT_BOOTSTRAP_OAEP_LABEL: &[u8] = b"pii-enclave/vault-bootstrap/v1";
/// Longest secret_id accepted through the bootstrap, bytes.
pub const SECRET_ID_MAX: usize = 256;

/// Why a document was made. Each purpose fixes what its `public_key` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Purpose {
    /// Requested through the API (`sys/attestation`): no `public_key`.
    Report,
    /// Made by the KMS seal for one `Recipient` call: `public_key` is an
    /// ephemeral RSA key that exists only inside the enclave, for that call.
    KmsRecipient,
    /// For `host-proxy vault bootstrap`: `public_key` is the enclave's
    /// RSA-3072 bootstrap key (SubjectPublicKeyInfo DER), generated inside the
    /// enclave and never exported. The operator encrypts the Vault secret_id
    /// to it with RSAES-OAEP (SHA-256, MGF1-SHA-256) and the label
    /// [`VAULT_BOOTSTRAP_OAEP_LABEL`].
    VaultBootstrap,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Report => "report",
            Purpose::KmsRecipient => "kms-recipient",
            Purpose::VaultBootstrap => "vault-bootstrap",
        }
    }
}

/// The enclave-defined `user_data` of every document it asks the NSM for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserData {
    pub v: String,
    pub purpose: Purpose,
    /// SHA-256 of the enclave's Ed25519 audit public key (raw 32 bytes), when
    /// the keyring is unsealed.
    #[serde(with = "opt_bytes32")]
    pub audit_key_sha256: Option<[u8; 32]>,
    /// SHA-256 of data the caller asked to bind (never the data itself).
    #[serde(with = "opt_bytes32")]
    pub caller_data_sha256: Option<[u8; 32]>,
}

/// Why `user_data` is not a valid structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UserDataError {
    #[error("user_data is longer than {MAX_LEN} bytes")]
    TooLong,
    #[error("user_data is not a pii-enclave attestation structure: {0}")]
    Malformed(String),
    #[error("user_data has label {0:?}, expected {LABEL:?}")]
    WrongLabel(String),
}

impl UserData {
    pub fn new(
        purpose: Purpose,
        audit_key_sha256: Option<[u8; 32]>,
        caller_data_sha256: Option<[u8; 32]>,
    ) -> UserData {
        UserData {
            v: LABEL.to_owned(),
            purpose,
            audit_key_sha256,
            caller_data_sha256,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_LEN);
        // Writing to a Vec cannot fail; a failure would be a serde bug.
        if ciborium::into_writer(self, &mut out).is_err() {
            out.clear();
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<UserData, UserDataError> {
        if bytes.len() > MAX_LEN {
            return Err(UserDataError::TooLong);
        }
        let mut r = bytes;
        let u: UserData =
            ciborium::from_reader(&mut r).map_err(|e| UserDataError::Malformed(e.to_string()))?;
        if !r.is_empty() {
            return Err(UserDataError::Malformed("trailing bytes".into()));
        }
        if u.v != LABEL {
            return Err(UserDataError::WrongLabel(u.v));
        }
        Ok(u)
    }
}

mod opt_bytes32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_bytes(b),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let v: Option<serde_bytes::ByteBuf> = Option::deserialize(d)?;
        match v {
            None => Ok(None),
            Some(b) => <[u8; 32]>::try_from(b.as_slice())
                .map(Some)
                .map_err(|_| serde::de::Error::invalid_length(b.len(), &"32 bytes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_strict_decoding() {
        let u = UserData::new(Purpose::Report, Some([7; 32]), None);
        let b = u.encode();
        assert!(b.len() <= MAX_LEN);
        assert_eq!(UserData::decode(&b).unwrap(), u);
        // Trailing bytes, truncation, wrong label, unknown purpose, short hash.
        let mut t = b.clone();
        t.push(0);
        assert!(UserData::decode(&t).is_err());
        for n in 0..b.len() {
            assert!(UserData::decode(&b[..n]).is_err(), "prefix {n}");
        }
        let mut other = u.clone();
        other.v = "something/else".into();
        assert!(matches!(
            UserData::decode(&other.encode()),
            Err(UserDataError::WrongLabel(_))
        ));
        let raw = b"\xa4avx\x1apii-enclave/attestation/v1gpurposeemagicpaudit_key_sha256\xf6rcaller_data_sha256\xf6";
        assert!(UserData::decode(raw).is_err());
        let short = b"\xa4avx\x1apii-enclave/attestation/v1gpurposefreportpaudit_key_sha256\x41\x00rcaller_data_sha256\xf6";
        assert!(UserData::decode(short).is_err());
        let good = b"\xa4avx\x1apii-enclave/attestation/v1gpurposefreportpaudit_key_sha256\xf6rcaller_data_sha256\xf6";
        assert_eq!(
            UserData::decode(good).unwrap(),
            UserData::new(Purpose::Report, None, None)
        );
        assert_eq!(UserData::new(Purpose::Report, None, None).encode(), good);
        // Caller bytes are never a valid structure by accident.
        assert!(UserData::decode(&[0xab, 0xcd]).is_err());
        assert!(UserData::decode(&[0u8; 300]).is_err());
    }
}
