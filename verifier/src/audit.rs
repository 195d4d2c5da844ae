//! Audit log verification: each stream's hash chain and signatures, the
//! links between streams, and the checkpoints kept outside the host (the
//! anchor's set and the receipts callers got with their answers).
//!
//! Every finding has a kind, so a report names what the host did:
//! `deleted-tail`, `deleted-stream`, `deleted-records`, `edited-record`,
//! `reordered`, `key-not-attested`, `bad-signature`, `malformed`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
use pii_proto::audit::{
    valid_stream_id, AuditRecord, Checkpoint, CheckpointError, CheckpointSet, SignedCheckpoint,
};
use serde::Serialize;

/// One thing wrong, by kind.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub kind: &'static str,
    pub detail: String,
}

fn finding(kind: &'static str, detail: impl Into<String>) -> Finding {
    Finding {
        kind,
        detail: detail.into(),
    }
}

/// Result for one stream file.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct StreamReport {
    pub stream: String,
    pub file: String,
    pub records: u64,
    pub public_key: Option<String>,
    pub problems: Vec<Finding>,
}

/// Which key the streams must be signed with.
#[derive(Debug, Clone)]
pub enum KeyTrust {
    /// The SHA-256 of the audit key, from a verified attestation document's
    /// enclave-built `user_data` (what a host cannot substitute).
    Attested([u8; 32]),
    /// A bare public key: only as good as where it came from.
    Bare(Vec<u8>),
    /// Each stream's own genesis key: integrity, not origin.
    Unpinned,
}

/// Result for a directory.
#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub streams: Vec<StreamReport>,
    /// Findings across streams: links, checkpoints and receipts whose
    /// records are missing.
    pub problems: Vec<Finding>,
    /// Checkpoints and receipts checked.
    pub checkpoints: usize,
    pub warnings: Vec<String>,
}

const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// What one stream holds, for the cross-stream checks.
#[derive(Default)]
struct Parsed {
    /// seq → record hash.
    hashes: BTreeMap<u64, String>,
    links: Vec<Checkpoint>,
    key: Option<Vec<u8>>,
}

/// Verify one stream's JSON lines against `trust`.
pub fn verify_stream(stream: &str, text: &str, trust: &KeyTrust) -> StreamReport {
    verify_stream_parsed(stream, text, trust).0
}

