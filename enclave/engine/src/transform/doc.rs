//! The Transform engine's persisted configuration (serde documents inside
//! the sealed keyring), the built-in alphabets and templates, and the API's
//! view of a transformation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use crate::crypto::zbytes;

// ---------------------------------------------------------------------------
// Persisted configuration

/// A named alphabet (ordered set of characters).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlphabetDoc {
    pub alphabet: String,
}

/// A regex template: capture groups select the characters to transform.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TemplateDoc {
    pub pattern: String,
    pub alphabet: String,
}

#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum TweakSource {
    Internal,
    Supplied,
    Generated,
}

#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum TokenEncoding {
    Base58,
    Hex,
}

/// What a transformation does.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Kind {
    Fpe {
        template: String,
        tweak_source: TweakSource,
    },
    Masking {
        template: String,
        masking_character: char,
    },
    Tokenization {
        prefix: String,
        encoding: TokenEncoding,
        /// `Some`: random tokens whose mappings live in the host's token store.
        #[serde(default)]
        stored: Option<StoredOpts>,
    },
}

/// Options of stored (random) tokens.
#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Debug, Default)]
pub struct StoredOpts {
    /// Longest TTL a caller may ask for, seconds; 0 = tokens may live forever.
    pub max_ttl: u64,
    /// Same value → same token id (and one stored mapping).
    pub convergent: bool,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct TransformationDoc {
    pub kind: Kind,
    pub allowed_roles: Vec<String>,
    #[serde(with = "zbytes")]
    pub key: Zeroizing<Vec<u8>>,
}

#[derive(Clone, Serialize, Deserialize, Default)]
pub struct RoleDoc {
    pub transformations: Vec<String>,
    /// The values are from a small domain (SSNs, birth dates, card BINs):
    /// every encode is audited and rate-limited per token, since an encoder
    /// can invert deterministic tokens by trying the whole domain.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub low_entropy: bool,
    /// Encodes per minute per token on a low-entropy role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode_per_minute: Option<u32>,
}

/// Encodes per minute per token on a low-entropy role, unless the role says.
pub const LOW_ENTROPY_ENCODES_PER_MINUTE: u32 = 60;

/// Everything the Transform engine persists (inside the sealed keyring).
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct TransformDoc {
    #[serde(default)]
    pub alphabets: BTreeMap<String, AlphabetDoc>,
    #[serde(default)]
    pub templates: BTreeMap<String, TemplateDoc>,
    #[serde(default)]
    pub transformations: BTreeMap<String, TransformationDoc>,
    #[serde(default)]
    pub roles: BTreeMap<String, RoleDoc>,
}

// ---------------------------------------------------------------------------
// Built-ins

pub const BUILTIN_ALPHABETS: &[(&str, &str)] = &[
    ("builtin/numeric", "0123456789"),
    ("builtin/alphalower", "abcdefghijklmnopqrstuvwxyz"),
    ("builtin/alphaupper", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    (
        "builtin/alphanumericlower",
        "0123456789abcdefghijklmnopqrstuvwxyz",
    ),
    (
        "builtin/alphanumericupper",
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    ),
    (
        "builtin/alphanumeric",
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    ),
];

/// Built-in templates: `(name, pattern, alphabet)`.
pub const BUILTIN_TEMPLATES: &[(&str, &str, &str)] = &[
    (
        "builtin/creditcardnumber",
        r"(\d{4})[- ]?(\d{4})[- ]?(\d{4})[- ]?(\d{1,7})",
        "builtin/numeric",
    ),
    (
        "builtin/socialsecuritynumber",
        r"(\d{3})-?(\d{2})-?(\d{4})",
        "builtin/numeric",
    ),
    // Phone numbers: every digit after an optional leading "+" and country code
    // separators; punctuation and spaces are kept.
    (
        "builtin/phonenumber",
        r"\+?(\d{1,3})?[ .-]?\(?(\d{3})\)?[ .-]?(\d{3})[ .-]?(\d{4})",
        "builtin/numeric",
    ),
    // Email local part (up to three dot/plus/dash separated segments); the
    // separators and the domain are kept.
    (
        "builtin/emaillocalpart",
        r"([A-Za-z0-9]+)[._+-]?([A-Za-z0-9]*)[._+-]?([A-Za-z0-9]*)@[^@\s]+",
        "builtin/alphanumeric",
    ),
];

pub fn transformation_info(name: &str, t: &TransformationDoc) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("allowed_roles".into(), json!(t.allowed_roles));
    match &t.kind {
        Kind::Fpe {
            template,
            tweak_source,
        } => {
            m.insert("type".into(), json!("fpe"));
            m.insert("templates".into(), json!([template]));
            m.insert("tweak_source".into(), json!(tweak_source));
        }
        Kind::Masking {
            template,
            masking_character,
        } => {
            m.insert("type".into(), json!("masking"));
            m.insert("templates".into(), json!([template]));
            m.insert(
                "masking_character".into(),
                json!(masking_character.to_string()),
            );
        }
        Kind::Tokenization {
            prefix,
            encoding,
            stored,
        } => {
            m.insert("type".into(), json!("tokenization"));
            match stored {
                None => {
                    m.insert("mapping_mode".into(), json!("deterministic"));
                }
                Some(o) => {
                    m.insert("mapping_mode".into(), json!("stored"));
                    m.insert("max_ttl".into(), json!(o.max_ttl));
                    m.insert("convergent".into(), json!(o.convergent));
                }
            }
            m.insert("prefix".into(), json!(prefix));
            m.insert("encoding".into(), json!(encoding));
        }
    }
    Value::Object(m)
}
