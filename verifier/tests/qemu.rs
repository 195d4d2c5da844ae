//! QEMU's nitro-enclave machine emulates the NSM but does not sign: its
//! documents are `[bstr {1: -1}, {}, payload, 64 zero bytes]` with zero
//! bytes for the certificate and the bundle. They are refused by name unless
//! the policy (or `verify --dangerous-unsigned-qemu`) asks for them; then
//! everything but the signature and the chain is still checked.

use std::process::Command;

use ciborium::Value;
use verifier::attestation::{verify, Policy, Step, VerifyError};

const AT: i64 = 1_764_590_400; // 2025-12-01
const GENUINE: &str = "nitro-attest_2025-01-06.cbor";

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = vec![];
    ciborium::into_writer(v, &mut out).expect("encode");
    out
}

fn pcr(i: u8) -> Vec<u8> {
    vec![i.wrapping_mul(7).wrapping_add(1); 48]
}

/// A document shaped exactly as QEMU 10's virtio-nsm returns it.
fn qemu_doc(nonce: &[u8], signature: Vec<u8>) -> Vec<u8> {
    let t = |s: &str| Value::Text(s.into());
    let pcrs = (0u8..16)
        .map(|i| (Value::Integer(i.into()), Value::Bytes(pcr(i))))
        .collect();
    let payload = Value::Map(vec![
        (t("module_id"), t("i-qemu-enc0001")),
        (t("digest"), t("SHA384")),
        (t("timestamp"), Value::Integer((AT as u64 * 1000).into())),
        (t("pcrs"), Value::Map(pcrs)),
        (t("certificate"), Value::Bytes(vec![0; 64])),
        (t("cabundle"), Value::Array(vec![Value::Bytes(vec![0; 64])])),
        (t("public_key"), Value::Bytes(b"pk".to_vec())),
        (t("user_data"), Value::Bytes(b"ud".to_vec())),
        (t("nonce"), Value::Bytes(nonce.to_vec())),
    ]);
    cbor(&Value::Array(vec![
        Value::Bytes(vec![0xa1, 0x01, 0x20]),
        Value::Map(vec![]),
        Value::Bytes(cbor(&payload)),
        Value::Bytes(signature),
    ]))
}

fn qemu_policy() -> Policy {
    let mut p = Policy::dangerous_unsigned_qemu(AT);
    p.expected_pcrs = [(0u8, pcr(0)), (1, pcr(1)), (2, pcr(2))].into();
    p.nonce = Some(b"fresh".to_vec());
    p
}

#[test]
fn unsigned_documents_are_refused_by_name_without_the_mode() {
    let doc = qemu_doc(b"fresh", vec![0; 64]);
    let e = verify(&doc, &Policy::aws(AT)).unwrap_err();
    assert_eq!(e, VerifyError::UnsignedQemu);
    assert!(e.to_string().contains("--dangerous-unsigned-qemu"), "{e}");
}

#[test]
fn the_mode_checks_everything_but_the_signature() {
    let v = verify(&qemu_doc(b"fresh", vec![0; 64]), &qemu_policy()).expect("accepted");
    assert_eq!(v.doc.module_id, "i-qemu-enc0001");
    assert!(v.chain.is_empty());

    // A wrong PCR, a replayed nonce, a wrong binding: refused as always.
    let mut p = qemu_policy();
    p.expected_pcrs.insert(0, vec![9; 48]);
    let e = verify(&qemu_doc(b"fresh", vec![0; 64]), &p).unwrap_err();
    assert!(
        matches!(e, VerifyError::PcrMismatch { index: 0, .. }),
        "{e}"
    );
    let e = verify(&qemu_doc(b"stale", vec![0; 64]), &qemu_policy()).unwrap_err();
    assert!(
        matches!(e, VerifyError::Binding { field: "nonce", .. }),
        "{e}"
    );
    let mut p = qemu_policy();
    p.user_data = Some(b"other".to_vec());
    let e = verify(&qemu_doc(b"fresh", vec![0; 64]), &p).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Binding {
                field: "user_data",
                ..
            }
        ),
        "{e}"
    );

    // Only QEMU's exact form: a non-zero signature is not "unsigned".
    let mut sig = vec![0; 64];
    sig[3] = 1;
    let e = verify(&qemu_doc(b"fresh", sig), &qemu_policy()).unwrap_err();
    assert_ne!(e.step(), Step::Policy, "{e}");
    // A signed AWS document is not accepted in this mode either.
    let genuine = std::fs::read(format!(
        "{}/tests/fixtures/{GENUINE}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let e = verify(&genuine, &Policy::dangerous_unsigned_qemu(1_736_179_625)).unwrap_err();
    assert!(matches!(e, VerifyError::NotUnsignedQemu(_)), "{e}");
    // Garbage stays garbage.
    assert_eq!(
        verify(b"\x00", &qemu_policy()).unwrap_err().step(),
        Step::Parse
    );
}

#[test]
fn the_cli_needs_the_flag() {
    let dir = tempfile::tempdir().expect("tmp");
    let doc = dir.path().join("qemu.cbor");
    std::fs::write(&doc, qemu_doc(b"fresh", vec![0; 64])).expect("write");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_verifier"))
            .args([
                "verify",
                "--doc",
                doc.to_str().expect("path"),
                "--at",
                "1764590400",
            ])
            .args(["--nonce", &hex::encode(b"fresh"), "--format", "json"])
            .args(extra)
            .output()
            .expect("runs");
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code(), j)
    };
    let (code, j) = run(&[]);
    assert_eq!(code, Some(1), "{j}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("unsigned QEMU"),
        "{j}"
    );
    let expected = dir.path().join("expected.json");
    std::fs::write(
        &expected,
        format!("{{\"PCR0\": \"{}\"}}", hex::encode(pcr(0))),
    )
    .expect("write");
    let e = expected.to_str().expect("path");
    let (code, j) = run(&["--dangerous-unsigned-qemu", "--expected", e]);
    assert_eq!(code, Some(0), "{j}");
    assert_eq!(j["document"]["module_id"], "i-qemu-enc0001");
    assert_eq!(j["signed"], false, "an unsigned acceptance says so");
    // The mode needs pinned PCRs (and, in `run`, a nonce): never a bare accept.
    let (code, _) = run(&["--dangerous-unsigned-qemu"]);
    assert_eq!(code, Some(2));
}
