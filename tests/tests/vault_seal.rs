//! The Vault/OpenBao Transit seal against a real OpenBao dev server: AppRole
//! with a response-wrapped secret_id the enclave unwraps itself, envelope
//! sealing, restart + unseal, KEK rotation with rewrap, a stolen wrapped
//! secret_id detected, and OpenBao going away while keys keep serving.
//!
//! Why this size: every hostile-Vault answer is its own test against a real OpenBao; the shared set-up lives in `pii_tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use pii_custody::seal::{seal_blob, unseal_blob, Seal, SealError};
use pii_custody::vault_seal::{VaultSealConfig, VaultTransitSeal};
use pii_tests::{
    b64, egress_via_relay, files_under, keyring_blobs, tap, wait_health, OpenBao, Stack, StackOpts,
    ROOT_TOKEN,
};
use serde_json::{json, Value};

async fn vault(
    bao: &OpenBao,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
    wrap: bool,
) -> Value {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}/v1/{path}", bao.url))
        .header("X-Vault-Token", ROOT_TOKEN);
    if wrap {
        req = req.header("X-Vault-Wrap-TTL", "300s");
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

/// `host-proxy vault bootstrap` (the real code path) with the root token.
/// Returns the role_id; checks the wrapped secret_id it hands out works.
async fn bootstrap(bao: &OpenBao) -> String {
    std::env::set_var("PII_TEST_BAO_TOKEN", ROOT_TOKEN);
    let args = host_proxy::vault::BootstrapArgs {
        ca_cert: None,
        token_ttl: "20m".into(),
        dangerous_wrapped_secret_id: true,
        ..host_proxy::vault::BootstrapArgs::new(&bao.url, "PII_TEST_BAO_TOKEN")
    };
    let out = host_proxy::vault::bootstrap(&args).await.unwrap();
    // Idempotent: a second run succeeds and keeps the role_id.
    let again = host_proxy::vault::bootstrap(&args).await.unwrap();
    assert_eq!(out["role_id"], again["role_id"]);
    let role_id = out["role_id"].as_str().unwrap().to_owned();
    let s = seal(
        bao,
        &role_id,
        out["dangerous_wrapped_secret_id"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let blob = seal_blob(&s, b"bootstrap check").await.unwrap();
    assert_eq!(
        &unseal_blob(&s, &blob).await.unwrap()[..],
        b"bootstrap check"
    );
    assert!(out["enclave_seal_config"]
        .as_str()
        .unwrap()
        .contains(&role_id));
    // The role's policy is least-privilege: its token may use the KEK and
    // nothing else (another transit key, KV secrets).
    let sid = vault(
        bao,
        reqwest::Method::POST,
        "auth/approle/role/pii-enclave/secret-id",
        Some(json!({})),
        false,
    )
    .await;
    let login = vault(
        bao,
        reqwest::Method::POST,
        "auth/approle/login",
        Some(json!({"role_id": role_id, "secret_id": sid["data"]["secret_id"]})),
        false,
    )
    .await;
    let token = login["auth"]["client_token"].as_str().unwrap();
    vault(
        bao,
        reqwest::Method::POST,
        "transit/keys/other",
        Some(json!({})),
        false,
    )
    .await;
    let http = reqwest::Client::new();
    let try_as = |path: &str| {
        http.post(format!("{}/v1/{path}", bao.url))
            .header("X-Vault-Token", token)
            .json(&json!({"plaintext": "aGk="}))
            .send()
    };
    assert_eq!(
        try_as("transit/encrypt/pii-enclave-kek")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(try_as("transit/encrypt/other").await.unwrap().status(), 403);
    assert_eq!(try_as("secret/data/x").await.unwrap().status(), 403);
    role_id
}

/// A fresh response-wrapped secret_id (a single-use wrapping token).
async fn wrapped_secret_id(bao: &OpenBao) -> String {
    let r = vault(
        bao,
        reqwest::Method::POST,
        "auth/approle/role/pii-enclave/secret-id",
        Some(json!({})),
        true,
    )
    .await;
    r["wrap_info"]["token"].as_str().unwrap().to_owned()
}

/// The seal as bootstrap configures it, at `address`, trusting `ca` if given.
fn seal_at(
    address: &str,
    role_id: &str,
    wrapped: String,
    ca: Option<&std::path::Path>,
) -> VaultTransitSeal {
    VaultTransitSeal::new(seal_config(address, role_id, wrapped, ca)).unwrap()
}

fn seal_config(
    address: &str,
    role_id: &str,
    wrapped: String,
    ca: Option<&std::path::Path>,
) -> VaultSealConfig {
    VaultSealConfig {
        deployment_id: "pii-tests".into(),
        address: address.into(),
        mount: "transit".into(),
        key: "pii-enclave-kek".into(),
        approle_mount: "approle".into(),
        role_id: role_id.into(),
        dangerous_wrapped_secret_id: Some(wrapped),
        ca_certs: ca
            .map(|c| vec![c.display().to_string()])
            .unwrap_or_default(),
        timeout_secs: 5,
        anchor_kv_mount: "pii-enclave-anchor".into(),
        dangerous_no_anchor: false,
        anchor_expect_record: false,
        dangerous_allow_http: !address.starts_with("https://"),
    }
}

fn seal(bao: &OpenBao, role_id: &str, wrapped: String) -> VaultTransitSeal {
    seal_at(&bao.url, role_id, wrapped, None)
}

fn inner(blob: &[u8]) -> (&[u8], &[u8]) {
    // magic, version, id length, id, generation (8), previous hash (32).
    let n = 7 + usize::from(blob[6]) + 40;
    (&blob[..n], &blob[n..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_unseal_restart_rotate_and_detect_a_stolen_secret_id() {
    let bao = OpenBao::start().await.unwrap();
    let role_id = bootstrap(&bao).await;
    let keyring =
        b"pretend keyring: 32 bytes of key material follow 0123456789abcdef0123456789abcdef";

    let s1 = seal(&bao, &role_id, wrapped_secret_id(&bao).await);
    let blob = seal_blob(&s1, keyring).await.unwrap();
    assert!(
        !blob
            .windows(16)
            .any(|w| keyring.windows(16).any(|k| k == w)),
        "plaintext leaked into the blob"
    );
    assert_eq!(&unseal_blob(&s1, &blob).await.unwrap()[..], keyring);

    // A restarted enclave (new process, new wrapped secret_id) unseals it.
    let s2 = seal(&bao, &role_id, wrapped_secret_id(&bao).await);
    assert_eq!(&unseal_blob(&s2, &blob).await.unwrap()[..], keyring);

    // Tampering is refused.
    let mut bad = blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        unseal_blob(&s2, &bad).await.unwrap_err(),
        SealError::Authentication
    );

    // KEK rotation: rewrap the data key, then retire the old KEK version.
    vault(
        &bao,
        reqwest::Method::POST,
        "transit/keys/pii-enclave-kek/rotate",
        Some(json!({})),
        false,
    )
    .await;
    let (head, wrapped) = inner(&blob);
    let rewrapped = s2.rewrap(wrapped).await.unwrap();
    assert!(std::str::from_utf8(&rewrapped[2..12])
        .unwrap()
        .starts_with("vault:v2:"));
    let blob2 = [head, &rewrapped].concat();
    vault(
        &bao,
        reqwest::Method::POST,
        "transit/keys/pii-enclave-kek/config",
        Some(json!({"min_decryption_version": 2})),
        false,
    )
    .await;
    assert_eq!(&unseal_blob(&s2, &blob2).await.unwrap()[..], keyring);
    let err = unseal_blob(&s2, &blob).await.unwrap_err();
    assert!(
        matches!(err, SealError::Unreachable(ref m) if m.contains("400")),
        "{err:?}"
    );
    // New seals use the newest KEK version.
    let blob3 = seal_blob(&s2, keyring).await.unwrap();
    assert!(inner(&blob3).1[2..].starts_with(b"vault:v2:"));

    // Someone unwraps the enclave's secret_id first: the enclave notices.
    let stolen = wrapped_secret_id(&bao).await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/sys/wrapping/unwrap", bao.url))
        .header("X-Vault-Token", &stolen)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let s3 = seal(&bao, &role_id, stolen);
    let err = unseal_blob(&s3, &blob2).await.unwrap_err();
    assert!(
        matches!(err, SealError::Unreachable(ref m) if m.contains("possible theft")),
        "{err:?}"
    );
    // And a wrapping token only works once even for the enclave.
    let once = wrapped_secret_id(&bao).await;
    let a = seal(&bao, &role_id, once.clone());
    let b = seal(&bao, &role_id, once);
    assert!(unseal_blob(&a, &blob2).await.is_ok());
    assert!(unseal_blob(&b, &blob2).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_memory_keep_serving_when_openbao_goes_down() {
    let bao = OpenBao::start().await.unwrap();
    let role_id = bootstrap(&bao).await;
    let s: Arc<dyn Seal> = Arc::new(seal(&bao, &role_id, wrapped_secret_id(&bao).await));
    let mut stack = Stack::start_with(StackOpts {
        seal: Some(s),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    let r = c.post("transit/keys/pii", json!({})).await;
    assert!(
        r.status == 200 || r.status == 204,
        "{} {:?}",
        r.status,
        r.body
    );
    let r = c
        .post(
            "transit/encrypt/pii",
            json!({"plaintext": b64(b"078-05-1120")}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ct = r.data("ciphertext").as_str().unwrap().to_owned();

    // Restart the enclave with OpenBao up: it unseals the stored keyring.
    stack.kill_enclave().await;
    stack.opts.seal = Some(Arc::new(seal(
        &bao,
        &role_id,
        wrapped_secret_id(&bao).await,
    )));
    stack.start_enclave().unwrap();
    let mut ok = false;
    for _ in 0..100 {
        let r = c
            .post("transit/decrypt/pii", json!({"ciphertext": ct}))
            .await;
        if r.status == 200 {
            assert_eq!(r.data("plaintext"), &json!(b64(b"078-05-1120")));
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "old ciphertext did not decrypt after restart + unseal");
    // The first encryption after a restart stores a nonce reservation (one
    // keyring write, so the seal backend must be up).
    let r = c
        .post("transit/encrypt/pii", json!({"plaintext": b64(b"x")}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // OpenBao goes away: keys already in memory keep encrypting…
    drop(bao);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for _ in 0..5 {
        let r = c
            .post("transit/encrypt/pii", json!({"plaintext": b64(b"x")}))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    // …but decrypts fail closed: their audit checkpoint cannot reach the
    // anchor (OpenBao's KV), and a host that blocks the anchor must not be
    // able to release plaintext it can then erase from the log
    // (`[audit] checkpoint_secs = N` trades that for availability).
    let r = c
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(
        r.error(),
        Some("audit checkpoint could not be published"),
        "{:?}",
        r.body
    );
    // …but a change that must be sealed is refused, not half-done.
    let r = c.post("transit/keys/other", json!({})).await;
    assert!(r.status >= 500, "{} {:?}", r.status, r.body);
    let h = c.get("sys/health").await;
    assert_eq!(h.status, 200, "keys in memory still serve: {:?}", h.body);
    assert_eq!(h.body["seal_status"], "backend unreachable", "{:?}", h.body);
    assert!(h.body["seal_error"].is_string(), "{:?}", h.body);
    let r = c
        .post("transit/encrypt/pii", json!({"plaintext": b64(b"y")}))
        .await;
    assert_eq!(
        r.status, 200,
        "the failed write must not break existing keys"
    );

    // A cold start without the backend stays sealed and answers 503.
    stack.kill_enclave().await;
    stack.opts.seal = Some(Arc::new(seal_at(
        "http://127.0.0.1:9",
        &role_id,
        "hvs.none".into(),
        None,
    )));
    stack.start_enclave().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = c
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    let r = c.get("sys/health").await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["sealed"], true, "{:?}", r.body);
    assert_eq!(r.body["seal_status"], "backend unreachable", "{:?}", r.body);
}

/// Vault over TLS through the egress relay: every byte the relay forwards
/// and every file the host writes is searched for the keyring's key bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_never_sees_key_material() {
    use vaultrs::api::ResponseWrapper as _;

    let (bao, ca) = OpenBao::start_tls().await.unwrap();
    let bao_port: u16 = bao.url.rsplit(':').next().unwrap().parse().unwrap();
    std::env::set_var("PII_TEST_BAO_TOKEN", ROOT_TOKEN);
    let boot = host_proxy::vault::bootstrap(&host_proxy::vault::BootstrapArgs {
        ca_cert: Some(ca.display().to_string()),
        token_ttl: "20m".into(),
        dangerous_wrapped_secret_id: true,
        ..host_proxy::vault::BootstrapArgs::new(&bao.url, "PII_TEST_BAO_TOKEN")
    })
    .await
    .unwrap();
    let role_id = boot["role_id"].as_str().unwrap().to_owned();
    let admin = vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(&bao.url)
            .token(ROOT_TOKEN)
            .ca_certs(vec![ca.display().to_string()])
            .build()
            .unwrap(),
    )
    .unwrap();
    let fresh_wrapped = || async {
        vaultrs::api::auth::approle::requests::GenerateNewSecretIDRequest::builder()
            .mount("approle")
            .role_name("pii-enclave")
            .build()
            .unwrap()
            .wrap(&admin)
            .await
            .unwrap()
            .info
            .token
    };

    // Host: relay → tap → OpenBao. Enclave: local port → relay.
    let (tap_port, seen) = tap(bao_port).await;
    let dir = tempfile::tempdir().unwrap();
    let local_port = egress_via_relay(dir.path(), tap_port).await;
    let through_relay = |wrapped: String| -> Arc<dyn Seal> {
        Arc::new(seal_at(
            &format!("https://127.0.0.1:{local_port}"),
            &role_id,
            wrapped,
            Some(&ca),
        ))
    };

    let mut stack = Stack::start_with(StackOpts {
        seal: Some(through_relay(
            boot["dangerous_wrapped_secret_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        )),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    for k in ["pii", "cards"] {
        let r = c.post(&format!("transit/keys/{k}"), json!({})).await;
        assert!(
            r.status == 200 || r.status == 204,
            "{} {:?}",
            r.status,
            r.body
        );
    }
    assert_eq!(
        c.post("transit/keys/pii/rotate", json!({})).await.status / 100,
        2
    );
    let r = c
        .post(
            "transit/encrypt/pii",
            json!({"plaintext": b64(b"078-05-1120")}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ct = r.data("ciphertext").as_str().unwrap().to_owned();
    // Restart: the new enclave unseals through the relay.
    stack.kill_enclave().await;
    stack.opts.seal = Some(through_relay(fresh_wrapped().await));
    stack.start_enclave().unwrap();
    let mut ok = false;
    for _ in 0..100 {
        let r = c
            .post("transit/decrypt/pii", json!({"ciphertext": ct}))
            .await;
        if r.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "no unseal through the relay");

    // The key bytes, read the only way there is: unsealing the newest stored
    // blob with Vault's help (as an enclave would).
    let mut files = Vec::new();
    files_under(stack.dir.path(), &mut files);
    let newest = files
        .iter()
        .filter(|(p, _)| p.contains("keyring-") && p.ends_with(".blob"))
        .max_by(|a, b| a.0.cmp(&b.0))
        .expect("a stored keyring blob")
        .1
        .clone();
    let direct: Arc<dyn Seal> = Arc::new(seal_at(
        &bao.url,
        &role_id,
        fresh_wrapped().await,
        Some(&ca),
    ));
    let pt = unseal_blob(direct.as_ref(), &newest).await.unwrap();
    let kr = pii_engine::keyring::Keyring::from_cbor(&pt, 1).unwrap();
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for key in kr.keys.values() {
        for v in key.doc.versions.values() {
            secrets.push(v.key.to_vec());
            secrets.push(v.hmac_key.to_vec());
        }
    }
    assert!(
        secrets.len() >= 6,
        "pii v1, v2 and cards v1, each with an HMAC key"
    );
    let captured = seen.lock().unwrap().clone();
    assert!(
        captured.len() > 1000,
        "the relay carried the Vault traffic ({} bytes)",
        captured.len()
    );
    let needle_hits = |hay: &[u8]| {
        secrets
            .iter()
            .filter(|s| s.len() >= 16)
            .any(|s| hay.windows(16).any(|w| w == &s[..16]))
    };
    assert!(!needle_hits(&captured), "key bytes crossed the relay");
    for (path, bytes) in &files {
        assert!(!needle_hits(bytes), "key bytes in a host file: {path}");
    }
    // And the traffic was TLS, not HTTP.
    assert!(
        !captured.windows(9).any(|w| w == b"transit/e"),
        "plaintext HTTP crossed the relay"
    );
}

/// The secret_id reaches the enclave only encrypted to its attested
/// bootstrap key (`host-proxy vault bootstrap --sidecar`, the real code path,
/// against a real OpenBao over TLS). Then the host plays the attacker with
/// everything it saw: the sidecar traffic of the bootstrap, the enclave's
/// relayed Vault traffic, the config (role_id) and its own files. No string
/// in any of it logs in, and the delivered secret_id is used up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_bootstrap_gives_the_host_nothing_to_log_in_with() {
    use pii_custody::nsm::{measure, DangerousDevNsm};
    let (bao, ca) = OpenBao::start_tls().await.unwrap();
    let bao_port: u16 = bao.url.rsplit(':').next().unwrap().parse().unwrap();
    std::env::set_var("PII_TEST_BAO_TOKEN", ROOT_TOKEN);
    let base = host_proxy::vault::BootstrapArgs {
        ca_cert: Some(ca.display().to_string()),
        token_ttl: "20m".into(),
        ..host_proxy::vault::BootstrapArgs::new(&bao.url, "PII_TEST_BAO_TOKEN")
    };
    let boot = host_proxy::vault::bootstrap(&base).await.unwrap();
    assert!(boot.get("dangerous_wrapped_secret_id").is_none(), "{boot}");
    let role_id = boot["role_id"].as_str().unwrap().to_owned();

    // The enclave reaches OpenBao through the host's relay (tapped), with TLS
    // ending inside it, and has no secret_id yet.
    let (vault_tap, vault_seen) = tap(bao_port).await;
    let dir = tempfile::tempdir().unwrap();
    let local_port = egress_via_relay(dir.path(), vault_tap).await;
    let nsm =
        Arc::new(DangerousDevNsm::new(b"pii-enclave release image", b"enclave.toml").unwrap());
    let seal = VaultTransitSeal::new(VaultSealConfig {
        deployment_id: "pii-tests".into(),
        address: format!("https://127.0.0.1:{local_port}"),
        mount: "transit".into(),
        key: "pii-enclave-kek".into(),
        approle_mount: "approle".into(),
        role_id: role_id.clone(),
        dangerous_wrapped_secret_id: None,
        ca_certs: vec![ca.display().to_string()],
        timeout_secs: 5,
        anchor_kv_mount: "pii-enclave-anchor".into(),
        dangerous_no_anchor: false,
        anchor_expect_record: false,
        dangerous_allow_http: false,
    })
    .unwrap();
    let stack = Stack::start_with(StackOpts {
        seal: Some(Arc::new(seal)),
        nsm: Some(nsm.clone()),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    let r = c.post("transit/keys/pii", json!({})).await;
    assert_eq!(r.status, 503, "sealed until bootstrapped: {:?}", r.body);

    // The operator's bootstrap talks to the sidecar through the host (tapped).
    let sidecar_port: u16 = stack.url.rsplit(':').next().unwrap().parse().unwrap();
    let (sidecar_tap, sidecar_seen) = tap(sidecar_port).await;
    let expected = dir.path().join("expected.json");
    let pcrs = |pcr0: &[u8]| {
        json!({"PCR0": hex::encode(pcr0), "PCR1": hex::encode(&nsm.pcrs()[&1]),
               "PCR2": hex::encode(&nsm.pcrs()[&2])})
        .to_string()
    };
    std::env::set_var("PII_TEST_SIDECAR_TOKEN", ROOT_TOKEN);
    let args = host_proxy::vault::BootstrapArgs {
        sidecar: Some(format!("http://127.0.0.1:{sidecar_tap}")),
        sidecar_token_env: "PII_TEST_SIDECAR_TOKEN".into(),
        expected: Some(expected.clone()),
        dangerous_trust_sidecar_root: true,
        ..base.clone()
    };
    // Measurements without PCR0 (another image could match): refused.
    std::fs::write(
        &expected,
        json!({"PCR1": hex::encode(&nsm.pcrs()[&1])}).to_string(),
    )
    .unwrap();
    let e = host_proxy::vault::bootstrap(&args).await.unwrap_err();
    assert!(e.to_string().contains("must name PCR0"), "{e:#}");
    // Another image's measurements: refused before any secret_id exists.
    std::fs::write(&expected, pcrs(&measure(b"someone else's image"))).unwrap();
    let e = host_proxy::vault::bootstrap(&args).await.unwrap_err();
    assert!(
        e.to_string().contains("bootstrap document is refused"),
        "{e:#}"
    );
    // The measured image: delivered, and the enclave unseals.
    std::fs::write(&expected, pcrs(&nsm.pcrs()[&0])).unwrap();
    let out = host_proxy::vault::bootstrap(&args).await.unwrap();
    assert_eq!(
        out["delivered"]["unverified_enclave_sealed"], false,
        "{out}"
    );
    let r = c.post("transit/keys/pii", json!({})).await;
    assert_eq!(r.status / 100, 2, "{:?}", r.body);
    assert!(c
        .encrypt_ok("pii", b"078-05-1120")
        .await
        .starts_with("vault:v1:"));

    // A second delivery cannot replace the working credential (whoever can
    // reach the API could otherwise cut the enclave off from Vault).
    let e = host_proxy::vault::bootstrap(&args).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("already has a working Vault session"),
        "{e:#}"
    );
    assert!(c
        .encrypt_ok("pii", b"still serving")
        .await
        .starts_with("vault:v1:"));

    // A ciphertext not made for this enclave's key is refused, clearly.
    let r = c
        .post(
            "sys/bootstrap/vault",
            json!({"ciphertext": b64(&[7u8; 384])}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.error().unwrap().contains("bootstrap key"), "{:?}", r.body);

    // The host's attempt: every token-shaped string it saw, as a secret_id.
    let mut seen = sidecar_seen.lock().unwrap().clone();
    seen.extend(vault_seen.lock().unwrap().iter());
    let mut files = Vec::new();
    files_under(stack.dir.path(), &mut files);
    for (_, b) in files {
        seen.extend(b);
    }
    let text = String::from_utf8_lossy(&seen).to_string();
    let mut candidates: Vec<String> = text
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.'))
        .filter(|w| w.len() >= 16)
        .map(str::to_owned)
        .collect();
    candidates.push(role_id.clone());
    candidates.sort();
    candidates.dedup();
    candidates.truncate(300);
    assert!(!candidates.is_empty());
    let client = |token: &str| {
        vaultrs::client::VaultClient::new(
            vaultrs::client::VaultClientSettingsBuilder::default()
                .address(&bao.url)
                .token(token)
                .ca_certs(vec![ca.display().to_string()])
                .build()
                .unwrap(),
        )
        .unwrap()
    };
    let anon = client("");
    // Control: the same client does log in with a real, fresh secret_id (so
    // the refusals below are refusals, not a broken client), and a fresh
    // secret_id's accessor is found.
    let fresh = vaultrs::auth::approle::role::secret::generate(
        &client(ROOT_TOKEN),
        "approle",
        "pii-enclave",
        None,
    )
    .await
    .unwrap();
    assert!(vaultrs::auth::approle::role::secret::read_accessor(
        &client(ROOT_TOKEN),
        "approle",
        "pii-enclave",
        &fresh.secret_id_accessor,
    )
    .await
    .is_ok());
    assert!(
        vaultrs::auth::approle::login(&anon, "approle", &role_id, &fresh.secret_id)
            .await
            .is_ok()
    );
    assert!(
        !candidates.contains(&fresh.secret_id),
        "the control secret_id was never sent anywhere"
    );
    for cand in &candidates {
        let r = vaultrs::auth::approle::login(&anon, "approle", &role_id, cand).await;
        assert!(r.is_err(), "EXPLOIT: logged in with {cand:?}");
    }
    // And the secret_id the enclave received works no more (single use).
    let accessor = out["delivered"]["secret_id_accessor"].as_str().unwrap();
    let r = vaultrs::auth::approle::role::secret::read_accessor(
        &client(ROOT_TOKEN),
        "approle",
        "pii-enclave",
        accessor,
    )
    .await;
    assert!(r.is_err(), "the used secret_id still exists: {r:?}");
}

/// Keyring rollback across a restart, played by the host that owns the
/// store: while the enclave is down it puts back an older blob (a deleted key
/// returns, a rotation vanishes). With the Vault KV anchor the restarted
/// enclave refuses it and stays sealed, saying why; with the real newest
/// blob back it unseals. Without the anchor (`dangerous_no_anchor`, what the
/// code did before) the older keyring is adopted: the attack works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_blob_restored_while_down_is_refused_after_restart() {
    let bao = OpenBao::start().await.unwrap();
    let role_id = bootstrap(&bao).await;
    let keyring_dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::start_with(StackOpts {
        seal: Some(anchored_seal(&bao, &role_id, false, "pii-enclave-anchor").await),
        keyring_dir: Some(keyring_dir.path().to_path_buf()),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    let (snapshot, newest) = stack.create_pii_and_rotate().await;
    // The host restores the older store.
    let seal = anchored_seal(&bao, &role_id, false, "pii-enclave-anchor").await;
    stack.restart_with(&snapshot, seal).await.unwrap();
    pii_tests::assert_rollback_refused(&c, "rollback anchor").await;

    // The anchor unreachable (here: a mount the enclave may not read): it
    // stays sealed and says so, adopting nothing.
    let seal = anchored_seal(&bao, &role_id, false, "no-such-anchor").await;
    stack.restart_with(&snapshot, seal).await.unwrap();
    let h = wait_health(&c, |h| !h["anchor_unreachable"].is_null()).await;
    assert_eq!(h["sealed"], true, "{h}");
    assert_eq!(h["seal_status"], "anchor unreachable", "{h}");

    // The real newest blob back: unseals, the rotation is there.
    let seal = anchored_seal(&bao, &role_id, false, "pii-enclave-anchor").await;
    stack.restart_with(&newest, seal).await.unwrap();
    pii_tests::assert_serves_pii_version(&c, 2, "the rotation is there").await;

    // The anchor answering garbage (a record that is not a head): nothing is
    // adopted, and health says why.
    let admin = admin(&bao);
    vaultrs::kv2::set(
        &admin,
        "pii-enclave-anchor",
        "keyring-head/pii-tests",
        &json!({"generation": "many", "hash": "not hex"}),
    )
    .await
    .unwrap();
    let seal = anchored_seal(&bao, &role_id, false, "pii-enclave-anchor").await;
    stack.restart_with(&newest, seal).await.unwrap();
    let h = wait_health(&c, |h| !h["anchor_unreachable"].is_null()).await;
    assert_eq!(h["sealed"], true, "{h}");
    assert!(
        h["anchor_unreachable"]
            .as_str()
            .unwrap()
            .contains("malformed"),
        "{h}"
    );

    // Control: without the anchor, the restored older keyring is adopted.
    let seal = anchored_seal(&bao, &role_id, true, "pii-enclave-anchor").await;
    stack.restart_with(&snapshot, seal).await.unwrap();
    pii_tests::assert_serves_pii_version(&c, 1, "without an anchor the rollback succeeds").await;

    // An anchor with no record (lost, or moved to a new mount) anchors only a
    // new deployment's first keyring, never whatever blob the host serves.
    let mut args = host_proxy::vault::BootstrapArgs::new(&bao.url, "PII_TEST_BAO_TOKEN");
    args.anchor_mount = "fresh-anchor".into();
    args.dangerous_wrapped_secret_id = true;
    host_proxy::vault::bootstrap(&args).await.unwrap();
    let seal = anchored_seal(&bao, &role_id, false, "fresh-anchor").await;
    stack.restart_with(&newest, seal).await.unwrap();
    let h = wait_health(&c, |h| !h["rollback_detected"].is_null()).await;
    assert_eq!(h["sealed"], true, "{h}");
    assert!(
        h["rollback_detected"]
            .as_str()
            .unwrap()
            .contains("has no record"),
        "{h}"
    );
    // Wiping the store and the record: with `anchor_expect_record` (set once
    // the deployment has a head) that is a rollback too, not a new start.
    let mut cfg = seal_config(&bao.url, &role_id, wrapped_secret_id(&bao).await, None);
    cfg.anchor_kv_mount = "fresh-anchor".into();
    cfg.anchor_expect_record = true;
    stack
        .restart_with(&[], Arc::new(VaultTransitSeal::new(cfg).unwrap()))
        .await
        .unwrap();
    let h = wait_health(&c, |h| !h["rollback_detected"].is_null()).await;
    assert!(
        h["rollback_detected"]
            .as_str()
            .unwrap()
            .contains("the config says one exists"),
        "{h}"
    );
}

/// A Vault seal with a fresh wrapped secret_id and this anchor setting.
async fn anchored_seal(
    bao: &OpenBao,
    role_id: &str,
    no_anchor: bool,
    mount: &str,
) -> Arc<dyn Seal> {
    let mut s = seal_config(&bao.url, role_id, wrapped_secret_id(bao).await, None);
    s.dangerous_no_anchor = no_anchor;
    s.anchor_kv_mount = mount.into();
    Arc::new(VaultTransitSeal::new(s).unwrap())
}

/// A second replica kept stale, played by the host: it gives replica B its
/// own copy of the store and never updates it, so changes made through
/// replica A (a rotation) never reach B. B compares its keyring with the
/// anchor on its own schedule and stops serving once it falls behind; given
/// the newest blob, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_kept_on_an_old_keyring_stops_serving() {
    let bao = OpenBao::start().await.unwrap();
    let role_id = bootstrap(&bao).await;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let stack = |dir: &std::path::Path, seal: Arc<dyn Seal>| StackOpts {
        seal: Some(seal),
        keyring_dir: Some(dir.to_path_buf()),
        fresh_check_secs: Some(0),
        ..StackOpts::default()
    };
    let a = Stack::start_with(stack(
        dir_a.path(),
        anchored_seal(&bao, &role_id, false, "pii-enclave-anchor").await,
    ))
    .await
    .unwrap();
    let ca = a.client();
    assert_eq!(ca.post("transit/keys/pii", json!({})).await.status / 100, 2);
    let ct = ca.encrypt_ok("pii", b"078-05-1120").await;
    // B starts on the same keyring (its own copy of the store).
    let copy_to_b = || {
        keyring_blobs(dir_a.path())
            .into_iter()
            .map(|(p, b)| (dir_b.path().join(p.file_name().unwrap()), b))
            .collect::<Vec<_>>()
    };
    pii_tests::restore_keyring_blobs(dir_b.path(), &copy_to_b());
    let b = Stack::start_with(stack(
        dir_b.path(),
        anchored_seal(&bao, &role_id, false, "pii-enclave-anchor").await,
    ))
    .await
    .unwrap();
    let cb = b.client();
    pii_tests::assert_serves_pii_version(&cb, 1, "B starts current").await;
    let r = cb
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // A rotates; the host never tells B.
    assert_eq!(
        ca.post("transit/keys/pii/rotate", json!({})).await.status / 100,
        2
    );
    let r = cb
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(
        r.status, 503,
        "a stale replica must not serve: {:?}",
        r.body
    );
    let h = cb.get("sys/health").await.body;
    assert_eq!(h["seal_status"], "rollback detected", "{h}");
    assert!(
        h["rollback_detected"]
            .as_str()
            .unwrap_or("")
            .contains("records keyring generation"),
        "{h}"
    );

    // With the newest blob in its store, B catches up and serves again.
    pii_tests::restore_keyring_blobs(dir_b.path(), &copy_to_b());
    pii_tests::assert_serves_pii_version(&cb, 2, "B caught up with the rotation").await;
    let r = cb
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// The audit key's hash from an attestation document (verified as of its
/// own time against the development NSM's root), as an auditor takes it.
async fn attested_audit_key(c: &pii_tests::Client) -> verifier::audit::KeyTrust {
    let r = c.get("sys/attestation?nonce=00112233445566778899").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let doc = pii_tests::unb64(r.data("document").as_str().unwrap());
    let root =
        verifier::attestation::pem_to_der(r.data("dangerous_dev_root_pem").as_str().unwrap())
            .unwrap();
    let at = verifier::audit::document_time(&doc).unwrap();
    let policy = verifier::attestation::Policy::dangerous_with_root(at, root);
    verifier::audit::KeyTrust::Attested(verifier::audit::attested_key(&doc, &policy).unwrap())
}

/// The anchor's checkpoint set, read from OpenBao directly (as an auditor
/// does, not through the host).
async fn anchored_checkpoints(bao: &OpenBao) -> Vec<pii_proto::audit::SignedCheckpoint> {
    let admin = admin(bao);
    let rec: Value =
        vaultrs::kv2::read(&admin, "pii-enclave-anchor", "audit-checkpoints/pii-tests")
            .await
            .unwrap();
    verifier::audit::load_checkpoints(&rec.to_string()).unwrap()
}

fn kinds(r: &verifier::audit::Report) -> Vec<&'static str> {
    let mut k: Vec<&str> = r
        .problems
        .iter()
        .chain(r.streams.iter().flat_map(|s| &s.problems))
        .map(|f| f.kind)
        .collect();
    k.sort_unstable();
    k.dedup();
    k
}

fn stream_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect()
}

fn drop_last_line(file: &std::path::Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(file, lines.join("\n") + "\n").unwrap();
    text
}

/// The host owns the audit directory and tries every way to cut the trail
/// after the enclave released plaintext: drop the tail record of an
/// acknowledged decrypt, force a new stream to make the cut look clean,
/// delete a whole stream, substitute its own key and re-sign everything,
/// edit and reorder records. `verifier audit` with the attested key and the
/// anchor's checkpoints (read from Vault, not through the host) names each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_cannot_cut_the_audit_trail() {
    use verifier::audit::{verify_dir, KeyTrust};
    let bao = OpenBao::start().await.unwrap();
    let role_id = bootstrap(&bao).await;
    let mut stack = Stack::start_with(StackOpts {
        seal: Some(anchored_seal(&bao, &role_id, false, "pii-enclave-anchor").await),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    assert_eq!(c.post("transit/keys/pii", json!({})).await.status, 200);
    let ct = c.encrypt_ok("pii", b"078-05-1120").await;
    let decrypt = || async {
        let r = c
            .post(
                "transit/decrypt/pii",
                json!({"ciphertext": ct, "reason": "case 7"}),
            )
            .await;
        (r.status, r.receipt)
    };
    let mut receipts = vec![];
    for _ in 0..3 {
        let (s, rc) = decrypt().await;
        assert_eq!(s, 200);
        receipts.push(rc.expect("every decrypt answer carries a receipt"));
    }
    let trust = attested_audit_key(&c).await;
    let dir = stack.dir.path().join("audit");
    let cps = anchored_checkpoints(&bao).await;
    let last = pii_proto::audit::SignedCheckpoint::parse_receipt(&receipts[2]).unwrap();
    assert!(
        cps.iter()
            .any(|c| c.point == last.point && c.sig == last.sig),
        "the anchor holds the newest record before the answer: {cps:?}"
    );
    let r = verify_dir(&dir, &trust, &cps).unwrap();
    assert!(r.ok, "{r:#?}");

    // 1. Drop the tail: the last decrypt's record.
    let files = stream_files(&dir);
    assert_eq!(files.len(), 1);
    let s1 = files[0].clone();
    let original = drop_last_line(&s1);
    let r = verify_dir(&dir, &trust, &cps).unwrap();
    assert_eq!(kinds(&r), vec!["deleted-tail"], "{r:#?}");
    // A receipt alone shows it too (no anchor read needed).
    let rc = pii_proto::audit::SignedCheckpoint::parse_receipt(&receipts[2]).unwrap();
    assert_eq!(
        kinds(&verify_dir(&dir, &trust, &[rc]).unwrap()),
        vec!["deleted-tail"]
    );
    // Without any checkpoint the cut is invisible: that is what they are for.
    assert!(verify_dir(&dir, &trust, &[]).unwrap().ok);

    // 2. …then make the next write fail so the enclave starts a new stream
    // (the stream file replaced by a directory), and put the cut file back.
    let cut = std::fs::read_to_string(&s1).unwrap();
    std::fs::remove_file(&s1).unwrap();
    std::fs::create_dir(&s1).unwrap();
    let (s, rc) = decrypt().await;
    assert_eq!(s, 503, "no plaintext without a stored record");
    assert!(rc.is_none());
    std::fs::remove_dir(&s1).unwrap();
    std::fs::write(&s1, &cut).unwrap();
    let (s, _) = decrypt().await;
    assert_eq!(s, 200);
    let files = stream_files(&dir);
    assert_eq!(files.len(), 2, "a new stream");
    let s2 = files.iter().find(|f| **f != s1).unwrap().clone();
    let cps = anchored_checkpoints(&bao).await;
    // Even without the anchor: the new stream's genesis links to the last
    // record the host acknowledged.
    let r = verify_dir(&dir, &trust, &[]).unwrap();
    assert_eq!(kinds(&r), vec!["deleted-tail"], "{r:#?}");
    assert!(
        r.problems.iter().any(|p| p.detail.contains("genesis link")),
        "{r:#?}"
    );
    std::fs::write(&s1, &original).unwrap();
    assert!(verify_dir(&dir, &trust, &cps).unwrap().ok);

    // 3. Delete a whole stream.
    std::fs::remove_file(&s1).unwrap();
    let r = verify_dir(&dir, &trust, &cps).unwrap();
    assert_eq!(kinds(&r), vec!["deleted-stream"], "{r:#?}");
    std::fs::write(&s1, &original).unwrap();
    // The newest stream deleted: only the anchor knows it existed.
    let newest = std::fs::read(&s2).unwrap();
    std::fs::remove_file(&s2).unwrap();
    assert_eq!(
        kinds(&verify_dir(&dir, &trust, &cps).unwrap()),
        vec!["deleted-stream"]
    );
    std::fs::write(&s2, &newest).unwrap();

    // 4. Edit a record, and reorder two.
    std::fs::write(&s1, original.replace("case 7", "case 8")).unwrap();
    assert!(kinds(&verify_dir(&dir, &trust, &cps).unwrap()).contains(&"edited-record"));
    let mut lines: Vec<&str> = original.lines().collect();
    lines.swap(1, 2);
    std::fs::write(&s1, lines.join("\n") + "\n").unwrap();
    assert!(kinds(&verify_dir(&dir, &trust, &cps).unwrap()).contains(&"reordered"));
    std::fs::write(&s1, &original).unwrap();

    // 5. Swap the key: the host re-signs a whole forged log with its own
    // key (what `sys/audit-key`, served through the host, could claim).
    let forged = tempfile::tempdir().unwrap();
    let host_key =
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .unwrap();
    let host_key = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(host_key.as_ref()).unwrap();
    forge_stream(
        &forged.path().join(format!("{}.jsonl", "ab".repeat(16))),
        &host_key,
    );
    let r = verify_dir(forged.path(), &trust, &[]).unwrap();
    assert_eq!(kinds(&r), vec!["key-not-attested"], "{r:#?}");
    // Checked against its own key it looks fine: why the attested key matters.
    assert!(
        verify_dir(forged.path(), &KeyTrust::Unpinned, &[])
            .unwrap()
            .ok
    );

    // 6. A restart links the new run's first stream to the anchor's
    // checkpoints: deleting everything before it is still seen.
    stack.restart_enclave().await;
    let c = stack.client();
    let r = c
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(stream_files(&dir).len(), 3);
    for f in [&s1, &s2] {
        std::fs::remove_file(f).unwrap();
    }
    let r = verify_dir(&dir, &trust, &[]).unwrap();
    assert_eq!(kinds(&r), vec!["deleted-stream"], "{r:#?}");
}

/// A complete, self-consistent stream signed by `key` (the host's).
fn forge_stream(path: &std::path::Path, key: &aws_lc_rs::signature::Ed25519KeyPair) {
    use aws_lc_rs::signature::KeyPair;
    use pii_proto::audit::{AuditBody, AuditEvent, AuditRecord};
    let stream = path.file_stem().unwrap().to_str().unwrap().to_owned();
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for seq in 0..2u64 {
        let event = AuditEvent {
            kind: if seq == 0 { "genesis" } else { "decrypt" }.into(),
            op: String::new(),
            target: "pii".into(),
            caller: "nobody".into(),
            token: String::new(),
            policies: vec![],
            reason: String::new(),
            items: 1,
            public_key: (seq == 0).then(|| hex::encode(key.public_key().as_ref())),
            links: vec![],
        };
        let body = AuditBody {
            stream: stream.clone(),
            seq,
            time: 1,
            prev: prev.clone(),
            event,
        };
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body.signed_bytes());
        let rec = AuditRecord {
            body,
            hash: hex::encode(d.as_ref()),
            sig: hex::encode(key.sign(d.as_ref()).as_ref()),
        };
        prev = rec.hash.clone();
        out.push_str(&serde_json::to_string(&rec).unwrap());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

/// A vaultrs client with OpenBao's root token.
fn admin(bao: &OpenBao) -> vaultrs::client::VaultClient {
    vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(&bao.url)
            .token(ROOT_TOKEN)
            .build()
            .unwrap(),
    )
    .unwrap()
}
