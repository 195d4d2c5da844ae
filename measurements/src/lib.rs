//! Measurement records: what an enclave release measures to, and how it was
//! built, signed with ECDSA P-384 and chained so that no record can be
//! silently replaced.
//!
//! A record is a JSON object. Its `Measurements` member has the same shape
//! `nitro-cli describe-eif` prints, so anything that reads that output (the
//! verifier's `--expected`, KMS policy generators) reads a record too.
//!
//! * **Signature** — ECDSA P-384/SHA-384 (ASN.1 DER, base64) over the
//!   record's canonical JSON (keys sorted, no whitespace) without its
//!   `signature` member.
//! * **Chain** — each record carries `seq` and `prev_record_sha384`, the
//!   SHA-384 of the previous record's canonical JSON *including* its
//!   signature. `history.jsonl` holds every record of a service in order;
//!   [`verify_history`] reports the first gap, edit, reorder or bad
//!   signature.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P384_SHA384_ASN1,
    ECDSA_P384_SHA384_ASN1_SIGNING,
};
use base64::Engine as _;
use serde_json::{Map, Value};

/// The `format` every record carries.
pub const FORMAT: &str = "pii-enclave/measurement-record/v1";

/// DER prefix of a P-384 SubjectPublicKeyInfo holding an uncompressed point.
const P384_SPKI_PREFIX: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    Invalid(String),
    #[error("signature does not verify with the given key")]
    BadSignature,
    #[error("history line {line}: {reason}")]
    History { line: usize, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn invalid(s: impl Into<String>) -> RecordError {
    RecordError::Invalid(s.into())
}

/// Canonical JSON: object keys sorted bytewise, no insignificant whitespace.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[*k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// SHA-384 (hex) of a record's canonical JSON, signature included.
pub fn record_sha384(record: &Value) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA384,
        canonical_json(record).as_bytes(),
    ))
}

/// An ECDSA P-384 signing key for records.
pub struct SigningKey {
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(key_id={})", self.key_id())
    }
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

fn pem_unwrap(label: &str, pem: &str) -> Result<Vec<u8>, RecordError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| invalid(format!("no {begin} block")))?
        + begin.len();
    let stop = pem[start..]
        .find(&end)
        .ok_or_else(|| invalid(format!("no {end} line")))?
        + start;
    let body: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| invalid(format!("{label}: bad base64: {e}")))
}

impl SigningKey {
    /// A fresh key. Returns the key and its PKCS#8 PEM (keep it secret).
    pub fn generate() -> Result<(Self, String), RecordError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng)
            .map_err(|_| invalid("key generation failed"))?;
        let pem = pem_wrap("PRIVATE KEY", doc.as_ref());
        Ok((Self::from_pkcs8_pem(&pem)?, pem))
    }

    /// Load a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) P-384 key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, RecordError> {
        let der = pem_unwrap("PRIVATE KEY", pem)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &der)
            .map_err(|_| invalid("not a PKCS#8 ECDSA P-384 private key"))?;
        Ok(Self { pair })
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            point: self.pair.public_key().as_ref().to_vec(),
        }
    }

    pub fn key_id(&self) -> String {
        self.verifying_key().key_id()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, RecordError> {
        let rng = SystemRandom::new();
        self.pair
            .sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| invalid("signing failed"))
    }
}

/// The public half: verifies records. Stored as a SubjectPublicKeyInfo PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    point: Vec<u8>,
}

impl VerifyingKey {
    pub fn to_pem(&self) -> String {
        let mut der = P384_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        pem_wrap("PUBLIC KEY", &der)
    }

    pub fn from_pem(pem: &str) -> Result<Self, RecordError> {
        let der = pem_unwrap("PUBLIC KEY", pem)?;
        match der.strip_prefix(&P384_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 97 && point[0] == 4 => Ok(Self {
                point: point.to_vec(),
            }),
            _ => Err(invalid(
                "not an uncompressed ECDSA P-384 SubjectPublicKeyInfo",
            )),
        }
    }

