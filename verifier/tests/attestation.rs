//! Real AWS Nitro attestation documents at their own timestamps, and a table
//! of adversarial variants derived from them; each must fail at its step.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use ciborium::value::Value;
use verifier::attestation::{parse_expected, verify, Policy, Step, VerifyError};

const GENUINE: &str = "nitro-attest_2025-01-06.cbor";
const GENUINE_AT: i64 = 1_736_179_625;
const DEBUG_DOC: &str = "evervault_ga_2023-09-18.cbor";
const DEBUG_AT: i64 = 1_695_049_410;
const BADSIG: &str = "eternis_INVALID_badsig_2024-07-23.cbor";
const BADSIG_AT: i64 = 1_721_770_180;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn cose(bytes: &[u8]) -> Vec<Value> {
    match ciborium::from_reader::<Value, _>(bytes).unwrap() {
        Value::Array(a) => a,
        _ => panic!("not an array"),
    }
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = vec![];
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn payload_map(items: &[Value]) -> Vec<(Value, Value)> {
    let Value::Bytes(p) = &items[2] else { panic!() };
    match ciborium::from_reader::<Value, _>(p.as_slice()).unwrap() {
        Value::Map(m) => m,
        _ => panic!(),
    }
}

/// Rebuild a document with its payload map edited.
fn with_payload(bytes: &[u8], edit: impl FnOnce(&mut Vec<(Value, Value)>)) -> Vec<u8> {
    let mut items = cose(bytes);
    let mut m = payload_map(&items);
    edit(&mut m);
    items[2] = Value::Bytes(encode(&Value::Map(m)));
    encode(&Value::Array(items))
}

fn field<'a>(m: &'a mut [(Value, Value)], name: &str) -> &'a mut Value {
    &mut m
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(name))
        .unwrap()
        .1
}

fn step_of(bytes: &[u8], policy: &Policy) -> Result<(), (Step, VerifyError)> {
    verify(bytes, policy).map(|_| ()).map_err(|e| (e.step(), e))
}

#[test]
fn genuine_documents_at_their_own_time() {
    let v = verify(&fixture(GENUINE), &Policy::aws(GENUINE_AT)).unwrap();
    assert_eq!(v.doc.module_id, "i-0bee92034f3d60691-enc01943c5eaab3ad6a");
    assert_eq!(v.doc.timestamp_ms / 1000, GENUINE_AT as u64);
    assert_eq!(v.doc.pcrs.len(), 16, "all PCRs kept, zero ones included");
    assert!(v.doc.public_key.is_some());
    assert!(!v.debug_mode);
    assert_eq!(v.chain.len(), 5);

    // The debug-mode document is genuine but refused unless debug is allowed.
    let e = verify(&fixture(DEBUG_DOC), &Policy::aws(DEBUG_AT)).unwrap_err();
    assert_eq!(
        (e.step(), e.clone()),
        (Step::Policy, VerifyError::DebugMode)
    );
    let mut p = Policy::aws(DEBUG_AT);
    p.allow_debug = true;
    assert!(verify(&fixture(DEBUG_DOC), &p).unwrap().debug_mode);

    // A COSE tag (18) in front is accepted.
    let mut tagged = vec![0xd2];
    tagged.extend(fixture(GENUINE));
    assert!(verify(&tagged, &Policy::aws(GENUINE_AT)).is_ok());
}

#[test]
fn bad_signature_document_is_rejected_at_the_signature_step() {
    let e = verify(&fixture(BADSIG), &Policy::aws(BADSIG_AT)).unwrap_err();
    assert_eq!(e, VerifyError::Signature);
}

