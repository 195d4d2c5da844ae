//! End-to-end behaviour of the stack: restarts, replicas sharing a keyring,
//! authorization inside the enclave, limits, transports.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::{Duration, Instant};

use pii_enclave::auth::{token_hash, AuthConfig};
use pii_tests::{b64, unb64, Client, Stack, StackOpts};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_and_keys_survive_enclave_restart() {
    let mut stack = Stack::start().await;
    let c = stack.client();
    let r = c
        .post(
            "transit/encrypt/pii",
            json!({"plaintext": b64(b"alice@example.com")}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let ct = r.data("ciphertext").as_str().unwrap().to_owned();
    assert!(ct.starts_with("vault:v1:"));

    // The enclave dies: the proxy answers 503 at once instead of hanging.
    stack.kill_enclave().await;
    let t0 = Instant::now();
    let r = c
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error(), Some("enclave unavailable"));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "failed fast: {:?}",
        t0.elapsed()
    );
    let h = c.get("sys/health").await;
    assert_eq!(h.status, 503);
    assert_eq!(h.body["enclave_reachable"], json!(false));

    // A fresh enclave (empty memory) comes back; the proxy reconnects and the
    // enclave unseals the keyring from the host's store.
    stack.start_enclave().unwrap();
    assert!(stack.pool().wait_live(Duration::from_secs(10)).await);
    let r = c
        .post("transit/decrypt/pii", json!({"ciphertext": ct}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        unb64(r.data("plaintext").as_str().unwrap()),
        b"alice@example.com"
    );
    let h = c.get("sys/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.body["sealed"], json!(false));
    assert_eq!(h.body["seal_backend"], json!("dangerous-dev"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_fail_fast_when_the_enclave_dies() {
    let mut stack = Stack::start().await;
    let c = stack.client();
    assert_eq!(c.post("transit/keys/big", json!({})).await.status, 200);
    // Many concurrent batch requests in flight while the enclave is killed.
    let items: Vec<_> = (0..2000)
        .map(|i| json!({"plaintext": b64(format!("v{i}").as_bytes())}))
        .collect();
    let body = json!({ "batch_input": items });
    let mut tasks = vec![];
    for _ in 0..32 {
        let (c, body) = (c.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = c.post("transit/encrypt/big", body).await;
            (r.status, t0.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let killed_at = Instant::now();
    stack.kill_enclave().await;
    let mut statuses = vec![];
    for t in tasks {
        let (st, _) = t.await.unwrap();
        statuses.push(st);
    }
    let waited = killed_at.elapsed();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "no request hung: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_keyring_with_compare_and_swap() {
    let shared = tempfile::tempdir().unwrap();
    let opts = StackOpts {
        keyring_dir: Some(shared.path().to_path_buf()),
        ..StackOpts::default()
    };
    let a = Stack::start_with(opts.clone()).await.unwrap();
    let b = Stack::start_with(opts).await.unwrap();
    let (ca, cb) = (a.client(), b.client());
    assert_eq!(ca.post("transit/keys/shared", json!({})).await.status, 200);
    let ct = ca
        .post("transit/encrypt/shared", json!({"plaintext": b64(b"x")}))
        .await;
    let ct = ct.data("ciphertext").as_str().unwrap().to_owned();
    // B learns of the new key (store watch) and decrypts A's ciphertext.
    let mut ok = false;
    for _ in 0..50 {
        let r = cb
            .post("transit/decrypt/shared", json!({"ciphertext": ct}))
            .await;
        if r.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "replica B never saw replica A's key");
    // Concurrent rotations on both replicas: no lost update.
    let mut tasks = vec![];
    for i in 0..10 {
        let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        tasks.push(tokio::spawn(async move {
            c.post("transit/keys/shared/rotate", json!({})).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Each replica converges on all ten rotations (none lost).
    for c in [&ca, &cb] {
        let mut latest = json!(null);
        for _ in 0..50 {
            latest = c
                .get("transit/keys/shared")
                .await
                .data("latest_version")
                .clone();
            if latest == json!(11) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(latest, json!(11));
    }
    // Both replicas decrypt with the newest version.
    let ct = cb
        .post("transit/encrypt/shared", json!({"plaintext": b64(b"y")}))
        .await;
    let ct = ct.data("ciphertext").as_str().unwrap().to_owned();
    assert!(ct.starts_with("vault:v11:"), "{ct}");
    assert_eq!(
        ca.post("transit/decrypt/shared", json!({"ciphertext": ct}))
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_is_decided_in_the_enclave() {
    let cfg: AuthConfig = toml_cfg(&format!(
        r#"
        [[tokens]]
        token_hmac = "{}"
        policies = ["pii-svc"]
        [policies.pii-svc]
        rules = [
          {{ path = "transit/encrypt/pii", capabilities = ["update"] }},
          {{ path = "transit/decrypt/pii", capabilities = ["update"] }},
        ]
        "#,
        hex::encode(token_hash("s.pii-svc"))
    ));
    let stack = Stack::start_with(StackOpts {
        auth: cfg,
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let root = stack.client();
    let svc = root.with_token("s.pii-svc");
    assert_eq!(root.post("transit/keys/pii", json!({})).await.status, 200);
    let r = svc
        .post(
            "transit/encrypt/pii",
            json!({"plaintext": b64(b"123-45-6789")}),
        )
        .await;
    assert_eq!(r.status, 200);
    let ct = r.data("ciphertext").as_str().unwrap().to_owned();
    assert_eq!(
        svc.post("transit/decrypt/pii", json!({"ciphertext": ct}))
            .await
            .status,
        200
    );
    // Not allowed: other keys, key management, creating keys by upsert.
    for (path, body) in [
        ("transit/encrypt/other", json!({"plaintext": "aGk="})),
        ("transit/keys/pii/rotate", json!({})),
        ("transit/keys/new", json!({})),
    ] {
        let r = svc.post(path, body).await;
        assert_eq!(
            (r.status, r.error()),
            (403, Some("permission denied")),
            "{path}"
        );
    }
    assert_eq!(
        svc.call("DELETE", "transit/keys/pii", serde_json::Value::Null)
            .await
            .status,
        403
    );
    // Unknown and missing tokens; the bearer form works like X-Vault-Token.
    assert_eq!(
        root.with_token("nope")
            .post("transit/encrypt/pii", json!({}))
            .await
            .status,
        403
    );
    assert_eq!(
        root.with_token("")
            .post("transit/encrypt/pii", json!({}))
            .await
            .status,
        403
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/transit/encrypt/pii", stack.url))
        .bearer_auth("s.pii-svc")
        .json(&json!({"plaintext": "aGk="}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // lookup-self shows the caller's policies (hvac's is_authenticated uses it).
    let me = svc.get("auth/token/lookup-self").await;
    assert_eq!(me.data("policies"), &json!(["pii-svc"]));
}

fn toml_cfg(s: &str) -> AuthConfig {
    // The same table the enclave reads under [auth] in its config file.
    toml::from_str(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limits_and_bad_input() {
    let stack = Stack::start_with(StackOpts {
        max_request_bytes: 64 * 1024,
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    let big = vec![b'a'; 100 * 1024];
    let r = c.raw("POST", "transit/encrypt/k", Some(big)).await.unwrap();
    assert_eq!(
        (r.status, r.error()),
        (413, Some("http: request body too large"))
    );
    // Chunked (no Content-Length) is limited too.
    let stream = futures_body(vec![vec![b' '; 40 * 1024], vec![b' '; 40 * 1024]]);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/transit/encrypt/k", stack.url))
        .header("X-Vault-Token", pii_tests::ROOT_TOKEN)
        .body(stream)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Malformed JSON, bad base64, unknown key, tampered ciphertext, wrong context.
    assert_eq!(
        c.raw(
            "POST",
            "transit/encrypt/k",
            Some(b"{\"plaintext\":".to_vec())
        )
        .await
        .unwrap()
        .status,
        400
    );
    assert_eq!(
        c.raw("POST", "transit/encrypt/k", Some(vec![0xff, 0xfe]))
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        c.post("transit/encrypt/k", json!({"plaintext": "%%%"}))
            .await
            .status,
        400
    );
    assert_eq!(
        c.post(
            "transit/decrypt/unknown",
            json!({"ciphertext": "vault:v1:AAAA"})
        )
        .await
        .error(),
        Some("encryption key not found")
    );
    assert_eq!(
        c.post("transit/keys/d", json!({"derived": true}))
            .await
            .status,
        200
    );
    let ct = c
        .post(
            "transit/encrypt/d",
            json!({"plaintext": "aGk=", "context": b64(b"u1")}),
        )
        .await;
    let ct = ct.data("ciphertext").as_str().unwrap().to_owned();
    let wrong = c
        .post(
            "transit/decrypt/d",
            json!({"ciphertext": ct, "context": b64(b"u2")}),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.error()),
        (400, Some("cipher: message authentication failed"))
    );
    let mut raw = unb64(ct.rsplit(':').next().unwrap());
    raw[14] ^= 0x01;
    let tampered = format!("vault:v1:{}", b64(&raw));
    let r = c
        .post(
            "transit/decrypt/d",
            json!({"ciphertext": tampered, "context": b64(b"u1")}),
        )
        .await;
    assert_eq!(
        (r.status, r.error()),
        (400, Some("cipher: message authentication failed"))
    );
    // Unknown methods and paths outside /v1.
    assert_eq!(
        c.raw("PATCH", "transit/encrypt/k", None)
            .await
            .unwrap()
            .status,
        405
    );
    let r = reqwest::get(format!("{}/nope", stack.url)).await.unwrap();
    assert_eq!(r.status(), 404);
}

fn futures_body(chunks: Vec<Vec<u8>>) -> reqwest::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(c)).await.is_err() {
                return;
            }
        }
    });
    reqwest::Body::wrap_stream(ReceiverStream(rx))
}

struct ReceiverStream(tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>);
impl futures_core::Stream for ReceiverStream {
    type Item = Result<Vec<u8>, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_unix_socket_health_and_metrics() {
    let stack = Stack::start_with(StackOpts {
        listen_unix: true,
        ..StackOpts::default()
    })
    .await
    .unwrap();
    // HTTP/2 with prior knowledge (h2c).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .post(format!("{}/v1/transit/encrypt/h2", stack.url))
        .header("X-Vault-Token", pii_tests::ROOT_TOKEN)
        .json(&json!({"plaintext": "aGk="}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    // The same API on the Unix socket (raw HTTP/1.1).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(stack.unix_api.as_ref().unwrap())
        .await
        .unwrap();
    let body = r#"{"plaintext":"aGk="}"#;
    let req = format!(
        "POST /v1/transit/encrypt/h2 HTTP/1.1\r\nHost: x\r\nX-Vault-Token: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        pii_tests::ROOT_TOKEN,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("vault:v1:"));
    // Health endpoints and Prometheus metrics.
    let c = Client::new(&stack.url, "");
    assert_eq!(
        reqwest::get(format!("{}/healthz", stack.url))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", stack.url))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(c.get("sys/health").await.status, 200);
    let m = reqwest::get(format!("{}/metrics", stack.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("pii_proxy_http_requests_total{op=\"transit/encrypt\",status=\"200\"}"),
        "{m}"
    );
    assert!(m.contains("pii_proxy_enclave_connections 2"), "{m}");
    assert!(!m.contains("h2\""), "key names never become labels");
}

#[test]
fn vsock_listener_for_the_enclave_binds_without_connecting() {
    // Production transport: bind AF_VSOCK (CID ANY). Never connect here.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr: pii_transport::Addr = "vsock://any:0".parse().unwrap();
        match pii_transport::Listener::bind(&addr) {
            Ok(l) => assert!(matches!(
                l.local_addr().unwrap(),
                pii_transport::Addr::Vsock { .. }
            )),
            Err(e) => eprintln!("no vsock on this machine: {e}"),
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_loses_nothing() {
    let stack = Stack::start().await;
    let c = stack.client();
    assert_eq!(c.post("transit/keys/durable", json!({})).await.status, 200);
    let ct = c
        .post(
            "transit/encrypt/durable",
            json!({"plaintext": b64(b"keep me")}),
        )
        .await;
    let ct = ct.data("ciphertext").as_str().unwrap().to_owned();

    // The store becomes unusable (its directory replaced by a plain file).
    let dir = stack.keyring_dir();
    let saved = stack.dir.path().join("keyring.saved");
    std::fs::rename(&dir, &saved).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();

    // Changes are refused with 503 and not applied; crypto keeps working.
    let r = c.post("transit/keys/durable/rotate", json!({})).await;
    assert_eq!(
        (r.status, r.error()),
        (503, Some("keyring store unavailable"))
    );
    let r = c.post("transit/keys/new-during-outage", json!({})).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        c.get("transit/keys/durable").await.data("latest_version"),
        &json!(1)
    );
    let r = c
        .post("transit/decrypt/durable", json!({"ciphertext": ct}))
        .await;
    assert_eq!(unb64(r.data("plaintext").as_str().unwrap()), b"keep me");
    assert_eq!(
        c.post("transit/encrypt/durable", json!({"plaintext": "aGk="}))
            .await
            .status,
        200
    );

    // The store comes back: changes work again and nothing was lost.
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(&saved, &dir).unwrap();
    assert_eq!(
        c.post("transit/keys/durable/rotate", json!({}))
            .await
            .status,
        200
    );
    assert_eq!(
        c.get("transit/keys/durable").await.data("latest_version"),
        &json!(2)
    );
    assert_eq!(c.get("transit/keys/new-during-outage").await.status, 404);
}