fn verify_stream_parsed(stream: &str, text: &str, trust: &KeyTrust) -> (StreamReport, Parsed) {
    let mut r = StreamReport {
        stream: stream.to_owned(),
        file: String::new(),
        records: 0,
        public_key: None,
        problems: vec![],
    };
    let mut p = Parsed::default();
    let mut prev = ZERO_HASH.to_owned();
    let mut order: Vec<u64> = vec![];
    let mut chain_breaks = vec![];
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            r.problems
                .push(finding("malformed", format!("line {n}: empty line")));
            continue;
        }
        let rec: AuditRecord = match serde_json::from_str(line) {
            Ok(x) => x,
            Err(e) => {
                r.problems.push(finding(
                    "malformed",
                    format!("line {n}: not an audit record ({e})"),
                ));
                continue;
            }
        };
        r.records += 1;
        let b = &rec.body;
        if b.stream != stream {
            r.problems.push(finding(
                "malformed",
                format!("line {n}: record of stream {} in stream {stream}", b.stream),
            ));
        }
        order.push(b.seq);
        if b.seq == 0 {
            match (&b.event.kind[..], &b.event.public_key) {
                ("genesis", Some(pk)) => {
                    r.public_key = Some(pk.clone());
                    let key = hex::decode(pk).ok();
                    let trusted = match (trust, &key) {
                        (KeyTrust::Attested(h), Some(k)) => sha256(k) == *h,
                        (KeyTrust::Bare(b), Some(k)) => b == k,
                        (KeyTrust::Unpinned, Some(_)) => true,
                        (_, None) => false,
                    };
                    if !trusted {
                        r.problems.push(finding(
                            "key-not-attested",
                            format!(
                                "line {n}: the stream's key {pk} is not the {} key",
                                match trust {
                                    KeyTrust::Attested(_) => "attested",
                                    _ => "pinned",
                                }
                            ),
                        ));
                    }
                    p.key = match trust {
                        KeyTrust::Bare(b) => Some(b.clone()),
                        _ => key.filter(|_| trusted),
                    };
                    p.links = b.event.links.clone();
                }
                _ => r.problems.push(finding(
                    "malformed",
                    format!("line {n}: record 0 is not a genesis record with a public key"),
                )),
            }
        }
        if b.prev != prev {
            chain_breaks.push(n);
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &b.signed_bytes());
        let computed = hex::encode(digest.as_ref());
        if computed != rec.hash {
            r.problems.push(finding(
                "edited-record",
                format!(
                    "line {n} (seq {}): its hash does not match its contents",
                    b.seq
                ),
            ));
        }
        match (&p.key, hex::decode(&rec.sig)) {
            (Some(k), Ok(sig)) => {
                if UnparsedPublicKey::new(&ED25519, k)
                    .verify(digest.as_ref(), &sig)
                    .is_err()
                {
                    r.problems.push(finding(
                        "bad-signature",
                        format!("line {n} (seq {}): not signed by the stream's key", b.seq),
                    ));
                }
            }
            (None, _) if b.seq != 0 && r.public_key.is_none() => r.problems.push(finding(
                "malformed",
                format!("line {n}: no genesis record, so no key to check the signature"),
            )),
            (None, _) => {}
            (_, Err(_)) => r.problems.push(finding(
                "malformed",
                format!("line {n}: signature is not hex"),
            )),
        }
        if p.hashes.insert(b.seq, rec.hash.clone()).is_some() {
            r.problems.push(finding(
                "reordered",
                format!("line {n}: seq {} appears twice", b.seq),
            ));
        }
        prev = rec.hash.clone();
    }
    // Order: records present but out of order are `reordered`; seqs that
    // never appear below the highest are `deleted-records`.
    let sorted = order.windows(2).all(|w| w[0] < w[1]);
    if !sorted {
        r.problems.push(finding(
            "reordered",
            format!(
                "records are out of order (seqs {:?})",
                &order[..order.len().min(16)]
            ),
        ));
    }
    if let Some(max) = order.iter().max() {
        // Counted, not listed: a forged seq near 2^64 must not make this
        // allocate or loop (the first few missing come early).
        let below = p.hashes.range(..*max).count() as u64;
        let count = max - below;
        if count > 0 {
            let first: Vec<u64> = (0..*max)
                .filter(|s| !p.hashes.contains_key(s))
                .take(16)
                .collect();
            r.problems.push(finding(
                "deleted-records",
                format!("{count} record(s) missing before seq {max}, first {first:?}"),
            ));
        }
    }
    if sorted && !chain_breaks.is_empty() && !r.problems.iter().any(|f| f.kind == "deleted-records")
    {
        r.problems.push(finding(
            "edited-record",
            format!(
                "chain broken at line(s) {chain_breaks:?}: prev does not match the previous record"
            ),
        ));
    }
    if r.records == 0 {
        r.problems.push(finding("deleted-records", "empty stream"));
    }
    (r, p)
}

/// Where a piece of evidence about a record came from.
fn check_point(
    point: &Checkpoint,
    source: &str,
    streams: &HashMap<String, Parsed>,
    out: &mut Vec<Finding>,
) {
    let Some(s) = streams.get(&point.stream) else {
        out.push(finding(
            "deleted-stream",
            format!(
                "stream {} is missing; {source} shows its record {} was stored",
                point.stream, point.seq
            ),
        ));
        return;
    };
    match s.hashes.get(&point.seq) {
        Some(h) if *h == point.hash => {}
        Some(_) => out.push(finding(
            "edited-record",
            format!(
                "stream {} record {} is not the record {source} names",
                point.stream, point.seq
            ),
        )),
        None => {
            let last = s.hashes.keys().next_back().copied();
            if last.is_none_or(|l| l < point.seq) {
                out.push(finding(
                    "deleted-tail",
                    format!(
                        "stream {} ends at seq {}, but {source} shows seq {} was stored",
                        point.stream,
                        last.map_or("none".into(), |l| l.to_string()),
                        point.seq
                    ),
                ));
            }
            // Otherwise the stream's own report names the deleted records.
        }
    }
}

