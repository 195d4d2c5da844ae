//! The AWS KMS seal end to end, against the KMS emulator: real SigV4, real
//! attestation documents (dev NSM), the key policy `host-proxy kms policy`
//! prints, CMS `CiphertextForRecipient`, IMDSv2 credentials, and the
//! enclave's traffic through the host's egress relay.
//!
//! Why this size: every hostile-KMS answer is its own test against the emulator; the shared set-up lives in `pii_tests`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pii_custody::kms_seal::{CredentialSource, KmsSeal, KmsSealConfig};
use pii_custody::nsm::{DangerousDevNsm, Nsm};
use pii_custody::seal::{seal_blob, unseal_blob, Seal, SealError};
use pii_kms_emulator::{Config, Emulator, Principal};
use pii_tests::{b64, egress_via_relay, files_under, kms_call, tap, Stack, StackOpts};
use serde_json::{json, Value};

const ACCOUNT: &str = "111122223333";
const ROLE: &str = "arn:aws:iam::111122223333:role/pii-node";
const ACCESS_KEY: &str = "AKIAPIIENCLAVETEST01";
const SECRET: &str = "test-secret-for-the-kms-emulator-only";
const SESSION: &str = "session-token-from-imds";

fn dev_nsm(image: &[u8]) -> Arc<DangerousDevNsm> {
    Arc::new(DangerousDevNsm::new(image, b"enclave.toml").unwrap())
}

/// The record an image build would write, from the dev NSM's PCRs.
fn record_of(nsm: &DangerousDevNsm) -> Value {
    let mut m = serde_json::Map::new();
    for n in [0u8, 1, 2] {
        m.insert(format!("PCR{n}"), hex::encode(&nsm.pcrs()[&n]).into());
    }
    json!({ "Measurements": m })
}

struct Kms {
    em: Arc<Emulator>,
    port: u16,
    key_arn: String,
}

/// The emulator trusting `trusted` NSMs' roots, with one key whose policy
/// is what `host-proxy kms policy` prints for `measured`'s record.
async fn start_kms(trusted: &[&DangerousDevNsm], measured: &DangerousDevNsm) -> Kms {
    let roots = trusted
        .iter()
        .map(|n| verifier::attestation::pem_to_der(&n.dangerous_dev_root_pem().unwrap()).unwrap())
        .collect();
    let em = Emulator::new(Config {
        region: "eu-west-1".into(),
        account_id: ACCOUNT.into(),
        principals: vec![Principal {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET.into(),
            session_token: Some(SESSION.into()),
            arn: ROLE.into(),
        }],
        attestation_roots_der: roots,
        max_document_age_secs: 300,
        imds_access_key_id: Some(ACCESS_KEY.into()),
    });
    let policy = host_proxy::kms::policy_for(
        &record_of(measured),
        &host_proxy::kms::PolicyArgs {
            record: Default::default(),
            role_arn: ROLE.into(),
            account_id: ACCOUNT.into(),
            pcrs: vec![],
        },
    )
    .unwrap();
    let key_arn = em.create_key(Some(policy)).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(em.clone().serve(l));
    Kms { em, port, key_arn }
}

/// A KMS seal reaching KMS and IMDS at `127.0.0.1:port`.
fn seal_at(port: u16, key_arn: &str, nsm: Arc<dyn Nsm>) -> KmsSeal {
    KmsSeal::new(config_at(port, key_arn), nsm).unwrap()
}

/// The config of [`seal_at`] (plain HTTP, no anchor: test switches).
fn config_at(port: u16, key_arn: &str) -> KmsSealConfig {
    let url = format!("http://127.0.0.1:{port}");
    KmsSealConfig {
        deployment_id: "pii-tests".into(),
        key_id: key_arn.into(),
        region: "eu-west-1".into(),
        endpoint: Some(url.clone()),
        proxy: None,
        ca_certs: vec![],
        credentials: CredentialSource::Imds { endpoint: url },
        timeout_secs: 5,
        dangerous_allow_http: true,
        anchor: None,
        dangerous_no_anchor: true,
    }
}

/// A KMS call signed with the role's credentials but *without* a Recipient:
/// what a host holding the instance role could try.
async fn unattested(port: u16, action: &str, body: Value) -> Value {
    role_call(port, action, body).await.1
}