    /// SHA-256 of the SubjectPublicKeyInfo DER, hex: names the key in records.
    pub fn key_id(&self) -> String {
        let mut der = P384_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der))
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), RecordError> {
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, &self.point)
            .verify(msg, sig)
            .map_err(|_| RecordError::BadSignature)
    }
}

/// What goes into a new record; [`sign_record`] adds chain and signature.
#[derive(Debug, Clone, Default)]
pub struct RecordInput {
    pub service: String,
    pub release: String,
    pub commit: String,
    pub eif_sha384: String,
    /// `PCR0` … `PCR8` → lowercase hex.
    pub pcrs: BTreeMap<String, String>,
    /// Build input name → `{"sha384": …, …}`.
    pub inputs: BTreeMap<String, Value>,
    /// Tool name → version string.
    pub toolchain: BTreeMap<String, String>,
    /// RFC 3339.
    pub created_at: String,
}

fn validate_hex48(what: &str, h: &str) -> Result<(), RecordError> {
    if h.len() == 96
        && h.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(invalid(format!("{what}: expected 96 lowercase hex digits")))
    }
}

/// Build and sign the next record of a history whose last record is `prev`.
pub fn sign_record(
    input: &RecordInput,
    prev: Option<&Value>,
    key: &SigningKey,
) -> Result<Value, RecordError> {
    validate_hex48("eif_sha384", &input.eif_sha384)?;
    for (k, v) in &input.pcrs {
        validate_hex48(k, v)?;
    }
    for k in ["PCR0", "PCR1", "PCR2"] {
        if !input.pcrs.contains_key(k) {
            return Err(invalid(format!("{k} missing")));
        }
    }
    let (seq, prev_hash) = match prev {
        None => (0u64, Value::Null),
        Some(p) => (
            p.get("seq")
                .and_then(Value::as_u64)
                .ok_or_else(|| invalid("previous record has no seq"))?
                + 1,
            Value::String(record_sha384(p)),
        ),
    };
    let mut meas = Map::new();
    meas.insert("HashAlgorithm".into(), "Sha384 { ... }".into());
    for (k, v) in &input.pcrs {
        meas.insert(k.clone(), v.clone().into());
    }
    let mut rec = Map::new();
    rec.insert("format".into(), FORMAT.into());
    rec.insert("service".into(), input.service.clone().into());
    rec.insert("release".into(), input.release.clone().into());
    rec.insert("seq".into(), seq.into());
    rec.insert("prev_record_sha384".into(), prev_hash);
    rec.insert("commit".into(), input.commit.clone().into());
    rec.insert("eif_sha384".into(), input.eif_sha384.clone().into());
    rec.insert("Measurements".into(), Value::Object(meas));
    rec.insert(
        "inputs".into(),
        Value::Object(input.inputs.clone().into_iter().collect()),
    );
    rec.insert(
        "toolchain".into(),
        Value::Object(
            input
                .toolchain
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        ),
    );
    rec.insert("created_at".into(), input.created_at.clone().into());
    let unsigned = Value::Object(rec.clone());
    let sig = key.sign(canonical_json(&unsigned).as_bytes())?;
    rec.insert(
        "signature".into(),
        serde_json::json!({
            "alg": "ES384",
            "key_id": key.key_id(),
            "value": base64::engine::general_purpose::STANDARD.encode(sig),
        }),
    );
    Ok(Value::Object(rec))
}

