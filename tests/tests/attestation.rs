//! Attestation end to end: the sidecar asks the enclave's (development) NSM
//! for a document with a fresh nonce, and the verifier checks it — accepted
//! with the right nonce and PCRs, rejected otherwise.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use pii_custody::nsm::measure;
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
    use pii_proto::attest::{Purpose, UserData};
    let stack = Stack::start().await;
    let nonce = "5eed".repeat(8);
    let http = reqwest::Client::new();
    let get = |q: String, token: Option<&str>| {
        let mut rb = http.get(format!("{}/v1/attestation?{q}", stack.url));
        if let Some(t) = token {
            rb = rb.header("X-Vault-Token", t);
        }
        rb.send()
    };
    let root_token = Some(pii_tests::ROOT_TOKEN);
    // The audit key is made when the host first connects, in the background;
    // reading it first makes sure it exists before the document is asked for
    // (under load the document could otherwise come first, without it).
    let audit_key = stack.client().get("sys/audit-key").await;
    let view: serde_json::Value = get(
        format!("nonce={nonce}&user_data=abcd&format=json"),
        root_token,
    )
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
    assert_eq!(view["enclave_user_data"]["purpose"], "report", "{view}");
    let root = pem_to_der(view["dangerous_dev_root_pem"].as_str().unwrap()).unwrap();
    let raw = get(format!("nonce={nonce}&user_data=abcd"), root_token)
        .await
        .unwrap();
    assert_eq!(raw.headers()["content-type"], "application/cbor");
    let doc = raw.bytes().await.unwrap().to_vec();

    let mut p = Policy::dangerous_with_root(now(), root.clone());
    p.nonce = Some(hex::decode(&nonce).unwrap());
    p.expected_pcrs.insert(0, measure(TEST_IMAGE));
    let v = verify(&doc, &p).unwrap();
    assert_eq!(v.chain.len(), 3, "root, intermediate, leaf");
    assert!(!v.debug_mode);
    // The enclave's own user_data: its purpose, the audit key's hash (pinnable
    // from a verified document), and only the hash of the caller's bytes.
    assert_eq!(v.doc.public_key, None, "never a caller-chosen key");
    let ud = UserData::decode(v.doc.user_data.as_deref().unwrap()).unwrap();
    assert_eq!(ud.purpose, Purpose::Report);
    assert_eq!(
        ud.caller_data_sha256,
        Some(pii_custody::attest::sha256(&[0xab, 0xcd]))
    );
    let audit_pub = hex::decode(audit_key.data("public_key").as_str().unwrap()).unwrap();
    assert_eq!(
        ud.audit_key_sha256,
        Some(pii_custody::attest::sha256(&audit_pub))
    );

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

    // Bad requests get a clear 400; no token or a token without the path, 403.
    let spki = "30".repeat(40);
    for (q, token, status, msg) in [
        (
            format!("nonce={}", "00".repeat(65)),
            root_token,
            400,
            "nonce must be",
        ),
        (
            format!("nonce={}", "00".repeat(7)),
            root_token,
            400,
            "nonce must be",
        ),
        (
            "user_data=abcd".to_string(),
            root_token,
            400,
            "nonce is required",
        ),
        ("nonce=xyz".to_string(), root_token, 400, "must be hex"),
        (
            format!("nonce={nonce}&user_data={}", "00".repeat(1025)),
            root_token,
            400,
            "user_data must be",
        ),
        (
            format!("nonce={nonce}&public_key={spki}"),
            root_token,
            400,
            "never binds a caller's public key",
        ),
        (format!("nonce={nonce}"), None, 403, "permission denied"),
        (
            format!("nonce={nonce}"),
            Some("not-a-token"),
            403,
            "permission denied",
        ),
    ] {
        let r = get(q.clone(), token).await.unwrap();
        assert_eq!(r.status(), status, "{q}");
        let body = r.text().await.unwrap();
        assert!(body.contains(msg), "{q}: {body}");
    }
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
        token: Some(pii_tests::ROOT_TOKEN.into()),
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
        token: Some(pii_tests::ROOT_TOKEN.into()),
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
        token: Some(pii_tests::ROOT_TOKEN.into()),
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
        token: None,
    };
    let r = tokio::task::spawn_blocking(move || run(&gone, now()))
        .await
        .unwrap();
    assert!(matches!(r, Err(BootError::Unreachable(_))), "{r:?}");
}

#[test]
fn dev_nsm_documents_forged_chains_and_indefinite_maps() {
    use pii_custody::nsm::{AttestRequest, DangerousDevNsm, Nsm};
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