fn newest_blob(stack: &Stack) -> Vec<u8> {
    let mut files = Vec::new();
    files_under(stack.dir.path(), &mut files);
    files
        .into_iter()
        .filter(|(p, _)| p.contains("keyring-") && p.ends_with(".blob"))
        .max_by(|a, b| a.0.cmp(&b.0))
        .expect("a stored keyring blob")
        .1
}

async fn decrypts(c: &pii_tests::Client, ct: &str) -> bool {
    for _ in 0..100 {
        let r = c
            .post("transit/decrypt/pii", json!({"ciphertext": ct}))
            .await;
        if r.status == 200 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_seal_unseals_only_for_the_measured_enclave() {
    let measured = dev_nsm(b"pii-enclave release image");
    let other_image = dev_nsm(b"pii-enclave with a backdoor");
    let untrusted = dev_nsm(b"pii-enclave release image");
    let kms = start_kms(&[&measured, &other_image], &measured).await;
    assert_eq!(measured.pcrs()[&0], untrusted.pcrs()[&0]);
    assert_ne!(measured.pcrs()[&0], other_image.pcrs()[&0]);

    // The enclave's KMS and IMDS traffic crosses the host relay, tapped.
    let (tap_port, seen) = tap(kms.port).await;
    let dir = tempfile::tempdir().unwrap();
    let egress = egress_via_relay(dir.path(), tap_port).await;
    let through_relay = |nsm: &Arc<DangerousDevNsm>| -> Arc<dyn Seal> {
        Arc::new(seal_at(egress, &kms.key_arn, nsm.clone()))
    };

    let mut stack = Stack::start_with(StackOpts {
        seal: Some(through_relay(&measured)),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    for k in ["pii", "cards"] {
        let r = c.post(&format!("transit/keys/{k}"), json!({})).await;
        assert_eq!(r.status / 100, 2, "{:?}", r.body);
    }
    let r = c
        .post(
            "transit/encrypt/pii",
            json!({"plaintext": b64(b"078-05-1120")}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ct = r.data("ciphertext").as_str().unwrap().to_owned();
    let h = c.get("sys/health").await;
    assert_eq!(h.body["seal_status"], "unsealed", "{:?}", h.body);

    // Every key release went to an attested caller.
    let calls = kms.em.calls();
    assert!(calls
        .iter()
        .any(|c| c.action == "GenerateDataKey" && c.outcome == "ok"));
    assert!(calls
        .iter()
        .filter(|c| c.outcome == "ok")
        .all(|c| c.attested && c.principal.as_deref() == Some(ROLE)));

    // Restart with the same measurements: unseals, old ciphertext decrypts.
    stack.kill_enclave().await;
    stack.opts.seal = Some(through_relay(&measured));
    stack.start_enclave().unwrap();
    assert!(decrypts(&c, &ct).await, "no unseal after restart");

    // The keyring's key bytes, for the search below.
    let blob = newest_blob(&stack);
    let direct = seal_at(kms.port, &kms.key_arn, measured.clone());
    let pt = unseal_blob(&direct, &blob).await.unwrap();
    let kr = pii_engine::keyring::Keyring::from_cbor(&pt, 1).unwrap();
    let secrets: Vec<Vec<u8>> = kr
        .keys
        .values()
        .flat_map(|k| k.doc.versions.values())
        .flat_map(|v| [v.key.to_vec(), v.hmac_key.to_vec()])
        .collect();
    assert!(secrets.len() >= 4);

    // A different image (wrong PCR0), correctly signed: denied by policy.
    let err = unseal_blob(&seal_at(kms.port, &kms.key_arn, other_image.clone()), &blob)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SealError::Denied(m) if m.contains("AccessDeniedException") && m.contains("DenyOtherPCR0")),
        "{err:?}"
    );
    stack.kill_enclave().await;
    stack.opts.seal = Some(through_relay(&other_image));
    stack.start_enclave().unwrap();
    let r = c
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(r.status, 503, "a wrong image stays sealed: {:?}", r.body);
    assert_eq!(c.get("sys/health").await.body["sealed"], true);

    // Right PCRs but a document from an untrusted root: refused by KMS.
    let err = unseal_blob(&seal_at(kms.port, &kms.key_arn, untrusted.clone()), &blob)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SealError::Denied(m) if m.contains("invalid attestation document")),
        "{err:?}"
    );

    // The role without attestation (a host with the instance's credentials).
    let (kms_blob, _) = pii_custody::kms_seal::split(&blob[7 + "aws-kms".len() + 40..]).unwrap();
    for (action, body) in [
        (
            "Decrypt",
            json!({"CiphertextBlob": B64.encode(kms_blob), "KeyId": kms.key_arn,
                   "EncryptionContext": KmsSeal::encryption_context("pii-tests")}),
        ),
        (
            "GenerateDataKey",
            json!({"KeyId": kms.key_arn, "KeySpec": "AES_256"}),
        ),
    ] {
        let v = unattested(kms.port, action, body).await;
        assert_eq!(v["__type"], "AccessDeniedException", "{action}: {v}");
        assert!(v.get("Plaintext").is_none());
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("DenyWithoutAttestation"),
            "{v}"
        );
    }

    // Nothing the host relayed or stored holds a key.
    let captured = seen.lock().unwrap().clone();
    assert!(
        captured
            .windows(28)
            .any(|w| w == b"TrentService.GenerateDataKey"),
        "the KMS traffic went through the relay"
    );
    assert!(
        captured.windows(16).any(|w| w == b"/latest/api/toke"),
        "IMDS too"
    );
    let hit = |hay: &[u8]| {
        secrets
            .iter()
            .any(|s| hay.windows(16).any(|w| w == &s[..16]))
    };
    assert!(!hit(&captured), "key bytes crossed the relay");
    let mut files = Vec::new();
    files_under(stack.dir.path(), &mut files);
    for (p, bytes) in &files {
        assert!(!hit(bytes), "key bytes in a host file: {p}");
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Pass,
    /// Answer with the Decrypt response captured earlier.
    Replay,
    FlipCms,
    /// Drop the CMS and return a plaintext key, as for an unattested call.
    Plaintext,
    WrongKeyId,
    /// A well-formed CMS to the enclave's (public) key with a key of the
    /// attacker's choosing.
    ForgedKey,
}

/// An HTTP man-in-the-middle between the seal and KMS. (In production TLS
/// terminates in the enclave, so the host cannot even read the calls.)
async fn mitm(upstream: u16, mode: Arc<Mutex<Mode>>) -> u16 {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    #[derive(Clone)]
    struct St {
        upstream: u16,
        mode: Arc<Mutex<Mode>>,
        last_decrypt: Arc<Mutex<Option<String>>>,
    }
    async fn handle(
        axum::extract::State(st): axum::extract::State<St>,
        method: axum::http::Method,
        uri: axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (axum::http::StatusCode, String) {
        let mode = *st.mode.lock().unwrap();
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if mode == Mode::Replay && target.ends_with("Decrypt") {
            let old = st.last_decrypt.lock().unwrap().clone().unwrap();
            return (axum::http::StatusCode::OK, old);
        }
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
        let url = format!("http://127.0.0.1:{}{uri}", st.upstream);
        let mut rb = reqwest::Client::new().request(method, url);
        for (k, v) in &headers {
            if k != "content-length" {
                rb = rb.header(k.as_str(), v.as_bytes());
            }
        }
        let r = rb.body(body.clone()).send().await.unwrap();
        let status = axum::http::StatusCode::from_u16(r.status().as_u16()).unwrap();
        let text = r.text().await.unwrap();
        if status != 200 || target.is_empty() {
            return (status, text); // errors and IMDS pass through
        }
        let mut v: Value = serde_json::from_str(&text).unwrap();
        if mode == Mode::Pass && target.ends_with("Decrypt") {
            *st.last_decrypt.lock().unwrap() = Some(text.clone());
        }
        match mode {
            Mode::FlipCms => {
                let mut cms = B64
                    .decode(v["CiphertextForRecipient"].as_str().unwrap())
                    .unwrap();
                let n = cms.len();
                cms[n - 20] ^= 1;
                v["CiphertextForRecipient"] = B64.encode(cms).into();
            }
            Mode::Plaintext => {
                v.as_object_mut().unwrap().remove("CiphertextForRecipient");
                v["Plaintext"] = B64.encode([7u8; 32]).into();
            }
            Mode::WrongKeyId => {
                v["KeyId"] = "arn:aws:kms:eu-west-1:999999999999:key/attacker".into();
            }
            Mode::ForgedKey => {
                let req: Value = serde_json::from_slice(&body).unwrap();
                let doc = B64
                    .decode(req["Recipient"]["AttestationDocument"].as_str().unwrap())
                    .unwrap();
                let spki = verifier::attestation::parse_document_unverified(&doc)
                    .unwrap()
                    .public_key
                    .unwrap();
                let cms = pii_kms_emulator::cms::envelope(&spki, &[0x41; 32]).unwrap();
                v["CiphertextForRecipient"] = B64.encode(cms).into();
            }
            Mode::Pass | Mode::Replay => {}
        }
        (status, v.to_string())
    }
    let app = axum::Router::new().fallback(handle).with_state(St {
        upstream,
        mode,
        last_decrypt: Arc::new(Mutex::new(None)),
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_replayed_kms_responses_are_refused() {
    let nsm = dev_nsm(b"pii-enclave release image");
    let kms = start_kms(&[&nsm], &nsm).await;
    let mode = Arc::new(Mutex::new(Mode::Pass));
    let port = mitm(kms.port, mode.clone()).await;
    let seal = seal_at(port, &kms.key_arn, nsm.clone());
    let blob = seal_blob(&seal, b"keyring bytes").await.unwrap();
    assert_eq!(
        &unseal_blob(&seal, &blob).await.unwrap()[..],
        b"keyring bytes"
    );

    for (m, want) in [
        (Mode::Replay, "auth"),
        (Mode::FlipCms, "auth"),
        (Mode::ForgedKey, "auth"),
        (Mode::Plaintext, "denied"),
        (Mode::WrongKeyId, "denied"),
    ] {
        *mode.lock().unwrap() = m;
        let err = unseal_blob(&seal, &blob).await.unwrap_err();
        match want {
            "auth" => assert_eq!(err, SealError::Authentication, "{m:?}"),
            _ => assert!(matches!(err, SealError::Denied(_)), "{m:?}: {err:?}"),
        }
    }
    // Sealing refuses a data key that was not encrypted to the enclave.
    for m in [Mode::Plaintext, Mode::FlipCms, Mode::WrongKeyId] {
        *mode.lock().unwrap() = m;
        assert!(seal_blob(&seal, b"keyring bytes").await.is_err(), "{m:?}");
    }
    *mode.lock().unwrap() = Mode::Pass;
    assert_eq!(
        &unseal_blob(&seal, &blob).await.unwrap()[..],
        b"keyring bytes"
    );
}

/// Credentials injected at boot (`source = "env"`); wrong ones are a clear
/// refusal, not "backend unreachable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_credentials_and_wrong_ones() {
    let nsm = dev_nsm(b"pii-enclave release image");
    let kms = start_kms(&[&nsm], &nsm).await;
    let with_env = || {
        KmsSeal::new(
            KmsSealConfig {
                deployment_id: "pii-tests".into(),
                key_id: kms.key_arn.clone(),
                region: "eu-west-1".into(),
                endpoint: Some(format!("http://127.0.0.1:{}", kms.port)),
                proxy: None,
                ca_certs: vec![],
                credentials: CredentialSource::Env,
                timeout_secs: 5,
                dangerous_allow_http: true,
                anchor: None,
                dangerous_no_anchor: true,
            },
            nsm.clone(),
        )
        .unwrap()
    };
    // No other test in this binary reads the AWS_* variables.
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    std::env::set_var("AWS_SESSION_TOKEN", SESSION);
    let seal = with_env();
    let blob = seal_blob(&seal, b"keyring").await.unwrap();
    assert_eq!(&unseal_blob(&seal, &blob).await.unwrap()[..], b"keyring");

    std::env::set_var("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let err = unseal_blob(&with_env(), &blob).await.unwrap_err();
    assert!(
        matches!(&err, SealError::Denied(m) if m.contains("InvalidSignatureException")),
        "{err:?}"
    );
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    let err = unseal_blob(&with_env(), &blob).await.unwrap_err();
    assert!(
        matches!(&err, SealError::Unreachable(m) if m.contains("AWS_SECRET_ACCESS_KEY")),
        "{err:?}"
    );
}

/// `kms:RecipientAttestation:ImageSha384` (AWS's alias for PCR0) works as a
/// policy condition too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_sha384_condition() {
    let measured = dev_nsm(b"pii-enclave release image");
    let other = dev_nsm(b"another image");
    let kms = start_kms(&[&measured, &other], &measured).await;
    let image = hex::encode(&measured.pcrs()[&0]);
    kms.em
        .put_key_policy(
            &kms.key_arn,
            json!({"Version": "2012-10-17", "Statement": [{
                "Sid": "ImageOnly", "Effect": "Allow", "Principal": {"AWS": ROLE},
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"], "Resource": "*",
                "Condition": {"StringEqualsIgnoreCase": {
                    "kms:RecipientAttestation:ImageSha384": image.to_uppercase()}}}]}),
        )
        .unwrap();
    let ok = seal_at(kms.port, &kms.key_arn, measured.clone());
    let blob = seal_blob(&ok, b"keyring").await.unwrap();
    assert_eq!(&unseal_blob(&ok, &blob).await.unwrap()[..], b"keyring");
    let err = unseal_blob(&seal_at(kms.port, &kms.key_arn, other.clone()), &blob)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SealError::Denied(m) if m.contains("AccessDeniedException")),
        "{err:?}"
    );
    // A typo'd operator is refused when the policy is set, not ignored.
    assert!(kms
        .em
        .put_key_policy(
            &kms.key_arn,
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*",
                "Condition": {"StringEqualsIgnoreCas": {"kms:RecipientAttestation:PCR0": image}}}]}),
        )
        .is_err());
}