/// Verify every `<stream>.jsonl` file in `dir` against `trust`, and the
/// signed `checkpoints` (the anchor's set and any receipts) against the
/// streams.
pub fn verify_dir(
    dir: &Path,
    trust: &KeyTrust,
    checkpoints: &[SignedCheckpoint],
) -> std::io::Result<Report> {
    let mut streams = vec![];
    let mut parsed: HashMap<String, Parsed> = HashMap::new();
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
        let (mut r, ps) = verify_stream_parsed(stream, &text, trust);
        if !valid_stream_id(stream) {
            r.problems
                .push(finding("malformed", "file name is not a stream id"));
        }
        r.file = p.display().to_string();
        parsed.insert(stream.to_owned(), ps);
        streams.push(r);
    }
    let mut problems = vec![];
    // Links: every stream names the heads of the streams before it.
    let mut links: Vec<(Checkpoint, String)> = vec![];
    for (name, p) in &parsed {
        for l in &p.links {
            links.push((l.clone(), format!("stream {name}'s genesis link")));
        }
    }
    links.sort_by(|a, b| a.1.cmp(&b.1));
    for (l, source) in &links {
        check_point(l, source, &parsed, &mut problems);
    }
    // Checkpoints and receipts: signed by the audit key.
    let keys: Vec<Vec<u8>> = match trust {
        KeyTrust::Bare(k) => vec![k.clone()],
        _ => parsed.values().filter_map(|p| p.key.clone()).collect(),
    };
    let mut unverified = 0;
    for cp in checkpoints {
        let sig = hex::decode(&cp.sig).unwrap_or_default();
        let hash = hex::decode(&cp.point.hash).unwrap_or_default();
        let signed = keys.iter().any(|k| {
            UnparsedPublicKey::new(&ED25519, k)
                .verify(&hash, &sig)
                .is_ok()
        });
        if !signed {
            if keys.is_empty() {
                // No stream carries the trusted key: nothing to check the
                // signature with, but the missing stream is itself a finding.
                unverified += 1;
            } else {
                problems.push(finding(
                    "bad-signature",
                    format!(
                        "checkpoint {}:{} is not signed by the audit key (ignored)",
                        cp.point.stream, cp.point.seq
                    ),
                ));
                continue;
            }
        }
        check_point(
            &cp.point,
            &format!("a signed checkpoint ({}:{})", cp.point.stream, cp.point.seq),
            &parsed,
            &mut problems,
        );
    }
    problems.dedup();
    let ok =
        !streams.is_empty() && problems.is_empty() && streams.iter().all(|s| s.problems.is_empty());
    let mut warnings = vec![];
    match trust {
        KeyTrust::Unpinned => warnings.push(
            "no --attestation given: signatures were checked against each stream's own genesis key (integrity, not origin)"
                .to_string(),
        ),
        KeyTrust::Bare(_) => warnings.push(
            "a bare --dangerous-public-key is only as trustworthy as where it came from; pass --attestation"
                .to_string(),
        ),
        KeyTrust::Attested(_) => {}
    }
    if unverified > 0 {
        warnings.push(format!(
            "{unverified} checkpoint(s) could not be signature-checked: no stream carries the trusted key"
        ));
    }
    if checkpoints.is_empty() {
        warnings.push(
            "no --checkpoints or --receipt given: a deleted newest stream, or the tail of one, cannot be detected"
                .to_string(),
        );
    }
    Ok(Report {
        ok,
        streams,
        problems,
        checkpoints: checkpoints.len(),
        warnings,
    })
}

/// Why an attestation document gives no audit key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestedKeyError {
    #[error("rejected: {0}")]
    Rejected(#[from] crate::attestation::VerifyError),
    #[error("no user_data: not a pii-enclave document")]
    NoUserData,
    #[error(transparent)]
    UserData(#[from] pii_proto::attest::UserDataError),
    #[error("it carries no audit key (made while the enclave was sealed); take another")]
    NoAuditKey,
}

/// The document's own time (Unix seconds), to verify it as of then: the
/// audit is checked long after the document's certificates expire.
pub fn document_time(doc: &[u8]) -> Result<i64, AttestedKeyError> {
    let d = crate::attestation::parse_document_unverified(doc)?;
    Ok(i64::try_from(d.timestamp_ms / 1000).unwrap_or(i64::MAX))
}

/// Verify `doc` against `policy` and return the SHA-256 of the audit key
/// the enclave put in its `user_data` (a host cannot substitute it, unlike
/// the key `sys/audit-key` serves through the host).
pub fn attested_key(
    doc: &[u8],
    policy: &crate::attestation::Policy,
) -> Result<[u8; 32], AttestedKeyError> {
    let v = crate::attestation::verify(doc, policy)?;
    let ud = v
        .doc
        .user_data
        .as_deref()
        .ok_or(AttestedKeyError::NoUserData)?;
    pii_proto::attest::UserData::decode(ud)?
        .audit_key_sha256
        .ok_or(AttestedKeyError::NoAuditKey)
}

/// Signed checkpoints from the anchor's record: the set's JSON, or any JSON
/// that holds it as a string (`vault kv get -format=json`, `aws dynamodb
/// get-item` output).
pub fn load_checkpoints(text: &str) -> Result<Vec<SignedCheckpoint>, CheckpointError> {
    if let Ok(set) = CheckpointSet::parse(text.as_bytes()) {
        return Ok(set.checkpoints);
    }
    fn find(v: &serde_json::Value) -> Option<CheckpointSet> {
        match v {
            serde_json::Value::String(s) => CheckpointSet::parse(s.as_bytes()).ok(),
            serde_json::Value::Object(m) => m.values().find_map(find),
            serde_json::Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| CheckpointError::Set(e.to_string()))?;
    find(&v)
        .map(|s| s.checkpoints)
        .ok_or_else(|| CheckpointError::Set("no checkpoint set in it".into()))
}
