//! Audit records: the format the enclave signs, the host stores and the
//! verifier checks. No crypto here — only the types and the canonical bytes.
//!
//! One JSON line per record: `{"body": Body, "hash": hex, "sig": hex}` with
//! `hash = SHA-256("pii-enclave/audit/v1" ‖ 0x00 ‖ canonical(body))` and `sig`
//! an Ed25519 signature over `hash` by the enclave's audit key. `canonical` is
//! the serde_json encoding of [`Body`] (struct field order is fixed). Each
//! enclave run writes its own stream; its record 0 is a genesis record
//! carrying the public key; record `n` carries the hash of record `n − 1`.

use serde::{Deserialize, Serialize};

/// Domain-separation prefix of record hashes.
pub const AUDIT_HASH_DOMAIN: &[u8] = b"pii-enclave/audit/v1\0";

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `genesis`, `decrypt`, `decode`.
    pub kind: String,
    /// API operation, e.g. `transit/decrypt` or `transform/decode`.
    pub op: String,
    /// Key or role name.
    pub target: String,
    /// Caller's display name.
    pub caller: String,
    /// First 16 hex digits of the caller's token hash (never the token).
    pub token: String,
    pub policies: Vec<String>,
    /// Free text the caller gave (`reason`), at most 256 characters.
    pub reason: String,
    /// Values in the request.
    pub items: u64,
    /// Genesis only: the stream's Ed25519 public key, hex.
    pub public_key: Option<String>,
    /// Genesis only: the heads of earlier streams this one follows (the
    /// stream this run abandoned after a failed write, and the checkpoints
    /// the anchor held when the run began). A deleted stream or tail is a
    /// link that finds no record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Checkpoint>,
}

/// A position in the log: record `seq` of `stream`, whose hash is `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub stream: String,
    pub seq: u64,
    pub hash: String,
}

/// A checkpoint with the enclave's proof: `sig` is the audit key's
/// signature of the record (Ed25519 over the raw 32-byte `hash`, the same
/// signature the record carries), so no one else can make one and a
/// checkpoint whose record is missing proves a deletion. The anchor keeps the
/// newest per stream; every decrypt and decode answer carries its own
/// record's (`X-Pii-Audit-Receipt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    #[serde(flatten)]
    pub point: Checkpoint,
    /// Unix seconds (enclave clock) of the record; orders the anchor's set.
    pub time: u64,
    /// The record's signature, hex.
    pub sig: String,
    /// In the anchor's set only: what this stream's genesis linked to. An
    /// entry is dropped from the set only once another entry's stream links
    /// to it at or past its position, so every stream stays reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Checkpoint>,
}

/// Why a receipt or checkpoint set does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("a receipt is stream:seq:hash:time:sig (hex and decimal)")]
    Receipt,
    #[error("not a checkpoint set: {0}")]
    Set(String),
}

impl SignedCheckpoint {
    /// The header form, `stream:seq:hash:time:sig`.
    pub fn to_receipt(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.point.stream, self.point.seq, self.point.hash, self.time, self.sig
        )
    }

    pub fn parse_receipt(s: &str) -> Result<SignedCheckpoint, CheckpointError> {
        let p: Vec<&str> = s.trim().split(':').collect();
        let hexlen = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
        match p.as_slice() {
            [stream, seq, hash, time, sig]
                if valid_stream_id(stream) && hexlen(hash, 64) && hexlen(sig, 128) =>
            {
                Ok(SignedCheckpoint {
                    point: Checkpoint {
                        stream: (*stream).to_owned(),
                        seq: seq.parse().map_err(|_| CheckpointError::Receipt)?,
                        hash: hash.to_ascii_lowercase(),
                    },
                    time: time.parse().map_err(|_| CheckpointError::Receipt)?,
                    sig: sig.to_ascii_lowercase(),
                    links: vec![],
                })
            }
            _ => Err(CheckpointError::Receipt),
        }
    }
}