/// The production path: KMS over TLS that terminates in the enclave's own
/// client, reached through the enclave's HTTP CONNECT proxy and the host
/// relay; IMDS over plain HTTP on its own egress port (not the proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_over_tls_through_the_connect_proxy() {
    use host_proxy::relay::{Relay, RelayConfig, Rule};
    use tokio_rustls::rustls;
    use tower::ServiceExt as _;

    let nsm = dev_nsm(b"pii-enclave release image");
    let kms = start_kms(&[&nsm], &nsm).await;

    // The same emulator behind TLS for "localhost" (a test CA).
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let router = kms.em.clone().router();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_port = l.local_addr().unwrap().port();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hs = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, router, hs) = (acceptor.clone(), router.clone(), hs.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                hs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let svc = hyper::service::service_fn(move |req| router.clone().oneshot(req));
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });

    // Host: the relay allows exactly KMS (by name) and IMDS (by IP).
    let (tap_port, seen) = tap(tls_port).await;
    let relay_addr: pii_transport::Addr =
        format!("unix:{}", dir.path().join("relay.sock").display())
            .parse()
            .unwrap();
    let rule = |host: &str, port: u16, private: bool| Rule {
        host: host.into(),
        port: Some(port),
        max_connections: None,
        allow_private: private,
    };
    let relay = Arc::new(
        Relay::new(
            &RelayConfig {
                listen: relay_addr.to_string(),
                allow: vec![
                    rule("localhost", tap_port, true),
                    rule("127.0.0.1", kms.port, false),
                ],
                deny: vec![],
                vsock_proxy_allowlist: None,
                connect_timeout: std::time::Duration::from_secs(5),
                dns_cache_ttl: std::time::Duration::from_secs(30),
                max_connections: 64,
                idle_timeout: std::time::Duration::from_secs(300),
                max_lifetime: std::time::Duration::from_secs(3600),
            },
            Arc::new(host_proxy::metrics::Metrics::new()),
        )
        .unwrap(),
    );
    tokio::spawn(relay.serve_on(pii_transport::Listener::bind(&relay_addr).unwrap()));
    // Enclave: a CONNECT proxy and a fixed IMDS port, both into the relay.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_port = proxy.local_addr().unwrap().port();
    tokio::spawn(pii_transport::relay::serve_connect_proxy(
        proxy,
        relay_addr.clone(),
        std::time::Duration::from_secs(5),
    ));
    let imds = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let imds_port = imds.local_addr().unwrap().port();
    tokio::spawn(pii_transport::relay::serve_fixed(
        imds,
        relay_addr,
        format!("127.0.0.1:{}", kms.port).parse().unwrap(),
        std::time::Duration::from_secs(5),
    ));

    let seal = KmsSeal::new(
        KmsSealConfig {
            deployment_id: "pii-tests".into(),
            key_id: kms.key_arn.clone(),
            region: "eu-west-1".into(),
            endpoint: Some(format!("https://localhost:{tap_port}")),
            proxy: Some(format!("http://127.0.0.1:{proxy_port}")),
            ca_certs: vec![ca.display().to_string()],
            credentials: CredentialSource::Imds {
                endpoint: format!("http://127.0.0.1:{imds_port}"),
            },
            timeout_secs: 5,
            // TLS to KMS: the production setting (IMDS is plain HTTP by design).
            dangerous_allow_http: false,
            anchor: None,
            dangerous_no_anchor: true,
        },
        nsm.clone(),
    )
    .unwrap();
    let blob = seal_blob(&seal, b"keyring bytes").await.unwrap();
    assert_eq!(
        &unseal_blob(&seal, &blob).await.unwrap()[..],
        b"keyring bytes"
    );
    assert!(handshakes.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let calls = kms.em.calls();
    assert!(calls
        .iter()
        .any(|c| c.action == "Decrypt" && c.outcome == "ok" && c.attested));
    // What the relay carried to KMS was TLS: no KMS JSON in the clear.
    let captured = seen.lock().unwrap().clone();
    assert!(captured.len() > 1000, "{} bytes relayed", captured.len());
    assert!(!captured.windows(12).any(|w| w == b"TrentService"));
    assert!(!captured.windows(22).any(|w| w == b"CiphertextForRecipient"));
}

