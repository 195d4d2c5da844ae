//! Audit log verification.

use std::path::Path;

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use pii_proto::audit::{valid_stream_id, AuditRecord};
use serde::Serialize;

/// Result for one stream file.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct StreamReport {
    pub stream: String,
    pub file: String,
    pub records: u64,
    pub public_key: Option<String>,
    pub problems: Vec<String>,
}

/// Result for a directory.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub streams: Vec<StreamReport>,
    /// Set when no key was pinned: streams were checked against their own
    /// genesis key, which proves integrity but not origin.
    pub warning: Option<String>,
}

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Verify one stream's JSON lines. `pinned` is the expected public key (hex).
pub fn verify_stream(stream: &str, text: &str, pinned: Option<&str>) -> StreamReport {
    let mut r = StreamReport {
        stream: stream.to_owned(),
        file: String::new(),
        records: 0,
        public_key: None,
        problems: vec![],
    };
    let mut key: Option<Vec<u8>> = None;
    let mut prev = ZERO_HASH.to_owned();
    let mut expected_seq = 0u64;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            r.problems.push(format!("line {n}: empty line"));
            continue;
        }
        let rec: AuditRecord = match serde_json::from_str(line) {
            Ok(x) => x,
            Err(e) => {
                r.problems
                    .push(format!("line {n}: not an audit record ({e})"));
                continue;
            }
        };
        r.records += 1;
        let b = &rec.body;
        if b.stream != stream {
            r.problems.push(format!(
                "line {n}: record of stream {} in stream {stream}",
                b.stream
            ));
        }
        if b.seq != expected_seq {
            if b.seq > expected_seq {
                r.problems.push(format!(
                    "line {n}: gap: expected seq {expected_seq}, found {} ({} record(s) missing)",
                    b.seq,
                    b.seq - expected_seq
                ));
            } else {
                r.problems.push(format!(
                    "line {n}: seq {} repeats or goes back (expected {expected_seq})",
                    b.seq
                ));
            }
        }
        expected_seq = b.seq + 1;
        if b.seq == 0 {
            match (&b.event.kind[..], &b.event.public_key) {
                ("genesis", Some(pk)) => {
                    if let Some(p) = pinned {
                        if !p.eq_ignore_ascii_case(pk) {
                            r.problems.push(format!(
                                "line {n}: stream key {pk} is not the pinned key {p}"
                            ));
                        }
                    }
                    r.public_key = Some(pk.clone());
                    key = hex::decode(pinned.unwrap_or(pk)).ok();
                }
                _ => r.problems.push(format!(
                    "line {n}: record 0 is not a genesis record with a public key"
                )),
            }
        }
        if b.prev != prev {
            r.problems.push(format!(
                "line {n}: chain broken: prev does not match the previous record's hash"
            ));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &b.signed_bytes());
        let computed = hex::encode(digest.as_ref());
        if computed != rec.hash {
            r.problems.push(format!(
                "line {n}: record edited: hash does not match its contents"
            ));
        }
        match (&key, hex::decode(&rec.sig)) {
            (Some(k), Ok(sig)) => {
                if UnparsedPublicKey::new(&ED25519, k)
                    .verify(digest.as_ref(), &sig)
                    .is_err()
                {
                    r.problems.push(format!("line {n}: bad signature"));
                }
            }
            (None, _) => {
                if pinned.is_none() {
                    r.problems.push(format!(
                        "line {n}: no genesis record, so no key to check the signature"
                    ));
                } else if let Some(p) = pinned.and_then(|p| hex::decode(p).ok()) {
                    key = Some(p);
                }
            }
            (_, Err(_)) => r.problems.push(format!("line {n}: signature is not hex")),
        }
        prev = rec.hash.clone();
    }
    if r.records == 0 {
        r.problems.push("empty stream".into());
    }
    r
}

/// Verify every `<stream>.jsonl` file in `dir`.
pub fn verify_dir(dir: &Path, pinned: Option<&str>) -> std::io::Result<Report> {
    let mut streams = vec![];
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stream) = name.strip_suffix(".jsonl") else {
            continue;
        };
        let text = std::fs::read_to_string(&p)?;
        let mut r = verify_stream(stream, &text, pinned);
        if !valid_stream_id(stream) {
            r.problems.push("file name is not a stream id".into());
        }
        r.file = p.display().to_string();
        streams.push(r);
    }
    let ok = !streams.is_empty() && streams.iter().all(|s| s.problems.is_empty());
    Ok(Report {
        ok,
        streams,
        warning: pinned.is_none().then(|| {
            "no --public-key given: signatures were checked against each stream's own genesis key (integrity, not origin)"
                .to_string()
        }),
    })
}
