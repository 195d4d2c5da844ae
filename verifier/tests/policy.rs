//! The shipped Rego deployment gate, evaluated in-process on facts from a
//! real verification.

use verifier::attestation::{verify, Policy};
use verifier::policy::{attach_attestation, evaluate, ATTESTATION_REGO};

const AT: i64 = 1_736_179_625;
const PKG: &str = "data.pii.attestation";

fn doc() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nitro-attest_2025-01-06.cbor"
    ))
    .expect("fixture")
}

fn request(pcr0: &str, assurance: &str, service: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "DeployRequest",
        "service": service,
        "actor": {"id": "alice@example.com", "assurance": assurance},
        "expected": {"PCR0": pcr0}
    })
}

#[test]
fn deploy_gate() {
    let d = doc();
    let pcr0 = hex::encode(&verify(&d, &Policy::aws(AT)).expect("genuine").doc.pcrs[&0]);

    let mut ok = request(&pcr0, "webauthn", "pii-svc");
    attach_attestation(&mut ok, &d, Policy::aws(AT)).expect("attach");
    let r = evaluate(ATTESTATION_REGO, PKG, &ok).expect("evaluates");
    assert!(r.allow, "{r:?}");
    assert!(r.reasons.is_empty());

    let mut weak = request(&pcr0, "password", "pii-svc");
    attach_attestation(&mut weak, &d, Policy::aws(AT)).expect("attach");
    let r = evaluate(ATTESTATION_REGO, PKG, &weak).expect("evaluates");
    assert_eq!(
        (r.allow, r.reasons.clone()),
        (false, vec!["actor assurance is not webauthn".to_string()])
    );

    let mut wrong = request(&"ab".repeat(48), "webauthn", "pii-svc");
    attach_attestation(&mut wrong, &d, Policy::aws(AT)).expect("attach");
    let r = evaluate(ATTESTATION_REGO, PKG, &wrong).expect("evaluates");
    assert!(!r.allow);
    assert!(
        r.reasons
            .contains(&"nitro attestation did not verify".to_string()),
        "{r:?}"
    );

    // A self-reported "verified" without a real document does not pass when
    // verification is attached from an expired time.
    let mut late = request(&pcr0, "webauthn", "pii-svc");
    attach_attestation(&mut late, &d, Policy::aws(AT + 86_400)).expect("attach");
    assert!(
        !evaluate(ATTESTATION_REGO, PKG, &late)
            .expect("evaluates")
            .allow
    );

    let mut other = request(&pcr0, "webauthn", "billing");
    attach_attestation(&mut other, &d, Policy::aws(AT)).expect("attach");
    let r = evaluate(ATTESTATION_REGO, PKG, &other).expect("evaluates");
    assert_eq!(r.reasons, vec!["service is not pii-svc".to_string()]);

    // A broken policy is a clear error.
    assert!(evaluate("package x\nallow if {", PKG, &ok).is_err());
}
