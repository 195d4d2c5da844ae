//! Audit records: the format the enclave signs, the host stores and the
//! verifier checks. No crypto here — only the types and the canonical bytes.
//!
//! One JSON line per record: `{"body": Body, "hash": hex, "sig": hex}` with
//! `hash = SHA-256("pii-enclave/audit/v1" ‖ 0x00 ‖ canonical(body))` and `sig`
//! an Ed25519 signature over `hash` by the enclave's audit key. `canonical` is
//! the serde_json encoding of [`Body`] (struct field order is fixed). Each
//! enclave run writes its own stream; its record 0 is a genesis record
//! carrying the public key; record `n` carries the hash of record `n − 1`.

use serde::{Deserialize, Serialize};

/// Domain-separation prefix of record hashes.
pub const AUDIT_HASH_DOMAIN: &[u8] = b"pii-enclave/audit/v1\0";

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `genesis`, `decrypt`, `decode`.
    pub kind: String,
    /// API operation, e.g. `transit/decrypt` or `transform/decode`.
    pub op: String,
    /// Key or role name.
    pub target: String,
    /// Caller's display name.
    pub caller: String,
    /// First 16 hex digits of the caller's token hash (never the token).
    pub token: String,
    pub policies: Vec<String>,
    /// Free text the caller gave (`reason`), at most 256 characters.
    pub reason: String,
    /// Values in the request.
    pub items: u64,
    /// Genesis only: the stream's Ed25519 public key, hex.
    pub public_key: Option<String>,
}

/// The signed part of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBody {
    /// Random id of the enclave run that wrote the stream (32 hex digits).
    pub stream: String,
    pub seq: u64,
    /// Unix seconds (enclave clock).
    pub time: u64,
    /// Hash of the previous record, hex (64 zeros for genesis).
    pub prev: String,
    pub event: AuditEvent,
}

/// One stored line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub body: AuditBody,
    pub hash: String,
    pub sig: String,
}

impl AuditBody {
    /// The bytes that are hashed: domain prefix and canonical JSON.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = AUDIT_HASH_DOMAIN.to_vec();
        // Serializing a plain struct of strings, integers and a Vec cannot fail.
        out.extend_from_slice(&serde_json::to_vec(self).unwrap_or_default());
        out
    }
}

/// A stream id is 32 lowercase hex digits (safe as a file name).
pub fn valid_stream_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
