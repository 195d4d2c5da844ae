//! Attestation end to end: the sidecar asks the enclave's (development) NSM
//! for a document with a fresh nonce, and the verifier checks it — accepted
//! with the right nonce and PCRs, rejected otherwise.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use pii_enclave::nsm::measure;
use pii_tests::{Stack, TEST_IMAGE};
use verifier::attestation::{pem_to_der, verify, Policy, Step};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_attestation_verifies_with_the_dev_root() {
    let stack = Stack::start().await;
    let nonce = "5eed".repeat(8);
    let http = reqwest::Client::new();
    let view: serde_json::Value = http
        .get(format!(
            "{}/v1/attestation?nonce={nonce}&user_data=abcd&format=json",
            stack.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["nonce"], nonce);
    assert_eq!(
        view["verified"], false,
        "the JSON view is never a verification"
    );
    let root = pem_to_der(view["dangerous_dev_root_pem"].as_str().unwrap()).unwrap();
    let raw = http
        .get(format!(
            "{}/v1/attestation?nonce={nonce}&user_data=abcd",
            stack.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["content-type"], "application/cbor");
    let doc = raw.bytes().await.unwrap().to_vec();

    let mut p = Policy::dangerous_with_root(now(), root.clone());
    p.nonce = Some(hex::decode(&nonce).unwrap());
    p.user_data = Some(vec![0xab, 0xcd]);
    p.expected_pcrs.insert(0, measure(TEST_IMAGE));
    let v = verify(&doc, &p).unwrap();
    assert_eq!(v.chain.len(), 3, "root, intermediate, leaf");
    assert!(!v.debug_mode);

    // Wrong nonce, wrong PCR0, and the real AWS root: all rejected.
    let mut wrong = p.clone();
    wrong.nonce = Some(vec![0; 16]);
    assert_eq!(verify(&doc, &wrong).unwrap_err().step(), Step::Policy);
    let mut wrong = p.clone();
    wrong.expected_pcrs.insert(0, measure(b"another image"));
    assert_eq!(verify(&doc, &wrong).unwrap_err().step(), Step::Policy);
    assert_eq!(
        verify(&doc, &Policy::aws(now())).unwrap_err().step(),
        Step::Chain
    );
    // The leaf lives three hours.
    let later = Policy::dangerous_with_root(now() + 4 * 3600, root);
    assert_eq!(verify(&doc, &later).unwrap_err().step(), Step::Validity);

    // Oversized fields are refused with a clear 400.
    let r = http
        .get(format!(
            "{}/v1/attestation?nonce={}",
            stack.url,
            "00".repeat(513)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{}/v1/attestation?nonce=xyz", stack.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_check_against_the_running_enclave() {
    use verifier::boot::{run, BootCheck, BootError};
    let stack = Stack::start().await;
    let mut template = Policy::aws(now());
    template.expected_pcrs.insert(0, measure(TEST_IMAGE));
    let check = BootCheck {
        sidecar: stack.url.clone(),
        policy_template: template.clone(),
        dangerous_trust_sidecar_root: true,
        timeout: std::time::Duration::from_secs(5),
    };
    let c = check.sidecar.clone();
    let ok = tokio::task::spawn_blocking(move || run(&check, now()))
        .await
        .unwrap();
    assert!(ok.is_ok(), "{:?}", ok.err());
    // Without trusting the dev root: refused at the chain (it is not AWS's).
    let strict = BootCheck {
        sidecar: c.clone(),
        policy_template: template.clone(),
        dangerous_trust_sidecar_root: false,
        timeout: std::time::Duration::from_secs(5),
    };
    let r = tokio::task::spawn_blocking(move || run(&strict, now()))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            Err(BootError::Rejected {
                step: Step::Chain,
                ..
            })
        ),
        "{r:?}"
    );
    // Wrong expected measurement.
    let mut wrong = template.clone();
    wrong
        .expected_pcrs
        .insert(0, measure(b"someone else's image"));
    let bad = BootCheck {
        sidecar: c,
        policy_template: wrong,
        dangerous_trust_sidecar_root: true,
        timeout: std::time::Duration::from_secs(5),
    };
    let r = tokio::task::spawn_blocking(move || run(&bad, now()))
        .await
        .unwrap();
    assert!(
        matches!(
            r,
            Err(BootError::Rejected {
                step: Step::Policy,
                ..
            })
        ),
        "{r:?}"
    );
    // No sidecar: a clear failure, not a hang.
    let gone = BootCheck {
        sidecar: "http://127.0.0.1:1".into(),
        policy_template: template,
        dangerous_trust_sidecar_root: true,
        timeout: std::time::Duration::from_secs(2),
    };
    let r = tokio::task::spawn_blocking(move || run(&gone, now()))
        .await
        .unwrap();
    assert!(matches!(r, Err(BootError::Unreachable(_))), "{r:?}");
}

#[test]
fn dev_nsm_documents_forged_chains_and_indefinite_maps() {
    use pii_enclave::nsm::{AttestRequest, DangerousDevNsm, Nsm};
    let nsm = DangerousDevNsm::new(TEST_IMAGE, b"cfg").unwrap();
    let root = pem_to_der(&nsm.dangerous_dev_root_pem().unwrap()).unwrap();
    assert_eq!(nsm.describe_pcr(0).unwrap(), measure(TEST_IMAGE));
    assert_eq!(nsm.random(100).unwrap().len(), 100);
    // Indefinite-length payload maps (as AWS allows) verify.
    nsm.set_indefinite_length_payload(true);
    let doc = nsm
        .attest(&AttestRequest {
            nonce: Some(vec![7; 16]),
            ..Default::default()
        })
        .unwrap();
    let mut p = Policy::dangerous_with_root(now(), root.clone());
    p.nonce = Some(vec![7; 16]);
    assert!(verify(&doc, &p).is_ok());
    // A forged chain that claims the AWS root: cabundle[0] swapped for the real
    // AWS root, intermediates self-made → refused at the chain (link 1).
    let aws_root = pem_to_der(verifier::attestation::AWS_NITRO_ROOT_G1_PEM).unwrap();
    let mut items: Vec<ciborium::value::Value> =
        match ciborium::from_reader(doc.as_slice()).unwrap() {
            ciborium::value::Value::Array(a) => a,
            _ => panic!(),
        };
    let payload = match &items[2] {
        ciborium::value::Value::Bytes(b) => b.clone(),
        _ => panic!(),
    };
    let mut m: Vec<(ciborium::value::Value, ciborium::value::Value)> =
        match ciborium::from_reader(payload.as_slice()).unwrap() {
            ciborium::value::Value::Map(m) => m,
            _ => panic!(),
        };
    for (k, v) in m.iter_mut() {
        if k.as_text() == Some("cabundle") {
            if let ciborium::value::Value::Array(c) = v {
                c[0] = ciborium::value::Value::Bytes(aws_root.clone());
            }
        }
    }
    let mut pb = vec![];
    ciborium::into_writer(&ciborium::value::Value::Map(m), &mut pb).unwrap();
    items[2] = ciborium::value::Value::Bytes(pb);
    let mut forged = vec![];
    ciborium::into_writer(&ciborium::value::Value::Array(items), &mut forged).unwrap();
    let e = verify(&forged, &Policy::aws(now())).unwrap_err();
    assert!(
        matches!(
            e,
            verifier::attestation::VerifyError::Chain { index: 1, .. }
        ),
        "{e:?}"
    );
}
