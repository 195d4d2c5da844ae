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

/// Values per encode call (keeps each request far below the sidecar's body limit).
pub const ENCODE_CHUNK: usize = 1000;

/// The enclave's deterministic tokenization through the Transform API
/// (`POST /v1/transform/encode/<role>` with `batch_input`), on the sidecar
/// or any Vault-compatible address. Plain HTTP: the sidecar listens on the
/// pod's loopback.
pub struct TransformClient {
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: hyper::Uri,
    token: String,
    transformation: String,
}

impl TransformClient {
    pub fn new(
        addr: &str,
        role: &str,
        transformation: &str,
        token: &str,
    ) -> Result<Self, TokenizeError> {
        let base = addr.trim_end_matches('/');
        // Plain HTTP carries raw subjects and the token: only to the sidecar
        // beside us on the loopback interface.
        if pii_http_client::classify(base) != Ok(pii_http_client::Reach::LoopbackHttp) {
            return Err(TokenizeError::Unreachable(format!(
                "{addr:?}: the sidecar's http:// address on the loopback interface (subjects and the token travel in it)"
            )));
        }
        let url = format!("{base}/v1/transform/encode/{role}")
            .parse()
            .map_err(|e| TokenizeError::Unreachable(format!("{addr:?}: {e}")))?;
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(TransformClient {
            http,
            url,
            token: token.to_owned(),
            transformation: transformation.to_owned(),
        })
    }

    /// One token per value, in order, in calls of at most [`ENCODE_CHUNK`]
    /// values, each bounded by a 30 s deadline (headers and body).
    pub async fn encode(&self, values: &[&str]) -> Result<Vec<String>, TokenizeError> {
        let mut out = Vec::with_capacity(values.len());
        for chunk in values.chunks(ENCODE_CHUNK) {
            let tokens =
                tokio::time::timeout(std::time::Duration::from_secs(30), self.encode_chunk(chunk))
                    .await
                    .map_err(|_| {
                        TokenizeError::Unreachable("no complete answer within 30 s".into())
                    })??;
            out.extend(tokens);
        }
        Ok(out)
    }

    async fn encode_chunk(&self, values: &[&str]) -> Result<Vec<String>, TokenizeError> {
        use http_body_util::BodyExt;
        let items: Vec<serde_json::Value> = values
            .iter()
            .map(|v| serde_json::json!({ "value": v, "transformation": self.transformation }))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "batch_input": items }))
            .map_err(|e| TokenizeError::Refused(e.to_string()))?;
        let req = hyper::Request::post(self.url.clone())
            .header("X-Vault-Token", &self.token)
            .header("Content-Type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| TokenizeError::Unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), self.http.request(req))
            .await
            .map_err(|_| TokenizeError::Unreachable("no answer within 10 s".into()))?
            .map_err(|e| TokenizeError::Unreachable(e.to_string()))?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), 64 << 20);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| TokenizeError::Unreachable(e.to_string()))?
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| TokenizeError::Refused(format!("HTTP {status}: not JSON")))?;
        if !status.is_success() {
            let errors = v["errors"].as_array().map(|e| {
                e.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            return Err(TokenizeError::Refused(format!(
                "HTTP {status}: {}",
                errors.unwrap_or_default()
            )));
        }
        let results = v["data"]["batch_results"]
            .as_array()
            .ok_or_else(|| TokenizeError::Refused("no batch_results".into()))?;
        let tokens: Vec<String> = results
            .iter()
            .map(
                |r| match (r["encoded_value"].as_str(), r["error"].as_str()) {
                    (Some(t), _) => Ok(t.to_owned()),
                    (None, e) => Err(TokenizeError::Refused(
                        e.unwrap_or("no encoded_value").to_owned(),
                    )),
                },
            )
            .collect::<Result<_, _>>()?;
        if tokens.len() != values.len() {
            return Err(TokenizeError::Count {
                sent: values.len(),
                got: tokens.len(),
            });
        }
        Ok(tokens)
    }
}

/// Subjects already tokenized: a bounded cache in front of the enclave.
pub struct TokenCache {
    table: crate::table::BoundedTable<Box<str>, Box<str>>,
    pub hits: u64,
    pub misses: u64,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            table: crate::table::BoundedTable::new(capacity),
            hits: 0,
            misses: 0,
        }
    }

    /// Counts lookups (for the metrics).
    pub fn count(&mut self, hits: usize, misses: usize) {
        self.hits += hits as u64;
        self.misses += misses as u64;
    }

    pub fn lookup(&self, subject: &str) -> Option<String> {
        self.table.get(subject).map(|t| t.to_string())
    }

    pub fn insert(&mut self, subject: &str, token: &str) {
        let (v, _) = self.table.entry(&Box::from(subject), || Box::from(token));
        *v = Box::from(token);
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