/// Entries the anchor's set may hold (uncovered entries are never dropped;
/// past this, publishing fails and, with strict checkpoints, reveals fail
/// closed).
pub const HARD_MAX_ANCHORED_STREAMS: usize = 1024;
/// Largest serialized set (DynamoDB items stop at 400 KB).
pub const MAX_SET_BYTES: usize = 350 * 1024;

/// Add `l` to `links`, keeping one link per stream: the furthest.
pub fn add_link(links: &mut Vec<Checkpoint>, l: Checkpoint) {
    match links.iter_mut().find(|x| x.stream == l.stream) {
        Some(x) if x.seq >= l.seq => {}
        Some(x) => *x = l,
        None => links.push(l),
    }
}

/// What the anchor stores: the newest signed checkpoint of each recent
/// stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSet {
    pub v: u32,
    pub checkpoints: Vec<SignedCheckpoint>,
}

impl CheckpointSet {
    pub fn parse(bytes: &[u8]) -> Result<CheckpointSet, CheckpointError> {
        let set: CheckpointSet =
            serde_json::from_slice(bytes).map_err(|e| CheckpointError::Set(e.to_string()))?;
        if set.v != 1 {
            return Err(CheckpointError::Set(format!("version {}", set.v)));
        }
        if set
            .checkpoints
            .iter()
            .any(|c| !valid_stream_id(&c.point.stream))
        {
            return Err(CheckpointError::Set("bad stream id".into()));
        }
        Ok(set)
    }

    /// Put `cp` in (replacing an older one of its stream). Returns false when
    /// the set already holds this stream at `cp`'s position or later. The
    /// entry keeps only its links to streams in the set, and every entry
    /// another entry's links cover (at or past its position) is dropped: the
    /// covering stream's genesis record names it, so it stays reachable, and
    /// the set holds about one entry per live writer. Errs past
    /// [`HARD_MAX_ANCHORED_STREAMS`] entries or [`MAX_SET_BYTES`].
    pub fn merge(&mut self, mut cp: SignedCheckpoint) -> Result<bool, CheckpointError> {
        if let Some(e) = self
            .checkpoints
            .iter()
            .find(|e| e.point.stream == cp.point.stream)
        {
            if e.point.seq >= cp.point.seq {
                return Ok(false);
            }
        }
        let mut links = vec![];
        for l in std::mem::take(&mut cp.links) {
            if l.stream != cp.point.stream {
                add_link(&mut links, l);
            }
        }
        self.checkpoints
            .retain(|e| e.point.stream != cp.point.stream);
        cp.links = links
            .into_iter()
            .filter(|l| self.checkpoints.iter().any(|e| e.point.stream == l.stream))
            .collect();
        self.checkpoints.push(cp);
        self.v = 1;
        let covered: Vec<bool> = self
            .checkpoints
            .iter()
            .map(|e| {
                self.checkpoints.iter().any(|k| {
                    k.point.stream != e.point.stream
                        && k.links
                            .iter()
                            .any(|l| l.stream == e.point.stream && l.seq >= e.point.seq)
                })
            })
            .collect();
        let mut i = 0;
        self.checkpoints.retain(|_| {
            i += 1;
            !covered[i - 1]
        });
        self.checkpoints
            .sort_by(|a, b| b.time.cmp(&a.time).then(b.point.seq.cmp(&a.point.seq)));
        if self.checkpoints.len() > HARD_MAX_ANCHORED_STREAMS
            || self.to_json().len() > MAX_SET_BYTES
        {
            return Err(CheckpointError::Set(format!(
                "{} streams that no later stream links to (at most {HARD_MAX_ANCHORED_STREAMS})",
                self.checkpoints.len()
            )));
        }
        Ok(true)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The signed part of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBody {
    /// Random id of the enclave run that wrote the stream (32 hex digits).
    pub stream: String,
    pub seq: u64,
    /// Unix seconds (enclave clock).
    pub time: u64,
    /// Hash of the previous record, hex (64 zeros for genesis).
    pub prev: String,
    pub event: AuditEvent,
}

/// One stored line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub body: AuditBody,
    pub hash: String,
    pub sig: String,
}

impl AuditBody {
    /// The bytes that are hashed: domain prefix and canonical JSON.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = AUDIT_HASH_DOMAIN.to_vec();
        // Serializing a plain struct of strings, integers and a Vec cannot fail.
        out.extend_from_slice(&serde_json::to_vec(self).unwrap_or_default());
        out
    }
}

