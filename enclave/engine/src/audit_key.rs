//! The audit log's signing key, kept in the keyring (so it is sealed with
//! it and survives restarts; the host never holds it).

use aws_lc_rs::signature::Ed25519KeyPair;
use zeroize::Zeroizing;

use crate::error::{CryptoError, EngineError, Result};

/// Parse a stored PKCS#8 Ed25519 audit key.
pub fn load(pkcs8: &[u8]) -> Result<Ed25519KeyPair> {
    Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| EngineError::AuditKey)
}

/// A fresh PKCS#8 Ed25519 key.
pub fn generate() -> Result<Zeroizing<Vec<u8>>> {
    let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| CryptoError::Random)?;
    Ok(Zeroizing::new(doc.as_ref().to_vec()))
}
