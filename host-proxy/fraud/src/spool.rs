//! The disk spool behind the signal producer: when the broker is down,
//! signals are appended (fsynced) to numbered segment files and replayed in
//! order when it returns. A segment is deleted only after every record in it
//! was acknowledged, so a crash during replay sends some records twice
//! (at least once), never zero times. The spool has a byte cap; when it is
//! full, writers are told so (HTTP ingest answers 503 and the Kafka consumer
//! stops committing), so nothing is dropped silently.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Segments are closed at this size and a new one started.
pub const SEGMENT_BYTES: u64 = 4 << 20;

/// One spooled message: the Kafka key and value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("spool is full ({bytes} bytes of {cap}); the broker has been down too long")]
    Full { bytes: u64, cap: u64 },
}

pub struct Spool {
    dir: PathBuf,
    cap: u64,
    /// Segment numbers on disk, oldest first.
    segments: Vec<u64>,
    bytes: u64,
    current: Option<(u64, File, u64)>,
    /// Records in corrupt lines found while reading (skipped, counted).
    pub corrupt: u64,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, picking up segments a previous
    /// run left behind.
    pub fn open(dir: &Path, cap: u64) -> Result<Self, SpoolError> {
        let err = |source| SpoolError::Io {
            dir: dir.to_owned(),
            source,
        };
        fs::create_dir_all(dir).map_err(err)?;
        let mut segments = Vec::new();
        let mut bytes = 0;
        for e in fs::read_dir(dir).map_err(err)? {
            let e = e.map_err(err)?;
            let name = e.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".ndjson"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            bytes += e.metadata().map_err(err)?.len();
            segments.push(n);
        }
        segments.sort_unstable();
        Ok(Spool {
            dir: dir.to_owned(),
            cap,
            segments,
            bytes,
            current: None,
            corrupt: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:020}.ndjson"))
    }

    fn io(&self, source: io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Appends records and fsyncs them before returning.
    pub fn append(&mut self, records: &[Record]) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(|e| self.io(e.into()))?;
            buf.push(b'\n');
        }
        let len = buf.len() as u64;
        if self.bytes + len > self.cap {
            return Err(SpoolError::Full {
                bytes: self.bytes,
                cap: self.cap,
            });
        }
        let rotate = match &self.current {
            Some((_, _, size)) => size + len > SEGMENT_BYTES,
            None => true,
        };
        if rotate {
            let n = self.segments.last().map_or(1, |l| l + 1);
            let path = self.path(n);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| self.io(e))?;
            // The new file's name must survive a crash too.
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            self.segments.push(n);
            self.current = Some((n, f, 0));
        }
        let Some((_, f, size)) = self.current.as_mut() else {
            return Ok(());
        };
        if let Err(source) = f.write_all(&buf).and_then(|()| f.sync_data()) {
            // Cut a partial write back off, so the next record does not
            // land on a torn line and get skipped on replay.
            let _ = f.set_len(*size);
            return Err(SpoolError::Io {
                dir: self.dir.clone(),
                source,
            });
        }
        *size += len;
        self.bytes += len;
        Ok(())
    }

    /// The oldest segment's records, without removing them. Appends go to a
    /// new segment from now on, so the one returned no longer changes.
    pub fn oldest(&mut self) -> Result<Option<(u64, Vec<Record>)>, SpoolError> {
        let Some(&n) = self.segments.first() else {
            return Ok(None);
        };
        if self.current.as_ref().is_some_and(|(c, _, _)| *c == n) {
            self.current = None;
        }
        let f = File::open(self.path(n)).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for line in BufReader::new(f).lines() {
            let line = line.map_err(|e| self.io(e))?;
            match serde_json::from_str::<Record>(&line) {
                Ok(r) => out.push(r),
                // A torn last line from a crash mid-write: skip it, count it.
                Err(_) => self.corrupt += 1,
            }
        }
        Ok(Some((n, out)))
    }

    /// Deletes a segment whose records were all delivered.
    pub fn remove(&mut self, n: u64) -> Result<(), SpoolError> {
        let path = self.path(n);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        fs::remove_file(&path).map_err(|e| self.io(e))?;
        self.segments.retain(|&s| s != n);
        if self.current.as_ref().is_some_and(|(c, _, _)| *c == n) {
            self.current = None;
        }
        self.bytes = self.bytes.saturating_sub(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Record {
        Record {
            key: format!("k{i}"),
            value: format!("{{\"n\":{i}}}"),
        }
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path(), 1 << 30).expect("open");
        for chunk in 0..30 {
            let batch: Vec<Record> = (chunk * 100..chunk * 100 + 100).map(rec).collect();
            s.append(&batch).expect("append");
        }
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 30).expect("reopen");
        let mut got = Vec::new();
        while let Some((n, recs)) = s.oldest().expect("read") {
            got.extend(recs);
            s.remove(n).expect("remove");
        }
        assert_eq!(got, (0..3000).map(rec).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn a_full_spool_refuses_instead_of_dropping() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path(), 200).expect("open");
        s.append(&[rec(1), rec(2)]).expect("fits");
        let big: Vec<Record> = (0..20).map(rec).collect();
        assert!(matches!(s.append(&big), Err(SpoolError::Full { .. })));
        let (_, recs) = s.oldest().expect("read").expect("segment");
        assert_eq!(recs, vec![rec(1), rec(2)]);
    }

    #[test]
    fn a_torn_line_is_skipped_and_counted() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path(), 1 << 20).expect("open");
        s.append(&[rec(1)]).expect("append");
        let (n, _) = s.oldest().expect("read").expect("segment");
        let mut f = OpenOptions::new()
            .append(true)
            .open(s.path(n))
            .expect("open segment");
        f.write_all(b"{\"key\":\"k2\",\"val").expect("torn write");
        let (_, recs) = s.oldest().expect("read").expect("segment");
        assert_eq!(recs, vec![rec(1)]);
        assert_eq!(s.corrupt, 1);
    }
}
