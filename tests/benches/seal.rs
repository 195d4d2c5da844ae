//! What unsealing costs with each seal, in one run on this machine: the
//! development seal (local AES-GCM: the floor), the Vault/OpenBao Transit
//! seal against a real `bao server -dev`, and the AWS KMS seal against the
//! KMS emulator (attestation document, fresh RSA-2048 key, SigV4, CMS).
//! Seal and unseal of a 64 KiB keyring; plus the KMS seal's own parts.
//!
//! `cargo bench -p pii-tests --bench seal` (part of `just bench`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pii_custody::kms_seal::{CredentialSource, KmsSeal, KmsSealConfig};
use pii_custody::nsm::{AttestRequest, DangerousDevNsm, Nsm};
use pii_custody::seal::{blob_hash, seal_blob, unseal_blob, Advance, DangerousDevSeal, Head, Seal};
use pii_custody::vault_seal::{VaultSealConfig, VaultTransitSeal};
use pii_kms_emulator::{Config, Emulator, Principal};
use pii_tests::{OpenBao, ROOT_TOKEN};

const N: usize = 40;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// One table row: seal (write) and unseal (load) p50/p99 in ms.
fn row(name: &str, w: &mut [Duration], u: &mut [Duration]) {
    println!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
        pct(w, 0.5),
        pct(w, 0.99),
        pct(u, 0.5),
        pct(u, 0.99)
    );
}

async fn time_seal(name: &str, seal: &dyn Seal, keyring: &[u8], gap: Duration) {
    let blob = seal_blob(seal, keyring).await.unwrap();
    let (mut w, mut u) = (Vec::new(), Vec::new());
    for _ in 0..N {
        tokio::time::sleep(gap).await;
        let t = Instant::now();
        let b = seal_blob(seal, keyring).await.unwrap();
        w.push(t.elapsed());
        std::hint::black_box(b);
        let t = Instant::now();
        let pt = unseal_blob(seal, &blob).await.unwrap();
        u.push(t.elapsed());
        assert_eq!(pt.len(), keyring.len());
    }
    row(name, &mut w, &mut u);
}

