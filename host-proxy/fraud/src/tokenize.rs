//! Subjects become tokens before anything is kept.
//!
//! Online, the token is the enclave's deterministic tokenization of the
//! subject (`transform/encode/<role>` through the sidecar; see
//! `host-proxy fraud serve`), so the same user has the same token on every
//! replica and nothing on the host can reverse it. Offline (`fraud replay`,
//! `fraud drill`), [`LocalPseudonyms`] stands in: HMAC-SHA-256 under a key
//! drawn for the run and never written anywhere, so the output of a replay
//! carries no raw subject either.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("the tokenizer answered {got} tokens for {sent} subjects")]
    Count { sent: usize, got: usize },
    #[error("tokenization refused: {0}")]
    Refused(String),
    #[error("tokenizer unreachable: {0}")]
    Unreachable(String),
    #[error("no randomness for the pseudonym key: {0}")]
    Entropy(String),
}

pub trait Tokenizer {
    /// One token per subject, in order.
    fn tokenize(&mut self, subjects: &[&str]) -> Result<Vec<String>, TokenizeError>;
}

pub struct LocalPseudonyms {
    /// One SHA-256 block: HMAC's infallible fixed-size key.
    key: [u8; 64],
}

impl LocalPseudonyms {
    /// A fresh random key (never stored): pseudonyms are stable within the run only.
    pub fn random() -> Result<Self, TokenizeError> {
        use rand::TryRng;
        let mut key = [0u8; 64];
        rand::rngs::SysRng
            .try_fill_bytes(&mut key)
            .map_err(|e| TokenizeError::Entropy(e.to_string()))?;
        Ok(LocalPseudonyms { key })
    }

    /// A fixed key, for reproducible drills and tests.
    pub fn with_key(seed: [u8; 32]) -> Self {
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&seed);
        LocalPseudonyms { key }
    }

    pub fn one(&self, subject: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.key.into());
        mac.update(subject.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut s = String::with_capacity(4 + 32);
        s.push_str("psn_");
        for b in &tag[..16] {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl Tokenizer for LocalPseudonyms {
    fn tokenize(&mut self, subjects: &[&str]) -> Result<Vec<String>, TokenizeError> {
        Ok(subjects.iter().map(|s| self.one(s)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_hide_the_subject() {
        let mut a = LocalPseudonyms::with_key([1; 32]);
        let b = LocalPseudonyms::with_key([2; 32]);
        let t = a
            .tokenize(&["alice@example.com", "alice@example.com", "bob"])
            .expect("tokens");
        assert_eq!(t[0], t[1]);
        assert_ne!(t[0], t[2]);
        assert_ne!(t[0], b.one("alice@example.com"));
        assert!(!t[0].contains("alice"));
        assert_eq!(t[0].len(), 36);
        let r1 = LocalPseudonyms::random().expect("random").one("x");
        let r2 = LocalPseudonyms::random().expect("random").one("x");
        assert_ne!(r1, r2);
    }
}
