//! Storage for the enclave's signed audit records: one append-only JSON-lines
//! file per stream (`<stream>.jsonl`), synced to disk before the enclave is
//! told the records are stored. The host cannot forge or silently edit them:
//! `verifier audit` checks the hash chain and signatures.

use std::io::Write;
use std::path::{Path, PathBuf};

use pii_proto::audit::valid_stream_id;

#[derive(Debug, Clone)]
pub struct AuditStore {
    dir: PathBuf,
    fsync: bool,
}

impl AuditStore {
    pub fn open(dir: impl AsRef<Path>, fsync: bool) -> std::io::Result<AuditStore> {
        std::fs::create_dir_all(dir.as_ref())?;
        Ok(AuditStore {
            dir: dir.as_ref().to_path_buf(),
            fsync,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append `records` (in order) to `stream`'s file.
    pub async fn append(&self, stream: &str, records: Vec<Vec<u8>>) -> std::io::Result<()> {
        if !valid_stream_id(stream) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "invalid audit stream id",
            ));
        }
        if records.iter().any(|r| r.contains(&b'\n') || r.is_empty()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "audit record is not one line",
            ));
        }
        let path = self.dir.join(format!("{stream}.jsonl"));
        let fsync = self.fsync;
        tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
            for r in &records {
                buf.extend_from_slice(r);
                buf.push(b'\n');
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&buf)?;
            if fsync {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_lines_and_rejects_bad_input() {
        let d = tempfile::tempdir().unwrap();
        let s = AuditStore::open(d.path(), true).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        s.append(id, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()])
            .await
            .unwrap();
        s.append(id, vec![b"{\"c\":3}".to_vec()]).await.unwrap();
        let text = std::fs::read_to_string(d.path().join(format!("{id}.jsonl"))).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
        assert!(s
            .append("../../etc/passwd", vec![b"x".to_vec()])
            .await
            .is_err());
        assert!(s.append(id, vec![b"two\nlines".to_vec()]).await.is_err());
    }
}