/// As the engine writes and loads with a rollback anchor: seal + advance the
/// anchor (check-and-set), and unseal + read the anchor.
async fn time_anchored(name: &str, seal: &dyn Seal, keyring: &[u8], gap: Duration) {
    let anchor = seal.anchor().expect("an anchored seal");
    let blob = seal_blob(seal, keyring).await.unwrap();
    let mut head = anchor.read().await.unwrap();
    let (mut w, mut u) = (Vec::new(), Vec::new());
    for _ in 0..N {
        tokio::time::sleep(gap).await;
        let t = Instant::now();
        let b = seal_blob(seal, keyring).await.unwrap();
        let next = Head {
            generation: head.map_or(1, |h| h.generation + 1),
            hash: blob_hash(&b),
        };
        assert_eq!(anchor.advance(head, next).await.unwrap(), Advance::Done);
        head = Some(next);
        w.push(t.elapsed());
        let t = Instant::now();
        let pt = unseal_blob(seal, &blob).await.unwrap();
        assert_eq!(anchor.read().await.unwrap(), head);
        u.push(t.elapsed());
        assert_eq!(pt.len(), keyring.len());
    }
    row(name, &mut w, &mut u);
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let keyring = vec![0x5au8; 64 * 1024];
        println!("seal / unseal of a 64 KiB keyring, {N} runs each, ms\n");
        println!("| seal | seal p50 | seal p99 | unseal p50 | unseal p99 |");
        println!("|---|---|---|---|---|");
        time_seal(
            "dangerous-dev (local AES-GCM)",
            &DangerousDevSeal::from_passphrase("bench"),
            &keyring,
            Duration::ZERO,
        )
        .await;

        let bao = OpenBao::start().await.expect("OpenBao (run ci/setup.sh)");
        std::env::set_var("PII_BENCH_BAO_TOKEN", ROOT_TOKEN);
        let boot = host_proxy::vault::bootstrap(&host_proxy::vault::BootstrapArgs {
            ca_cert: None,
            token_ttl: "20m".into(),
            dangerous_wrapped_secret_id: true,
            ..host_proxy::vault::BootstrapArgs::new(&bao.url, "PII_BENCH_BAO_TOKEN")
        })
        .await
        .unwrap();
        let vault = VaultTransitSeal::new(VaultSealConfig {
            deployment_id: "pii-tests".into(),
            address: bao.url.clone(),
            mount: "transit".into(),
            key: "pii-enclave-kek".into(),
            approle_mount: "approle".into(),
            role_id: boot["role_id"].as_str().unwrap().into(),
            dangerous_wrapped_secret_id: Some(
                boot["dangerous_wrapped_secret_id"].as_str().unwrap().into(),
            ),
            ca_certs: vec![],
            timeout_secs: 5,
            anchor_kv_mount: "pii-enclave-anchor".into(),
            dangerous_no_anchor: false,
            anchor_expect_record: false,
            dangerous_allow_http: true,
        })
        .unwrap();
        time_seal(
            "vault-transit (OpenBao dev, HTTP)",
            &vault,
            &keyring,
            Duration::ZERO,
        )
        .await;
        time_anchored(
            "vault-transit + KV v2 anchor (write: seal + CAS; load: unseal + read)",
            &vault,
            &keyring,
            Duration::ZERO,
        )
        .await;

        let nsm = Arc::new(DangerousDevNsm::new(b"bench image", b"config").unwrap());
        let root =
            verifier::attestation::pem_to_der(&nsm.dangerous_dev_root_pem().unwrap()).unwrap();
        let em = Emulator::new(Config {
            region: "eu-west-1".into(),
            account_id: "111122223333".into(),
            principals: vec![Principal {
                access_key_id: "AKIABENCH".into(),
                secret_access_key: "bench-secret".into(),
                session_token: None,
                arn: "arn:aws:iam::111122223333:role/pii-node".into(),
            }],
            attestation_roots_der: vec![root],
            max_document_age_secs: 300,
            imds_access_key_id: Some("AKIABENCH".into()),
        });
        let key = em.create_key(None).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kms_host = l.local_addr().unwrap().to_string();
        let url = format!("http://{kms_host}");
        tokio::spawn(em.clone().serve(l));
        let kms_cfg = KmsSealConfig {
            deployment_id: "pii-tests".into(),
            key_id: key,
            region: "eu-west-1".into(),
            endpoint: Some(url.clone()),
            proxy: None,
            ca_certs: vec![],
            credentials: CredentialSource::Imds { endpoint: url },
            timeout_secs: 5,
            dangerous_allow_http: true,
            anchor: None,
            dangerous_no_anchor: true,
        };
        let kms = KmsSeal::new(kms_cfg.clone(), nsm.clone()).unwrap();
        // Keyring writes are rare: with idle time between them the RSA keys
        // come from the background spares; back to back, keygen bounds it.
        time_seal(
            "aws-kms (KMS emulator, HTTP), 400 ms apart",
            &kms,
            &keyring,
            Duration::from_millis(400),
        )
        .await;
        time_seal(
            "aws-kms (KMS emulator, HTTP), back to back",
            &kms,
            &keyring,
            Duration::ZERO,
        )
        .await;

        // With the DynamoDB rollback anchor (moto's DynamoDB, server mode),
        // its principal's credentials sealed under the KMS key.
        let moto = pii_tests::Moto::start().await;
        let principal = pii_custody::sigv4::Credentials {
            access_key_id: "AKIABENCHANCHOR".into(),
            secret_access_key: zeroize::Zeroizing::new("bench-anchor-secret".into()),
            session_token: None,
        };
        pii_tests::create_anchor_table(&moto.host, &principal, "anchor").await;
        let role = pii_custody::sigv4::Credentials {
            access_key_id: "AKIABENCH".into(),
            secret_access_key: zeroize::Zeroizing::new("bench-secret".into()),
            session_token: None,
        };
        let creds = serde_json::json!({"AccessKeyId": "AKIABENCHANCHOR",
                                       "SecretAccessKey": "bench-anchor-secret"});
        use base64::Engine as _;
        let (st, v) = pii_tests::kms_call(
            &kms_host,
            &role,
            "Encrypt",
            &serde_json::json!({"KeyId": kms_cfg.key_id,
                "Plaintext": base64::engine::general_purpose::STANDARD.encode(creds.to_string()),
                "EncryptionContext": {"pii-enclave": "anchor-credentials-v1",
                                      "pii-enclave:deployment": "pii-tests"}}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let mut cfg = kms_cfg.clone();
        cfg.anchor = Some(pii_custody::kms_seal::DynamoAnchorConfig {
            table: "anchor".into(),
            endpoint: Some(format!("http://{}", moto.host)),
            credentials_ciphertext: v["CiphertextBlob"].as_str().unwrap().into(),
            expect_record: false,
        });
        cfg.dangerous_no_anchor = false;
        let anchored = KmsSeal::new(cfg, nsm.clone()).unwrap();
        time_anchored(
            "aws-kms + DynamoDB anchor (moto), 400 ms apart (write / load)",
            &anchored,
            &keyring,
            Duration::from_millis(400),
        )
        .await;

        // Where the KMS seal's time goes (enclave side).
        let mut keygen = Vec::new();
        let mut attest = Vec::new();
        for _ in 0..N {
            let t = Instant::now();
            let k =
                aws_lc_rs::rsa::PrivateDecryptingKey::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .unwrap();
            keygen.push(t.elapsed());
            use aws_lc_rs::encoding::AsDer as _;
            let spki = k.public_key().as_der().unwrap().as_ref().to_vec();
            let t = Instant::now();
            std::hint::black_box(
                nsm.attest(&AttestRequest {
                    public_key: Some(spki),
                    ..AttestRequest::default()
                })
                .unwrap(),
            );
            attest.push(t.elapsed());
        }
        println!(
            "\nKMS seal parts, p50 ms: RSA-2048 key generation {:.2}, dev-NSM attestation {:.2}",
            pct(&mut keygen, 0.5),
            pct(&mut attest, 0.5)
        );
        drop(bao);
    });
}