/// A stream id is 32 lowercase hex digits (safe as a file name).
pub fn valid_stream_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(stream: u8, seq: u64, time: u64, links: Vec<Checkpoint>) -> SignedCheckpoint {
        SignedCheckpoint {
            point: Checkpoint {
                stream: format!("{stream:032x}"),
                seq,
                hash: "ab".repeat(32),
            },
            time,
            sig: "cd".repeat(64),
            links,
        }
    }

    #[test]
    fn the_set_drops_only_entries_another_links_to() {
        let mut set = CheckpointSet::default();
        // Stream 0, which no later stream links to (another replica's), then
        // a chain of 80 streams each linking to the one before.
        assert!(set.merge(cp(0, 5, 0, vec![])).unwrap());
        for i in 1..=80u8 {
            let prev = (i > 1).then(|| cp(i - 1, 1, 0, vec![]).point);
            assert!(set
                .merge(cp(i, 1, u64::from(i), prev.into_iter().collect()))
                .unwrap());
        }
        let has = |s: &CheckpointSet, n: u8| {
            s.checkpoints
                .iter()
                .any(|c| c.point.stream == format!("{n:032x}"))
        };
        assert_eq!(set.checkpoints.len(), 2, "one entry per live writer");
        assert!(has(&set, 0), "nothing links to stream 0: it stays");
        assert!(has(&set, 80) && !has(&set, 79));
        // A link to an older position does not cover a newer one.
        let mut s2 = CheckpointSet::default();
        s2.merge(cp(1, 9, 0, vec![])).unwrap();
        s2.merge(cp(2, 1, 1, vec![cp(1, 3, 0, vec![]).point]))
            .unwrap();
        assert!(has(&s2, 1), "stream 1 is at 9, the link only at 3");
        // An older position of a stream does not replace a newer one.
        assert!(!set.merge(cp(80, 0, 99, vec![])).unwrap());
        // Links are one per stream and only to streams in the set.
        let mut s3 = CheckpointSet::default();
        s3.merge(cp(1, 1, 0, vec![])).unwrap();
        let many: Vec<Checkpoint> = (0..50)
            .map(|i| cp(1, i, 0, vec![]).point)
            .chain((0..50u8).map(|i| cp(100 + i, 1, 0, vec![]).point))
            .collect();
        s3.merge(cp(2, 1, 1, many)).unwrap();
        assert_eq!(s3.checkpoints.len(), 1);
        assert_eq!(s3.checkpoints[0].links.len(), 1);
        // Past the hard cap (nothing links to anything): an error, not a drop.
        let mut wide = CheckpointSet::default();
        let mut r = Ok(true);
        for i in 0..=HARD_MAX_ANCHORED_STREAMS as u64 {
            let mut c = cp(0, 0, i, vec![]);
            c.point.stream = format!("{i:032x}");
            r = wide.merge(c);
        }
        assert!(r.is_err());
    }

    #[test]
    fn receipts_round_trip_and_refuse_garbage() {
        let c = cp(7, 3, 9, vec![]);
        assert_eq!(SignedCheckpoint::parse_receipt(&c.to_receipt()).unwrap(), c);
        for bad in [
            "",
            "a:b:c:d:e",
            &format!("{}:x:{}:1:{}", c.point.stream, c.point.hash, c.sig),
        ] {
            assert!(SignedCheckpoint::parse_receipt(bad).is_err(), "{bad}");
        }
        assert!(CheckpointSet::parse(b"{\"v\":2,\"checkpoints\":[]}").is_err());
        assert!(CheckpointSet::parse(b"not json").is_err());
    }
}