#[test]
fn adversarial_variants_fail_at_the_right_step() {
    let g = fixture(GENUINE);
    let other = fixture(DEBUG_DOC);
    let at = Policy::aws(GENUINE_AT);
    let mut cases: Vec<(&str, Vec<u8>, Policy, Step)> = vec![];

    let mut trailing = g.clone();
    trailing.push(0x00);
    cases.push(("trailing bytes", trailing, at.clone(), Step::Parse));
    cases.push((
        "truncated",
        g[..g.len() - 10].to_vec(),
        at.clone(),
        Step::Parse,
    ));
    cases.push(("empty", vec![], at.clone(), Step::Parse));
    cases.push((
        "wrong tag",
        [vec![0xd1], g.clone()].concat(),
        at.clone(),
        Step::Parse,
    ));

    let mut items = cose(&g);
    let sig_len = match &items[3] {
        Value::Bytes(b) => b.len(),
        _ => 0,
    };
    assert_eq!(sig_len, 96);
    if let Value::Bytes(b) = &mut items[3] {
        b[10] ^= 0x01;
    }
    cases.push((
        "flipped signature bit",
        encode(&Value::Array(items)),
        at.clone(),
        Step::Signature,
    ));

    let mut items = cose(&g);
    items[0] = Value::Bytes(encode(&Value::Map(vec![(
        Value::Integer(1.into()),
        Value::Integer((-7).into()),
    )])));
    cases.push((
        "wrong algorithm (ES256)",
        encode(&Value::Array(items)),
        at.clone(),
        Step::CoseHeader,
    ));
    let mut items = cose(&g);
    items[0] = Value::Bytes(encode(&Value::Map(vec![
        (Value::Integer(1.into()), Value::Integer((-35).into())),
        (Value::Integer(1.into()), Value::Integer((-35).into())),
    ])));
    cases.push((
        "duplicate protected header label",
        encode(&Value::Array(items)),
        at.clone(),
        Step::CoseHeader,
    ));
    let mut items = cose(&g);
    items[2] = Value::Null;
    cases.push((
        "detached (nil) payload",
        encode(&Value::Array(items)),
        at.clone(),
        Step::Parse,
    ));
    let mut items = cose(&g);
    let mut prot = match &items[0] {
        Value::Bytes(b) => b.clone(),
        _ => vec![],
    };
    prot.push(0x00);
    items[0] = Value::Bytes(prot);
    cases.push((
        "trailing bytes in the protected header",
        encode(&Value::Array(items)),
        at.clone(),
        Step::CoseHeader,
    ));
    // Tag 18 in its two-byte form is still tag 18.
    let mut long_tag = vec![0xd8, 0x12];
    long_tag.extend(&g);
    assert!(verify(&long_tag, &at).is_ok(), "two-byte tag 18");
    cases.push((
        "tag 18 with trailing bytes",
        [vec![0xd2], g.clone(), vec![0x00]].concat(),
        at.clone(),
        Step::Parse,
    ));
    let mut items = cose(&g);
    items[0] = Value::Bytes(encode(&Value::Map(vec![
        (Value::Integer(1.into()), Value::Integer((-35).into())),
        (Value::Integer(4.into()), Value::Bytes(vec![1])),
    ])));
    cases.push((
        "extra protected header",
        encode(&Value::Array(items)),
        at.clone(),
        Step::CoseHeader,
    ));

    let flipped_pcr = with_payload(&g, |m| {
        if let Value::Map(pcrs) = field(m, "pcrs") {
            if let Value::Bytes(b) = &mut pcrs[0].1 {
                b[0] ^= 0x80;
            }
        }
    });
    cases.push(("flipped PCR bit", flipped_pcr, at.clone(), Step::Signature));
    cases.push((
        "digest not SHA384",
        with_payload(&g, |m| *field(m, "digest") = Value::Text("SHA256".into())),
        at.clone(),
        Step::Payload,
    ));
    cases.push((
        "missing module_id",
        with_payload(&g, |m| m.retain(|(k, _)| k.as_text() != Some("module_id"))),
        at.clone(),
        Step::Payload,
    ));
    cases.push((
        "oversized user_data",
        with_payload(&g, |m| {
            m.push((Value::Text("user_data".into()), Value::Bytes(vec![0; 513])))
        }),
        at.clone(),
        Step::Payload,
    ));

    // Chains: a forged root in cabundle[0]; an intermediate from another
    // genuine chain; an intermediate whose signature was tampered with.
    let other_cab = match field(&mut payload_map(&cose(&other)), "cabundle") {
        Value::Array(a) => a.clone(),
        _ => panic!(),
    };
    cases.push((
        "forged root (another certificate as cabundle[0])",
        with_payload(&g, |m| {
            if let Value::Array(c) = field(m, "cabundle") {
                c[0] = other_cab[1].clone();
            }
        }),
        at.clone(),
        Step::Chain,
    ));
    cases.push((
        "intermediate from another chain",
        with_payload(&g, |m| {
            if let Value::Array(c) = field(m, "cabundle") {
                c[2] = other_cab[2].clone();
            }
        }),
        at.clone(),
        Step::Chain,
    ));
    cases.push((
        "forged intermediate (tampered signature)",
        with_payload(&g, |m| {
            if let Value::Array(c) = field(m, "cabundle") {
                if let Value::Bytes(b) = &mut c[1] {
                    let n = b.len();
                    b[n - 5] ^= 0x01;
                }
            }
        }),
        at.clone(),
        Step::Chain,
    ));
    // Times: the leaf lives three hours.
    cases.push((
        "expired leaf at a later time",
        g.clone(),
        Policy::aws(GENUINE_AT + 4 * 3600),
        Step::Validity,
    ));
    cases.push((
        "before the chain was issued",
        g.clone(),
        Policy::aws(GENUINE_AT - 86_400),
        Step::Validity,
    ));
    // Debug document against a strict policy.
    cases.push((
        "debug mode, strict policy",
        other.clone(),
        Policy::aws(DEBUG_AT),
        Step::Policy,
    ));

    let mut failures = vec![];
    for (name, bytes, policy, want) in &cases {
        match step_of(bytes, policy) {
            Err((got, e)) if got == *want => eprintln!("ok   {name}: {got:?}: {e}"),
            Err((got, e)) => failures.push(format!(
                "{name}: failed at {got:?} ({e}), expected {want:?}"
            )),
            Ok(()) => failures.push(format!("{name}: accepted")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn expired_leaf_names_the_leaf() {
    let e = verify(&fixture(GENUINE), &Policy::aws(GENUINE_AT + 4 * 3600)).unwrap_err();
    assert!(
        matches!(e, VerifyError::CertExpired { index: 4, .. }),
        "{e:?}"
    );
}

#[test]
fn pcr_policy_is_exact() {
    let g = fixture(GENUINE);
    let v = verify(&g, &Policy::aws(GENUINE_AT)).unwrap();
    let pcr0 = hex::encode(&v.doc.pcrs[&0]);
    let mut p = Policy::aws(GENUINE_AT);
    p.expected_pcrs =
        parse_expected(&serde_json::json!({"PCR0": pcr0, "PCR1": hex::encode(&v.doc.pcrs[&1])}))
            .unwrap();
    assert!(verify(&g, &p).is_ok());
    // Zero is never a wildcard.
    p.expected_pcrs.insert(0, vec![0; 48]);
    assert!(matches!(
        verify(&g, &p),
        Err(VerifyError::PcrMismatch { index: 0, .. })
    ));
    // A PCR the document does not carry fails.
    let mut p = Policy::aws(GENUINE_AT);
    p.expected_pcrs.insert(20, vec![1; 48]);
    assert_eq!(
        verify(&g, &p).unwrap_err(),
        VerifyError::PcrMissing { index: 20 }
    );
    // Nonce and public-key binding.
    let mut p = Policy::aws(GENUINE_AT);
    p.nonce = Some(vec![1, 2, 3]);
    assert_eq!(verify(&g, &p).unwrap_err().step(), Step::Policy);
    let mut p = Policy::aws(GENUINE_AT);
    p.public_key = v.doc.public_key.clone();
    assert!(verify(&g, &p).is_ok());
}

#[test]
fn chain_cache_gives_the_same_answers() {
    use verifier::attestation::{verify_cached, ChainCache};
    let cache = ChainCache::default();
    let g = fixture(GENUINE);
    let cold = verify_cached(&g, &Policy::aws(GENUINE_AT), &cache).unwrap();
    let warm = verify_cached(&g, &Policy::aws(GENUINE_AT), &cache).unwrap();
    assert_eq!(cold.doc, warm.doc);
    assert_eq!(cold.chain.len(), warm.chain.len());
    // With the chain cached, the leaf and signature are still checked.
    let mut items = cose(&g);
    if let Value::Bytes(b) = &mut items[3] {
        b[0] ^= 1;
    }
    let e = verify_cached(
        &encode(&Value::Array(items)),
        &Policy::aws(GENUINE_AT),
        &cache,
    )
    .unwrap_err();
    assert_eq!(e, VerifyError::Signature);
    let e = verify_cached(&g, &Policy::aws(GENUINE_AT + 4 * 3600), &cache).unwrap_err();
    assert!(
        matches!(e, VerifyError::CertExpired { index: 4, .. }),
        "{e:?}"
    );
    let mut p = Policy::aws(GENUINE_AT);
    p.nonce = Some(vec![9]);
    assert_eq!(
        verify_cached(&g, &p, &cache).unwrap_err().step(),
        Step::Policy
    );
    // Another document with another chain is verified in full.
    let e = verify_cached(&fixture(BADSIG), &Policy::aws(BADSIG_AT), &cache).unwrap_err();
    assert_eq!(e, VerifyError::Signature);
}
