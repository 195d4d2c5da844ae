//! The API's error: the third tier. One type renders Vault's envelope
//! (`{"errors":[…]}` with the HTTP status); it is built from the engine's
//! typed refusals ([`EngineError`], whose `Display` is Vault's string) or from
//! the API's own checks, whose Vault strings are collected in [`vault`].
//!
//! Messages never contain key material or plaintext. Internal faults answer
//! a generic "internal error" and log their detail.

use pii_engine::EngineError;

/// An API error: HTTP status and a client-facing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    msg: String,
    /// The refusal might not hold against a newer keyring (another replica
    /// wrote a key or version this one has not loaded): the server reloads
    /// once and retries.
    pub newer_keyring_may_help: bool,
}

/// The old name, kept for the API modules.
pub type Error = ApiError;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Vault's strings for conditions the API layer itself detects. Clients
/// match on these; keep them byte-identical to OpenBao's.
pub mod vault {
    pub const PERMISSION_DENIED: &str = "permission denied";
    pub const SEALED: &str = "Vault is sealed";
    pub const INTERNAL: &str = "internal error";
    pub const UNSUPPORTED_PATH: &str = "1 error occurred:\n\t* unsupported path\n\n";
    pub const UNSUPPORTED_OP: &str = "1 error occurred:\n\t* unsupported operation\n\n";
    pub const KEY_NOT_FOUND: &str = "key not found";
    pub const ENCRYPTION_KEY_NOT_FOUND: &str = "encryption key not found";
}

impl ApiError {
    pub fn new(status: u16, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            msg: msg.into(),
            newer_keyring_may_help: false,
        }
    }
    /// 400 with Vault's message.
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError::new(400, msg)
    }
    /// 500 with a generic message; the detail is logged, not returned.
    pub fn internal(detail: &'static str) -> ApiError {
        tracing::error!(detail, "internal error");
        ApiError::new(500, vault::INTERNAL)
    }
    pub fn denied() -> ApiError {
        ApiError::new(403, vault::PERMISSION_DENIED)
    }
    pub fn sealed() -> ApiError {
        ApiError::new(503, vault::SEALED)
    }
    /// A key that is not in this keyring (a newer one may have it).
    pub fn key_not_found(msg: &'static str) -> ApiError {
        ApiError {
            newer_keyring_may_help: true,
            ..ApiError::bad(msg)
        }
    }
    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        if e.is_internal() {
            tracing::error!(detail = %e, "internal error");
            return ApiError::new(500, vault::INTERNAL);
        }
        ApiError {
            newer_keyring_may_help: e.newer_keyring_may_help(),
            ..ApiError::bad(e.to_string())
        }
    }
}

impl From<pii_engine::CryptoError> for ApiError {
    fn from(e: pii_engine::CryptoError) -> ApiError {
        ApiError::from(EngineError::from(e))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.msg, self.status)
    }
}

impl std::error::Error for ApiError {}
