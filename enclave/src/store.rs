//! The keyring storage seam: where sealed blobs, audit records and token
//! mappings go (the host's store over the link, or memory in tests).

use std::future::Future;
use std::pin::Pin;

use pii_proto::SealedBlob;

// ---------------------------------------------------------------------------
// Keyring storage seam

/// Why the host's store could not be used.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("keyring store unavailable: {0}")]
pub struct StoreError(pub String);

/// Result of a compare-and-swap write.
#[derive(Debug)]
pub enum StoreOutcome {
    Stored(u64),
    Conflict(SealedBlob),
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where sealed keyring blobs go (the host's store, reached over the link).
pub trait BlobStore: Send + Sync {
    fn load(&self) -> StoreFuture<'_, Option<SealedBlob>>;
    fn store(&self, expected: u64, blob: Vec<u8>) -> StoreFuture<'_, StoreOutcome>;
    /// Durably append audit records (JSON lines, in order) to `stream`.
    fn append_audit<'a>(&'a self, stream: &'a str, records: Vec<Vec<u8>>) -> StoreFuture<'a, ()>;
    /// Durably store token mappings (ciphertexts under keyed-hash keys).
    fn token_put(&self, entries: Vec<pii_proto::TokenEntry>) -> StoreFuture<'_, ()>;
    /// Fetch token mappings, one answer per key.
    fn token_get(&self, keys: Vec<String>) -> StoreFuture<'_, Vec<Option<Vec<u8>>>>;
    /// Delete mappings that expired before `now`.
    fn token_tidy(&self, now: u64) -> StoreFuture<'_, u64>;
}

/// A [`BlobStore`] in memory, with compare-and-swap: for tests, fuzzing and
/// benchmarks of the engine without a host.
#[derive(Default)]
pub struct MemoryStore(
    std::sync::Mutex<Vec<Vec<u8>>>,
    pub std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    std::sync::Mutex<std::collections::HashMap<String, pii_proto::TokenEntry>>,
);

impl BlobStore for MemoryStore {
    fn load(&self) -> StoreFuture<'_, Option<SealedBlob>> {
        let r = self
            .0
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|v| {
                v.last().map(|b| SealedBlob {
                    version: v.len() as u64,
                    bytes: b.clone(),
                })
            });
        Box::pin(async move { r })
    }

    fn store(&self, expected: u64, blob: Vec<u8>) -> StoreFuture<'_, StoreOutcome> {
        let r = self
            .0
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|mut v| {
                if v.len() as u64 == expected {
                    v.push(blob);
                    StoreOutcome::Stored(v.len() as u64)
                } else {
                    StoreOutcome::Conflict(SealedBlob {
                        version: v.len() as u64,
                        bytes: v.last().cloned().unwrap_or_default(),
                    })
                }
            });
        Box::pin(async move { r })
    }

    fn append_audit<'a>(&'a self, stream: &'a str, records: Vec<Vec<u8>>) -> StoreFuture<'a, ()> {
        let r = self
            .1
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|mut log| log.extend(records.into_iter().map(|r| (stream.to_owned(), r))));
        Box::pin(async move { r })
    }

    fn token_put(&self, entries: Vec<pii_proto::TokenEntry>) -> StoreFuture<'_, ()> {
        let r = self
            .2
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|mut m| {
                for e in entries {
                    m.insert(e.key.clone(), e);
                }
            });
        Box::pin(async move { r })
    }

    fn token_get(&self, keys: Vec<String>) -> StoreFuture<'_, Vec<Option<Vec<u8>>>> {
        let r = self
            .2
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|m| {
                keys.iter()
                    .map(|k| m.get(k).map(|e| e.value.clone()))
                    .collect()
            });
        Box::pin(async move { r })
    }

    fn token_tidy(&self, now: u64) -> StoreFuture<'_, u64> {
        let r = self
            .2
            .lock()
            .map_err(|_| StoreError("poisoned".into()))
            .map(|mut m| {
                let before = m.len();
                m.retain(|_, e| e.expires_at == 0 || e.expires_at >= now);
                (before - m.len()) as u64
            });
        Box::pin(async move { r })
    }
}
