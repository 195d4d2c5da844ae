//! Transit's operations on one key: the version to encrypt with, and the
//! `vault:vN:base64` ciphertext format, with Vault's checks and messages.
//! No I/O: parameters are parsed, nonces budgeted and results rendered by
//! the API layer.

use zeroize::Zeroizing;

use crate::b64;
use crate::error::{EngineError, Malformed, Result, Versioned};
use crate::keyring::{Key, KeyDoc};

/// The version to encrypt with (`requested` 0 or absent: the latest),
/// checked as Vault does.
pub fn encryption_version(k: &KeyDoc, requested: Option<i64>) -> Result<u32> {
    match requested {
        None | Some(0) => Ok(k.latest_version),
        Some(v) => {
            if v > i64::from(k.latest_version) {
                return Err(EngineError::VersionAboveLatest);
            }
            if k.min_encryption_version > 0 && v < i64::from(k.min_encryption_version) {
                return Err(EngineError::VersionBelowMinimum);
            }
            if v < i64::from(k.min_decryption_version) || !k.versions.contains_key(&(v as u32)) {
                return Err(EngineError::NoSuchVersion);
            }
            Ok(v as u32)
        }
    }
}

/// Encrypt under `version`: `vault:v<version>:<base64(nonce ‖ ct ‖ tag)>`.
pub fn encrypt(
    k: &Key,
    version: u32,
    plaintext: &[u8],
    context: Option<&[u8]>,
    ad: &[u8],
) -> Result<String> {
    let vk = k.version(version).ok_or(EngineError::NoSuchVersion)?;
    let op = k.op_key(vk, context)?;
    let ct = op.seal(plaintext, ad)?;
    let mut out = String::with_capacity(12 + ct.len() * 4 / 3 + 4);
    out.push_str("vault:v");
    out.push_str(&version.to_string());
    out.push(':');
    b64::encode_to(&ct, &mut out);
    Ok(out)
}

/// Split `vault:vN:payload`, with Vault's checks and messages.
pub fn parse_versioned<'a>(k: &KeyDoc, value: &'a str, what: Versioned) -> Result<(u32, &'a str)> {
    let bad = |how| EngineError::Malformed { what, how };
    let rest = value
        .strip_prefix("vault:v")
        .ok_or(bad(Malformed::NoPrefix))?;
    let (ver, payload) = rest.split_once(':').ok_or(bad(Malformed::WrongFields))?;
    let ver: i64 = ver.parse().map_err(|_| bad(Malformed::Version))?;
    let ver = if ver == 0 { 1 } else { ver };
    if ver < 0 {
        return Err(bad(Malformed::Version));
    }
    if ver > i64::from(k.latest_version) {
        return Err(bad(Malformed::TooNew));
    }
    if ver < i64::from(k.min_decryption_version) {
        return Err(EngineError::VersionDisallowed);
    }
    Ok((ver as u32, payload))
}

/// Decrypt a `vault:vN:` ciphertext.
pub fn decrypt(
    k: &Key,
    ciphertext: &str,
    context: Option<&[u8]>,
    ad: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let (ver, payload) = parse_versioned(&k.doc, ciphertext, Versioned::Ciphertext)?;
    let raw = b64::decode(payload).map_err(|_| EngineError::CiphertextBase64)?;
    let vk = k.version(ver).ok_or(EngineError::VersionDisallowed)?;
    let op = k.op_key(vk, context)?;
    op.open(&raw, ad)
}
