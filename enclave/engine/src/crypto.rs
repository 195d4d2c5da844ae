//! The primitives every layer above shares, one copy each: random bytes,
//! HKDF-SHA256, and the AEAD framing `nonce ‖ ciphertext ‖ tag` used by
//! Transit ciphertexts, tokens, token mappings and the seals' envelopes.
//! Errors here are detail-free ([`CryptoError`], [`OpenError`]).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use crate::error::CryptoError;

/// Why [`open`] refused: too short to hold a nonce and a tag, or the tag did
/// not verify (wrong key, associated data or tampering; never says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("sealed data is too short")]
    Short,
    #[error("message authentication failed")]
    Authentication,
}

/// Fill `buf` from the enclave's CSPRNG.
pub fn random(buf: &mut [u8]) -> Result<(), CryptoError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| CryptoError::Random)
}

/// `n` random bytes, zeroized on drop.
pub fn random_vec(n: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut v = Zeroizing::new(vec![0u8; n]);
    random(&mut v)?;
    Ok(v)
}

/// A fresh random AEAD nonce.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut n = [0u8; NONCE_LEN];
    random(&mut n)?;
    Ok(n)
}

struct HkdfLen(usize);
impl hkdf::KeyType for HkdfLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA256 (empty salt) of `ikm` with `info` given in parts.
pub fn hkdf_sha256(
    ikm: &[u8],
    info: &[&[u8]],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(ikm);
    let okm = prk
        .expand(info, HkdfLen(len))
        .map_err(|_| CryptoError::Derive)?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    okm.fill(&mut out).map_err(|_| CryptoError::Derive)?;
    Ok(out)
}

/// Seal under `nonce`: `prefix ‖ nonce ‖ ciphertext ‖ tag`. The caller
/// guarantees the nonce is unique for the key (random, budgeted, or derived
/// from the input for convergent encryption).
pub fn seal_framed(
    key: &LessSafeKey,
    prefix: &[u8],
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let tag_len = key.algorithm().tag_len();
    let start = prefix.len() + NONCE_LEN;
    let mut out = Vec::with_capacity(start + plaintext.len() + tag_len);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[start..],
        )
        .map_err(|_| CryptoError::Encrypt)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Seal under a fresh random nonce: `nonce ‖ ciphertext ‖ tag`.
pub fn seal(key: &LessSafeKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    seal_framed(key, &[], random_nonce()?, plaintext, aad)
}

/// Inverse of [`seal`] / [`seal_framed`] (after the caller strips its
/// prefix): the plaintext, zeroized on drop.
pub fn open(key: &LessSafeKey, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.len() < NONCE_LEN + key.algorithm().tag_len() {
        return Err(OpenError::Short);
    }
    let (n, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| OpenError::Short)?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let len = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| OpenError::Authentication)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// Serde for secret bytes: CBOR byte strings in, [`Zeroizing`] buffers out.
/// `#[serde(with = "pii_engine::crypto::zbytes")]`.
pub mod zbytes {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(v: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        Ok(Zeroizing::new(b.into_vec()))
    }

    /// The same for an optional value.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use zeroize::Zeroizing;

        pub fn serialize<S: Serializer>(
            v: &Option<Zeroizing<Vec<u8>>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_some(serde_bytes::Bytes::new(b)),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Zeroizing<Vec<u8>>>, D::Error> {
            let b: Option<serde_bytes::ByteBuf> = Deserialize::deserialize(d)?;
            Ok(b.map(|b| Zeroizing::new(b.into_vec())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::aead::{UnboundKey, AES_256_GCM};

    fn key() -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("key"))
    }

    #[test]
    fn seal_open_round_trip_and_refusals() {
        let k = key();
        let s = seal(&k, b"secret", b"ad").expect("seal");
        assert_eq!(&open(&k, &s, b"ad").expect("open")[..], b"secret");
        assert_eq!(open(&k, &s, b"other"), Err(OpenError::Authentication));
        assert_eq!(open(&k, &s[..20], b"ad"), Err(OpenError::Short));
        let mut t = s.clone();
        t[13] ^= 1;
        assert_eq!(open(&k, &t, b"ad"), Err(OpenError::Authentication));
        let framed = seal_framed(&k, &[9], [1; NONCE_LEN], b"x", b"").expect("seal");
        assert_eq!(framed[0], 9);
        assert_eq!(&open(&k, &framed[1..], b"").expect("open")[..], b"x");
    }
}