/// Check a record's shape and signature. Returns its PCRs.
pub fn verify_record(
    record: &Value,
    key: &VerifyingKey,
) -> Result<BTreeMap<String, String>, RecordError> {
    let obj = record
        .as_object()
        .ok_or_else(|| invalid("a record is a JSON object"))?;
    if obj.get("format").and_then(Value::as_str) != Some(FORMAT) {
        return Err(invalid(format!("format is not {FORMAT:?}")));
    }
    let sig = obj
        .get("signature")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("unsigned record"))?;
    if sig.get("alg").and_then(Value::as_str) != Some("ES384") {
        return Err(invalid("signature alg must be ES384"));
    }
    if sig.get("key_id").and_then(Value::as_str) != Some(key.key_id().as_str()) {
        return Err(invalid(format!(
            "signed by key {}, not by the given key {}",
            sig.get("key_id").and_then(Value::as_str).unwrap_or("?"),
            key.key_id()
        )));
    }
    let value = sig
        .get("value")
        .and_then(Value::as_str)
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .ok_or_else(|| invalid("signature value is not base64"))?;
    let mut unsigned = obj.clone();
    unsigned.remove("signature");
    key.verify(canonical_json(&Value::Object(unsigned)).as_bytes(), &value)?;
    let meas = obj
        .get("Measurements")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("no Measurements"))?;
    let mut pcrs = BTreeMap::new();
    for (k, v) in meas {
        if k == "HashAlgorithm" {
            continue;
        }
        let h = v
            .as_str()
            .ok_or_else(|| invalid(format!("{k} not a string")))?;
        validate_hex48(k, h)?;
        pcrs.insert(k.clone(), h.to_owned());
    }
    Ok(pcrs)
}

/// Verify a whole `history.jsonl`: every signature, `seq` 0,1,2,… without
/// gaps, and every `prev_record_sha384` link. Returns the records in order.
pub fn verify_history(text: &str, key: &VerifyingKey) -> Result<Vec<Value>, RecordError> {
    let mut out: Vec<Value> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let hist = |reason: String| RecordError::History {
            line: lineno,
            reason,
        };
        let rec: Value = serde_json::from_str(line).map_err(|e| hist(format!("not JSON: {e}")))?;
        verify_record(&rec, key).map_err(|e| hist(e.to_string()))?;
        let seq = rec.get("seq").and_then(Value::as_u64);
        if seq != Some(out.len() as u64) {
            return Err(hist(format!(
                "seq is {seq:?}, expected {} (a record was removed or reordered)",
                out.len()
            )));
        }
        let want = out.last().map(record_sha384);
        let got = rec
            .get("prev_record_sha384")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if got != want {
            return Err(hist(format!(
                "prev_record_sha384 is {got:?}, but the previous record hashes to {want:?} (an earlier record was edited or replaced)"
            )));
        }
        out.push(rec);
    }
    Ok(out)
}