/// The attestation oracle, played by the host: with every document it can
/// get from the sidecar (with and without a token, with its own public key,
/// its own user_data), the stored keyring blob and the instance role's
/// credentials, it asks KMS to release the keyring's data key to itself.
/// Every attempt must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_cannot_unseal_with_any_document_it_can_request() {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
    let (kms, stack, blob) = kms_stack_with_a_key().await;
    let (kms_blob, _) = pii_custody::kms_seal::split(&blob[7 + "aws-kms".len() + 40..]).unwrap();

    let host_key = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let spki = hex::encode(host_key.public_key().as_der().unwrap().as_ref());
    let nonce = "ab".repeat(32);
    let http = reqwest::Client::new();
    let mut documents = 0;
    let mut released = vec![];
    for token in [None, Some(pii_tests::ROOT_TOKEN)] {
        for q in [
            format!("nonce={nonce}&public_key={spki}"),
            format!(
                "nonce={nonce}&public_key={spki}&user_data={}",
                "00".repeat(32)
            ),
            format!("nonce={nonce}"),
            format!("public_key={spki}"),
        ] {
            for path in ["attestation", "sys/attestation"] {
                let mut rb = http.get(format!("{}/v1/{path}?{q}", stack.url));
                if let Some(t) = token {
                    rb = rb.header("X-Vault-Token", t);
                }
                let resp = rb.send().await.unwrap();
                if resp.status() != 200 {
                    continue;
                }
                let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
                let body = resp.bytes().await.unwrap().to_vec();
                let doc = if ct.contains("cbor") {
                    body
                } else {
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    match v["data"]["document"].as_str().or(v["document"].as_str()) {
                        Some(d) => B64.decode(d).unwrap(),
                        None => continue,
                    }
                };
                documents += 1;
                let (status, v) = role_call(
                    kms.port,
                    "Decrypt",
                    json!({
                        "CiphertextBlob": B64.encode(kms_blob),
                        "KeyId": kms.key_arn,
                        "EncryptionContext": KmsSeal::encryption_context("pii-tests"),
                        "Recipient": {
                            "AttestationDocument": B64.encode(&doc),
                            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                        },
                    }),
                )
                .await;
                if let Some(cms) = v["CiphertextForRecipient"].as_str() {
                    if let Ok(dk) = pii_custody::cms::open(&B64.decode(cms).unwrap(), &host_key) {
                        let q = q.replace(&spki, "<host SPKI>");
                        released.push((path, q, token.is_some(), dk.len()));
                    }
                }
                assert!(status != 200 || v["Plaintext"].is_null(), "{v}");
            }
        }
    }
    assert!(
        released.is_empty(),
        "EXPLOIT: the host opened the keyring's data key with documents from {released:?}"
    );
    // The sidecar still serves documents to an authorized caller (so the
    // loop above exercised KMS with real documents).
    assert!(documents > 0, "no document was served at all");
}

