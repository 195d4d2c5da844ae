//! Errors of the enclave's API layer.
//!
//! Messages are the strings Vault/OpenBao return for the same condition
//! (clients match on them); they never contain key material or plaintext.

/// An API error: HTTP status and a client-facing message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub status: u16,
    msg: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(status: u16, msg: impl Into<String>) -> Error {
        Error {
            status,
            msg: msg.into(),
        }
    }
    /// 400 with Vault's message.
    pub fn bad(msg: impl Into<String>) -> Error {
        Error::new(400, msg)
    }
    /// 500 with a generic message; the detail is logged, not returned.
    pub fn internal(detail: &'static str) -> Error {
        tracing::error!(detail, "internal error");
        Error::new(500, "internal error")
    }
    pub fn denied() -> Error {
        Error::new(403, "permission denied")
    }
    pub fn sealed() -> Error {
        Error::new(503, "Vault is sealed")
    }
    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.msg, self.status)
    }
}

impl std::error::Error for Error {}
