//! The engine's errors, in two of the project's three tiers:
//!
//! - [`CryptoError`]: a primitive failed (random numbers, key derivation,
//!   sealing, a key of the wrong size). Detail-free on purpose: nothing about
//!   keys or inputs, and the API answers them all with a generic 500.
//! - [`EngineError`]: what an operation refuses and why, one variant per
//!   condition. `Display` is the string Vault/OpenBao return for the same
//!   condition, because clients match on it: this enum *is* the table of the
//!   engine's Vault strings. Messages never contain key material or
//!   plaintext (names of keys, roles and templates are not secret).
//!
//! The third tier, the HTTP error that renders Vault's envelope, lives in the
//! API crate (`pii_enclave::error::ApiError`).

/// Vault's message for a derived key used without `context`.
pub const MISSING_CONTEXT: &str = "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key";

/// A cryptographic primitive failed. Never carries detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("random number generator failed")]
    Random,
    #[error("key derivation failed")]
    Derive,
    #[error("encryption failed")]
    Encrypt,
    #[error("bad key length in keyring")]
    KeyLength,
    #[error("token encoding failed")]
    Encoding,
}

/// Which value a `vault:vN:` prefix was parsed from (Vault names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Versioned {
    Ciphertext,
    Signature,
    Hmac,
}

impl Versioned {
    fn name(self) -> &'static str {
        match self {
            Versioned::Ciphertext => "ciphertext",
            Versioned::Signature => "signature",
            Versioned::Hmac => "HMAC to verify",
        }
    }
}

/// How a `vault:vN:payload` value is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    NoPrefix,
    WrongFields,
    Version,
    TooNew,
}

impl Malformed {
    fn text(self) -> &'static str {
        match self {
            Malformed::NoPrefix => "no prefix",
            Malformed::WrongFields => "wrong number of fields",
            Malformed::Version => "version number could not be decoded",
            Malformed::TooNew => "version is too new",
        }
    }
}

/// An engine operation's refusal. `Display` is Vault's string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),

    // --- the keyring document (always a server-side fault)
    #[error("keyring encoding failed")]
    KeyringEncode,
    #[error("keyring decoding failed")]
    KeyringDecode,
    #[error("keyring has an unknown format")]
    KeyringFormat,
    #[error("bad audit signing key")]
    AuditKey,

    // --- Transit
    #[error("invalid ciphertext length")]
    CiphertextLength,
    /// Go's messages differ per AEAD; clients see OpenBao's.
    #[error("{}", if *.chacha { "chacha20poly1305: message authentication failed" } else { "cipher: message authentication failed" })]
    Authentication { chacha: bool },
    #[error("{MISSING_CONTEXT}")]
    MissingContext,
    #[error("no such key version")]
    NoSuchVersion,
    #[error("requested version for encryption is higher than the latest key version")]
    VersionAboveLatest,
    #[error("requested version for encryption is less than the minimum encryption key version")]
    VersionBelowMinimum,
    #[error("ciphertext or signature version is disallowed by policy (too old)")]
    VersionDisallowed,
    #[error("invalid {}: {}", .what.name(), .how.text())]
    Malformed { what: Versioned, how: Malformed },
    #[error("invalid ciphertext: could not decode base64")]
    CiphertextBase64,

    // --- Transform configuration
    #[error("alphabet {0:?} not found")]
    AlphabetNotFound(String),
    #[error("template {0:?} not found")]
    TemplateNotFound(String),
    #[error("invalid template pattern: {0}")]
    TemplatePattern(String),
    #[error("template pattern needs at least one capture group")]
    TemplateNoGroup,
    #[error("alphabet must have between 2 and 65536 characters")]
    AlphabetSize,
    #[error("alphabet contains duplicate characters")]
    AlphabetDuplicate,
    #[error("alphabet size not supported by FF1")]
    AlphabetFf1,
    #[error("role {0:?} not found")]
    RoleNotFound(String),
    #[error("transformation {transformation:?} is not part of role {role:?}")]
    NotInRole {
        transformation: String,
        role: String,
    },
    #[error("role {0:?} has no transformations")]
    RoleEmpty(String),
    #[error("transformation must be given: the role has more than one")]
    TransformationAmbiguous,
    #[error("transformation {0:?} not found")]
    TransformationNotFound(String),
    #[error("transformation {transformation:?} does not allow role {role:?}")]
    RoleNotAllowed {
        transformation: String,
        role: String,
    },

    // --- Transform operations
    #[error("value longer than {0} bytes")]
    ValueTooLong(usize),
    #[error("tweak must be 7 bytes (base64-encoded)")]
    TweakLength,
    #[error("missing tweak: this transformation uses a supplied tweak")]
    TweakMissingSupplied,
    #[error("missing tweak: give the tweak returned when the value was encoded")]
    TweakMissingGenerated,
    #[error("masking is irreversible: masked values cannot be decoded")]
    MaskingIrreversible,
    #[error("invalid token")]
    InvalidToken,
    #[error("ttl {ttl}s exceeds the transformation's max_ttl of {max}s")]
    TtlAboveMax { ttl: u64, max: u64 },
    #[error("ttl too large")]
    TtlTooLarge,
    #[error("token expired")]
    TokenExpired,
    #[error("tokenized is only supported for tokenization transformations")]
    NotTokenization,
    #[error("value does not match the transformation's template")]
    TemplateMismatch,
    /// (The character itself is not named: it is part of the value.)
    #[error("the value has a character that is not in the template's alphabet")]
    NotInAlphabet,
    #[error("value too short for format-preserving encryption: {have} characters, at least {need} needed with this alphabet")]
    FpeTooShort { have: usize, need: usize },
    #[error("value outside the format-preserving encryption domain")]
    FpeDomain,
    /// A caller used the wrong entry point for a stored tokenization (a
    /// programming error, answered with a 500).
    #[error("wrong entry point for a stored tokenization")]
    StoredEntryPoint,
    #[error("stored token mapping does not decrypt")]
    StoredMapping,
}

impl EngineError {
    /// A fault of the service rather than of the request (HTTP 500; the
    /// client sees a generic message).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            EngineError::Crypto(_)
                | EngineError::KeyringEncode
                | EngineError::KeyringDecode
                | EngineError::KeyringFormat
                | EngineError::AuditKey
                | EngineError::StoredEntryPoint
                | EngineError::StoredMapping
        )
    }

    /// A refusal that a newer keyring (written by another replica and not
    /// yet loaded here) could turn into a success.
    pub fn newer_keyring_may_help(&self) -> bool {
        matches!(
            self,
            EngineError::Malformed {
                how: Malformed::TooNew,
                ..
            }
        )
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