/// A host whose instance role IAM lets do anything the key policy's
/// account-root statement permits (the emulator treats that statement as IAM
/// granting the account's principals everything, the worst case) tries every
/// KMS path to the keyring's data key that needs no attestation: ReEncrypt
/// to a key it controls (then Decrypt there), CreateGrant, Encrypt of a data
/// key it chose (to forge a keyring), PutKeyPolicy, and
/// GenerateDataKeyWithoutPlaintext. Each must be an explicit deny.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_grants_cannot_reencrypt_or_grant_around_the_attestation() {
    let (kms, _stack, blob) = kms_stack_with_a_key().await;
    let (kms_blob, _) = pii_custody::kms_seal::split(&blob[7 + "aws-kms".len() + 40..]).unwrap();
    // The host's own key, which it may use freely.
    let own = kms
        .em
        .create_key(Some(json!({"Version": "2012-10-17", "Statement": [{
            "Sid": "Mine", "Effect": "Allow", "Principal": {"AWS": ROLE},
            "Action": "kms:*", "Resource": "*"}]})))
        .unwrap();
    let ctx = KmsSeal::encryption_context("pii-tests");
    let mut opened = vec![];
    let (s, v) = role_call(
        kms.port,
        "ReEncrypt",
        json!({"CiphertextBlob": B64.encode(kms_blob), "SourceKeyId": kms.key_arn,
                "SourceEncryptionContext": ctx, "DestinationKeyId": own}),
    )
    .await;
    if s == 200 {
        let body = json!({"CiphertextBlob": v["CiphertextBlob"], "KeyId": own});
        let (s2, v2) = role_call(kms.port, "Decrypt", body).await;
        if s2 == 200 && v2["Plaintext"].is_string() {
            opened.push("ReEncrypt to the host's key, then Decrypt there");
        }
    } else {
        assert_explicit_deny(&v);
    }
    for (label, action, body) in [
        (
            "CreateGrant for Decrypt",
            "CreateGrant",
            json!({"KeyId": kms.key_arn, "GranteePrincipal": ROLE, "Operations": ["Decrypt"]}),
        ),
        (
            // A data key the host chose, wrapped under the keyring's key: the
            // host could then write a keyring of its own that the enclave's
            // attested Decrypt would open.
            "Encrypt of a host-chosen data key",
            "Encrypt",
            json!({"KeyId": kms.key_arn, "Plaintext": B64.encode([7u8; 32]), "EncryptionContext": ctx}),
        ),
        (
            "PutKeyPolicy by the instance role",
            "PutKeyPolicy",
            json!({"KeyId": kms.key_arn, "PolicyName": "default",
                   "Policy": json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                     "Principal": {"AWS": ROLE}, "Action": "kms:*", "Resource": "*"}]}).to_string()}),
        ),
        (
            "GenerateDataKeyWithoutPlaintext without attestation",
            "GenerateDataKeyWithoutPlaintext",
            json!({"KeyId": kms.key_arn, "KeySpec": "AES_256", "EncryptionContext": ctx}),
        ),
    ] {
        let (s, v) = role_call(kms.port, action, body).await;
        if s == 200 {
            opened.push(label);
        } else {
            assert_explicit_deny(&v);
        }
    }
    assert!(opened.is_empty(), "EXPLOIT: {opened:?}");
}

