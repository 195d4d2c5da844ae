//! Storage for sealed keyring blobs. The host cannot read them; it only keeps
//! them durable and versioned.
//!
//! [`FileStore`] keeps one file per version (`keyring-00000000000000000007.blob`)
//! in a directory. A write of version `n+1` is a compare-and-swap: the blob is
//! written to a temporary file, synced, then hard-linked to its final name,
//! which fails if that version exists. So two replicas (or two processes on a
//! shared volume) can never both win, and a reader never sees a partial blob.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use pii_proto::SealedBlob;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("keyring store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("keyring store holds no version {0} to compare against")]
    Missing(u64),
}

/// Outcome of a compare-and-swap write.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Stored(u64),
    Conflict(SealedBlob),
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store of versioned sealed blobs.
pub trait KeyringStore: Send + Sync + 'static {
    /// The newest blob, if any.
    fn latest(&self) -> StoreFuture<'_, Option<SealedBlob>>;
    /// Newest version number (0 = none), cheaply.
    fn latest_version(&self) -> StoreFuture<'_, u64>;
    /// Store `bytes` as `expected + 1` iff the newest version is `expected`.
    fn put(&self, expected: u64, bytes: Vec<u8>) -> StoreFuture<'_, Put>;
}

/// Blobs as files in a directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
    /// Versions kept on disk besides the newest (older ones are pruned).
    keep: usize,
}

fn file_name(v: u64) -> String {
    format!("keyring-{v:020}.blob")
}

fn parse_name(n: &str) -> Option<u64> {
    n.strip_prefix("keyring-")?
        .strip_suffix(".blob")?
        .parse()
        .ok()
}

impl FileStore {
    pub fn open(dir: impl AsRef<Path>) -> std::io::Result<FileStore> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        Ok(FileStore { dir, keep: 16 })
    }

    fn versions(&self) -> std::io::Result<Vec<u64>> {
        let mut v: Vec<u64> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(parse_name))
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    fn newest(&self) -> std::io::Result<u64> {
        Ok(self.versions()?.last().copied().unwrap_or(0))
    }

    fn read(&self, v: u64) -> std::io::Result<SealedBlob> {
        let bytes = std::fs::read(self.dir.join(file_name(v)))?;
        Ok(SealedBlob { version: v, bytes })
    }

    fn latest_sync(&self) -> std::io::Result<Option<SealedBlob>> {
        match self.newest()? {
            0 => Ok(None),
            v => self.read(v).map(Some),
        }
    }

    fn put_sync(&self, expected: u64, bytes: &[u8]) -> Result<Put, StoreError> {
        let newest = self.newest()?;
        if newest != expected {
            return Ok(match self.latest_sync()? {
                Some(b) => Put::Conflict(b),
                None => return Err(StoreError::Missing(expected)),
            });
        }
        let next = expected + 1;
        let tmp = self.dir.join(format!(
            ".tmp-{next}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        let res = std::fs::hard_link(&tmp, self.dir.join(file_name(next)));
        let _ = std::fs::remove_file(&tmp);
        match res {
            Ok(()) => {
                if let Ok(d) = std::fs::File::open(&self.dir) {
                    let _ = d.sync_all();
                }
                self.prune();
                Ok(Put::Stored(next))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match self.latest_sync()? {
                Some(b) => Ok(Put::Conflict(b)),
                None => Err(StoreError::Missing(expected)),
            },
            Err(e) => Err(e.into()),
        }
    }

    fn prune(&self) {
        if let Ok(v) = self.versions() {
            if v.len() > self.keep + 1 {
                for old in &v[..v.len() - self.keep - 1] {
                    let _ = std::fs::remove_file(self.dir.join(file_name(*old)));
                }
            }
        }
    }
}

impl KeyringStore for FileStore {
    fn latest(&self) -> StoreFuture<'_, Option<SealedBlob>> {
        let s = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || s.latest_sync())
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .map_err(Into::into)
        })
    }

    fn latest_version(&self) -> StoreFuture<'_, u64> {
        let s = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || s.newest())
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
                .map_err(Into::into)
        })
    }

    fn put(&self, expected: u64, bytes: Vec<u8>) -> StoreFuture<'_, Put> {
        let s = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || s.put_sync(expected, &bytes))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compare_and_swap() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        assert_eq!(s.latest().await.unwrap(), None);
        assert_eq!(s.put(0, b"one".to_vec()).await.unwrap(), Put::Stored(1));
        assert_eq!(s.put(1, b"two".to_vec()).await.unwrap(), Put::Stored(2));
        // A writer that still believes version 1 is newest loses.
        let lost = s.put(1, b"stale".to_vec()).await.unwrap();
        assert_eq!(
            lost,
            Put::Conflict(SealedBlob {
                version: 2,
                bytes: b"two".to_vec()
            })
        );
        assert_eq!(s.latest().await.unwrap().unwrap().bytes, b"two");
        assert!(matches!(
            s.put(5, b"x".to_vec()).await,
            Ok(Put::Conflict(_))
        ));
        // Another process on the same directory sees the same state.
        let s2 = FileStore::open(d.path()).unwrap();
        assert_eq!(s2.latest_version().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn racing_writers_one_wins() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        s.put(0, b"base".to_vec()).await.unwrap();
        let mut tasks = vec![];
        for i in 0..16u8 {
            let s = s.clone();
            tasks.push(tokio::spawn(
                async move { s.put(1, vec![i]).await.unwrap() },
            ));
        }
        let mut wins = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Put::Stored(2)) {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
        assert_eq!(s.latest_version().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn prunes_old_versions() {
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::open(d.path()).unwrap();
        for v in 0..40u64 {
            s.put(v, vec![v as u8]).await.unwrap();
        }
        assert_eq!(s.versions().unwrap().len(), 17);
        assert_eq!(s.latest().await.unwrap().unwrap().version, 40);
    }
}
