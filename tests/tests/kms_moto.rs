//! The KMS emulator's non-Recipient protocol checked against a second,
//! independent KMS implementation: moto (PyPI) in server mode. The same
//! SigV4-signed JSON calls go to both; results and error types must agree.
//! (moto has no attestation support, so Recipient is tested in kms_seal.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pii_custody::sigv4::Credentials;
use pii_kms_emulator::{Config, Emulator, Principal};
use pii_tests::kms_call;
use serde_json::{json, Value};

fn creds() -> Credentials {
    Credentials {
        access_key_id: "AKIAMOTODIFF".into(),
        secret_access_key: zeroize::Zeroizing::new("moto-diff-secret".into()),
        session_token: None,
    }
}

async fn start_emulator() -> String {
    let em = Emulator::new(Config {
        region: "eu-west-1".into(),
        account_id: "123456789012".into(),
        principals: vec![Principal {
            access_key_id: "AKIAMOTODIFF".into(),
            secret_access_key: "moto-diff-secret".into(),
            session_token: None,
            arn: "arn:aws:iam::123456789012:user/diff".into(),
        }],
        attestation_roots_der: vec![],
        max_document_age_secs: 300,
        imds_access_key_id: None,
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = l.local_addr().unwrap().to_string();
    tokio::spawn(em.serve(l));
    host
}

/// The same scenario against one implementation: a transcript of
/// `step → ok | error type`, plus checks that hold for any correct KMS.
async fn scenario(host: &str) -> Vec<(String, String)> {
    let c = creds();
    let mut log = Vec::new();
    let call = |action: &'static str, body: Value| {
        let c = c.clone();
        let host = host.to_owned();
        async move { kms_call(&host, &c, action, &body).await }
    };
    let outcome = |(status, v): &(u16, Value)| {
        if *status == 200 {
            "ok".to_owned()
        } else {
            v["__type"]
                .as_str()
                .unwrap_or("?")
                .rsplit('#')
                .next()
                .unwrap()
                .to_owned()
        }
    };

    let r = call("CreateKey", json!({"Description": "pii"})).await;
    log.push(("CreateKey".into(), outcome(&r)));
    let meta = &r.1["KeyMetadata"];
    for f in [
        "KeyId",
        "Arn",
        "AWSAccountId",
        "Enabled",
        "KeyState",
        "KeyUsage",
        "KeySpec",
        "CustomerMasterKeySpec",
        "EncryptionAlgorithms",
        "KeyManager",
        "Origin",
        "CreationDate",
        "Description",
    ] {
        assert!(
            meta.get(f).is_some(),
            "{host}: KeyMetadata.{f} missing: {meta}"
        );
    }
    let id = meta["KeyId"].as_str().unwrap().to_owned();
    let arn = meta["Arn"].as_str().unwrap().to_owned();
    assert!(arn.ends_with(&format!(":key/{id}")), "{arn}");
    assert_eq!(meta["KeyState"], "Enabled");

    let other = call("CreateKey", json!({})).await.1["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_owned();

    let ctx = json!({"tenant": "acme"});
    let r = call(
        "Encrypt",
        json!({"KeyId": id, "Plaintext": B64.encode("jane@example.com"), "EncryptionContext": ctx}),
    )
    .await;
    log.push(("Encrypt".into(), outcome(&r)));
    assert_eq!(r.1["KeyId"], arn.as_str());
    let blob = r.1["CiphertextBlob"].as_str().unwrap().to_owned();

    let r = call(
        "Decrypt",
        json!({"CiphertextBlob": blob, "EncryptionContext": ctx}),
    )
    .await;
    log.push(("Decrypt".into(), outcome(&r)));
    assert_eq!(
        B64.decode(r.1["Plaintext"].as_str().unwrap()).unwrap(),
        b"jane@example.com"
    );
    assert_eq!(r.1["KeyId"], arn.as_str());

    for (step, body) in [
        (
            "Decrypt, other context",
            json!({"CiphertextBlob": blob, "EncryptionContext": {"tenant": "evil"}}),
        ),
        ("Decrypt, no context", json!({"CiphertextBlob": blob})),
        (
            "Decrypt, garbage",
            json!({"CiphertextBlob": B64.encode([7u8; 64])}),
        ),
        (
            "Encrypt, unknown key",
            json!({"KeyId": "00000000-0000-0000-0000-000000000000", "Plaintext": B64.encode("x")}),
        ),
        (
            "DescribeKey, unknown key",
            json!({"KeyId": "00000000-0000-0000-0000-000000000000"}),
        ),
        ("GenerateDataKey, no size", json!({"KeyId": id})),
    ] {
        let action = step.split(',').next().unwrap();
        let action: &'static str = match action {
            "Decrypt" => "Decrypt",
            "Encrypt" => "Encrypt",
            "DescribeKey" => "DescribeKey",
            _ => "GenerateDataKey",
        };
        let r = call(action, body).await;
        log.push((step.into(), outcome(&r)));
    }

    for (spec, n) in [
        (json!({"KeySpec": "AES_256"}), 32),
        (json!({"NumberOfBytes": 64}), 64),
    ] {
        let mut body = json!({"KeyId": id});
        body.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        let r = call("GenerateDataKey", body).await;
        log.push((format!("GenerateDataKey {n}"), outcome(&r)));
        let pt = B64.decode(r.1["Plaintext"].as_str().unwrap()).unwrap();
        assert_eq!(pt.len(), n);
        let back = call(
            "Decrypt",
            json!({"CiphertextBlob": r.1["CiphertextBlob"], "KeyId": id}),
        )
        .await;
        assert_eq!(
            B64.decode(back.1["Plaintext"].as_str().unwrap()).unwrap(),
            pt
        );
    }

    // Decrypt naming a different key than the one that encrypted.
    let r = call(
        "Decrypt",
        json!({"CiphertextBlob": blob, "EncryptionContext": ctx, "KeyId": other}),
    )
    .await;
    log.push(("Decrypt, other KeyId".into(), outcome(&r)));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kms_emulator_agrees_with_moto() {
    let moto_server = pii_tests::Moto::start().await;
    let moto = moto_server.host.clone();
    let emu = start_emulator().await;
    let a = scenario(&moto).await;
    let b = scenario(&emu).await;
    assert_eq!(a.len(), b.len());
    // Where moto 5 departs from AWS's documented answer, both must refuse and
    // the emulator must give AWS's answer: a Decrypt naming another key
    // (AWS: IncorrectKeyException; moto: AccessDeniedException), and a blob
    // that is not a ciphertext (AWS: InvalidCiphertextException; moto reads a
    // key id out of the garbage and answers AccessDeniedException).
    let aws_says = [
        ("Decrypt, other KeyId", "IncorrectKeyException"),
        ("Decrypt, garbage", "InvalidCiphertextException"),
    ];
    for ((step, m), (_, e)) in a.iter().zip(&b) {
        if let Some((_, want)) = aws_says.iter().find(|(s, _)| s == step) {
            assert_eq!(e, want, "{step}");
            assert_ne!(m, "ok", "{step}: moto accepted");
            continue;
        }
        assert_eq!(m, e, "{step}: moto {m}, emulator {e}");
    }
    assert!(
        a.iter().filter(|(_, o)| o != "ok").count() >= 6,
        "errors compared: {a:?}"
    );
}