/// Append a signed record to `<dir>/<service>/history.jsonl` and write it to
/// `<dir>/<service>/<release>.json`. Refuses to overwrite a release, and
/// refuses to extend a history that does not verify.
pub fn append(dir: &Path, input: &RecordInput, key: &SigningKey) -> Result<Value, RecordError> {
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| RecordError::Io { path, source }
    };
    if input.release.is_empty()
        || !input
            .release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        || input.release.starts_with('.')
    {
        return Err(invalid("release: use letters, digits and . _ - +"));
    }
    let sdir = dir.join(&input.service);
    std::fs::create_dir_all(&sdir).map_err(io(&sdir))?;
    let hist_path = sdir.join("history.jsonl");
    let text = match std::fs::read_to_string(&hist_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(&hist_path)(e)),
    };
    let records = verify_history(&text, &key.verifying_key())?;
    let rel_path = sdir.join(format!("{}.json", input.release));
    if rel_path.exists()
        || records
            .iter()
            .any(|r| r.get("release").and_then(Value::as_str) == Some(&input.release))
    {
        return Err(invalid(format!(
            "release {} already has a record; records are never replaced",
            input.release
        )));
    }
    let rec = sign_record(input, records.last(), key)?;
    let mut line = canonical_json(&rec);
    line.push('\n');
    let mut pretty = serde_json::to_string_pretty(&rec).map_err(|e| invalid(e.to_string()))?;
    pretty.push('\n');
    std::fs::write(&rel_path, pretty).map_err(io(&rel_path))?;
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&hist_path)
        .map_err(io(&hist_path))?;
    f.write_all(line.as_bytes()).map_err(io(&hist_path))?;
    f.sync_all().map_err(io(&hist_path))?;
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(release: &str) -> RecordInput {
        let h = |c: char| c.to_string().repeat(96);
        RecordInput {
            service: "pii-enclave".into(),
            release: release.into(),
            commit: "0123abcd".into(),
            eif_sha384: h('e'),
            pcrs: [("PCR0", h('a')), ("PCR1", h('b')), ("PCR2", h('c'))]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            inputs: BTreeMap::new(),
            toolchain: [("rustc".to_owned(), "1.95.0".to_owned())].into(),
            created_at: "2026-11-22T00:00:00Z".into(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": "x"}], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[1,{"y":"x","z":0}]},"b":1}"#
        );
    }

    #[test]
    fn sign_verify_and_key_round_trip() {
        let (key, pem) = SigningKey::generate().unwrap();
        let key2 = SigningKey::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(key.key_id(), key2.key_id());
        let vk = VerifyingKey::from_pem(&key.verifying_key().to_pem()).unwrap();
        let rec = sign_record(&input("v1"), None, &key).unwrap();
        let pcrs = verify_record(&rec, &vk).unwrap();
        assert_eq!(pcrs["PCR0"], "a".repeat(96));
        // Any edit breaks the signature.
        let mut edited = rec.clone();
        edited["Measurements"]["PCR0"] = "f".repeat(96).into();
        assert!(matches!(
            verify_record(&edited, &vk),
            Err(RecordError::BadSignature)
        ));
        // Another key is named as such.
        let (other, _) = SigningKey::generate().unwrap();
        let err = verify_record(&rec, &other.verifying_key()).unwrap_err();
        assert!(err.to_string().contains("signed by key"), "{err}");
    }

    #[test]
    fn history_detects_removal_edit_and_reorder() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = SigningKey::generate().unwrap();
        for r in ["v1", "v2", "v3"] {
            append(dir.path(), &input(r), &key).unwrap();
        }
        let err = append(dir.path(), &input("v2"), &key).unwrap_err();
        assert!(err.to_string().contains("never replaced"), "{err}");
        let path = dir.path().join("pii-enclave/history.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let vk = key.verifying_key();
        assert_eq!(verify_history(&text, &vk).unwrap().len(), 3);
        let lines: Vec<&str> = text.lines().collect();

        // Remove the middle record.
        let removed = format!("{}\n{}\n", lines[0], lines[2]);
        let err = verify_history(&removed, &vk).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("seq"), "{err}");

        // Replace the first record with a re-signed one (same key, other PCR):
        // its signature verifies, but the chain does not.
        let mut forged_in = input("v1");
        forged_in.pcrs.insert("PCR0".into(), "9".repeat(96));
        let forged = canonical_json(&sign_record(&forged_in, None, &key).unwrap());
        let replaced = format!("{forged}\n{}\n{}\n", lines[1], lines[2]);
        let err = verify_history(&replaced, &vk).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("edited"), "{err}");

        // Swap two records.
        let swapped = format!("{}\n{}\n{}\n", lines[0], lines[2], lines[1]);
        assert!(verify_history(&swapped, &vk).is_err());

        // Garbage is a clear error, not a panic.
        let err = verify_history("{not json\n", &vk).unwrap_err().to_string();
        assert!(err.contains("line 1: not JSON"), "{err}");
    }

    #[test]
    fn rejects_bad_inputs() {
        let (key, _) = SigningKey::generate().unwrap();
        let mut i = input("v1");
        i.pcrs.insert("PCR0".into(), "ABC".into());
        assert!(sign_record(&i, None, &key).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(append(dir.path(), &input("../escape"), &key).is_err());
        assert!(SigningKey::from_pkcs8_pem("nope").is_err());
        assert!(VerifyingKey::from_pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
        )
        .is_err());
    }
}