/// The measured enclave (its one NSM serving both the seal and the API)
/// sealed to the emulator, with one key created; and the stored blob.
async fn kms_stack_with_a_key() -> (Kms, Stack, Vec<u8>) {
    let nsm = dev_nsm(b"pii-enclave release image");
    let kms = start_kms(&[&nsm], &nsm).await;
    let stack = Stack::start_with(StackOpts {
        seal: Some(Arc::new(seal_at(kms.port, &kms.key_arn, nsm.clone()))),
        nsm: Some(nsm),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let r = stack.client().post("transit/keys/pii", json!({})).await;
    assert_eq!(r.status / 100, 2, "{:?}", r.body);
    let blob = newest_blob(&stack);
    (kms, stack, blob)
}

/// A KMS answer that is an explicit deny of the key policy.
fn assert_explicit_deny(v: &Value) {
    let m = v["message"].as_str().unwrap_or("");
    assert!(m.contains("explicit deny"), "{v}");
}

/// A KMS call signed with the instance role's credentials (what the host holds).
async fn role_call(port: u16, action: &str, body: Value) -> (u16, Value) {
    let creds = pii_custody::sigv4::Credentials {
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: zeroize::Zeroizing::new(SECRET.into()),
        session_token: Some(SESSION.into()),
    };
    kms_call(&format!("127.0.0.1:{port}"), &creds, action, &body).await
}

/// Keyring rollback across a restart with the KMS seal: the anchor is a
/// DynamoDB item (moto's DynamoDB, server mode) written with check-and-set by
/// the anchor's own principal, whose credentials KMS releases only to the
/// attested enclave. While the enclave is down the host restores an older
/// store: the restarted enclave refuses it and stays sealed; the real newest
/// blob unseals. Control: without the anchor (the old behaviour) the older
/// keyring is adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_blob_restored_while_down_is_refused_after_restart() {
    use pii_custody::kms_seal::DynamoAnchorConfig;
    let moto = pii_tests::Moto::start().await;
    let anchor_principal = pii_custody::sigv4::Credentials {
        access_key_id: "AKIAPIIANCHOR0000001".into(),
        secret_access_key: zeroize::Zeroizing::new("anchor-principal-secret".into()),
        session_token: None,
    };
    pii_tests::create_anchor_table(&moto.host, &anchor_principal, "pii-enclave-anchor").await;

    let nsm = dev_nsm(b"pii-enclave release image");
    let kms = start_kms(&[&nsm], &nsm).await;
    // The operator seals the anchor principal's credentials under the key,
    // in the one EncryptionContext the policy lets kms:Encrypt use.
    let anchor_ctx = json!({"pii-enclave": "anchor-credentials-v1",
                            "pii-enclave:deployment": "pii-tests"});
    let creds_json = json!({"AccessKeyId": anchor_principal.access_key_id,
                            "SecretAccessKey": anchor_principal.secret_access_key.as_str()});
    let (s, v) = role_call(
        kms.port,
        "Encrypt",
        json!({"KeyId": kms.key_arn, "Plaintext": B64.encode(creds_json.to_string()),
               "EncryptionContext": anchor_ctx}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let sealed_creds = v["CiphertextBlob"].as_str().unwrap().to_owned();
    // The host cannot open them: Decrypt without attestation is an explicit deny.
    let (s, v) = role_call(
        kms.port,
        "Decrypt",
        json!({"KeyId": kms.key_arn, "CiphertextBlob": sealed_creds, "EncryptionContext": anchor_ctx}),
    )
    .await;
    assert_ne!(s, 200, "{v}");
    assert_explicit_deny(&v);

    let seal = |anchored: bool| -> Arc<dyn Seal> {
        let mut cfg = config_at(kms.port, &kms.key_arn);
        cfg.anchor = anchored.then(|| DynamoAnchorConfig {
            table: "pii-enclave-anchor".into(),
            endpoint: Some(format!("http://{}", moto.host)),
            credentials_ciphertext: sealed_creds.clone(),
            expect_record: false,
        });
        cfg.dangerous_no_anchor = !anchored;
        Arc::new(KmsSeal::new(cfg, nsm.clone()).unwrap())
    };
    let keyring_dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::start_with(StackOpts {
        seal: Some(seal(true)),
        nsm: Some(nsm.clone()),
        keyring_dir: Some(keyring_dir.path().to_path_buf()),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    let (snapshot, newest) = stack.create_pii_and_rotate().await;

    stack.restart_with(&snapshot, seal(true)).await.unwrap();
    pii_tests::assert_rollback_refused(&c, "DynamoDB").await;
    stack.restart_with(&newest, seal(true)).await.unwrap();
    pii_tests::assert_serves_pii_version(&c, 2, "the rotation is there").await;

    // The anchored head is the newest blob's (read with the principal's key).
    let v = anchor_item(&moto, &anchor_principal, "pii-tests").await;
    let newest_blob = &newest.last().unwrap().1;
    assert_eq!(
        v["Item"]["blob_sha256"]["S"],
        hex::encode(pii_custody::seal::blob_hash(newest_blob)),
        "{v}"
    );

    // A decrypt's audit record is checkpointed in DynamoDB before the
    // answer, and the answer's receipt names it.
    let ct = c.encrypt_ok("pii", b"078-05-1120").await;
    let r = c
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let receipt =
        pii_proto::audit::SignedCheckpoint::parse_receipt(r.receipt.as_deref().unwrap()).unwrap();
    let v = anchor_item(&moto, &anchor_principal, "pii-tests#audit-checkpoints").await;
    let cps = verifier::audit::load_checkpoints(&v.to_string()).unwrap();
    assert!(
        cps.iter()
            .any(|c| c.point == receipt.point && c.sig == receipt.sig),
        "{cps:?} vs {receipt:?}"
    );

    // Control: without the anchor, the restored older keyring is adopted.
    stack.restart_with(&snapshot, seal(false)).await.unwrap();
    pii_tests::assert_serves_pii_version(&c, 1, "without an anchor the rollback succeeds").await;
}

/// The anchor table's item `key`, read with the anchor principal's key.
async fn anchor_item(
    moto: &pii_tests::Moto,
    principal: &pii_custody::sigv4::Credentials,
    key: &str,
) -> Value {
    let (s, v) = pii_tests::aws_call(
        &moto.host,
        principal,
        "dynamodb",
        "DynamoDB_20120810.GetItem",
        "application/x-amz-json-1.0",
        &json!({"TableName": "pii-enclave-anchor", "Key": {"deployment": {"S": key}},
                "ConsistentRead": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v
}
