//! The real binaries (`host-proxy dev`, which starts `pii-enclave`), logging at
//! debug level, exercised with good and bad input: nothing panics, and no log
//! line carries plaintext, tokens or key material.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::process::Stdio;
use std::time::Duration;

use pii_tests::{b64, Client};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secrets_in_logs_and_no_panics() {
    let bins = pii_tests::binaries();
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = data.path().join("stack.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let token = "s.log-test-token-7f3a";
    let mut child = tokio::process::Command::new(bins.join("host-proxy"))
        .args([
            "dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(data.path().join("dev"))
        .arg("--enclave-bin")
        .arg(bins.join("pii-enclave-dangerous-dev"))
        .env("PII_DEV_ROOT_TOKEN", token)
        .env("PII_PROXY_LOG", "debug")
        .env("PII_ENCLAVE_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let c = Client::new(&format!("http://127.0.0.1:{port}"), token);
    let mut up = false;
    for _ in 0..100 {
        if let Ok(r) = c.raw("GET", "sys/health", None).await {
            if r.status == 200 {
                up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        up,
        "dev stack did not come up: {}",
        std::fs::read_to_string(&log_path).unwrap()
    );

    let secret = b"SSN 078-05-1120 secret-marker";
    let r = c
        .post("transit/encrypt/logs", json!({"plaintext": b64(secret)}))
        .await;
    assert_eq!(r.status, 200);
    let ct = r.data("ciphertext").as_str().unwrap().to_owned();
    assert_eq!(
        c.post("transit/decrypt/logs", json!({"ciphertext": ct}))
            .await
            .status,
        200
    );
    c.post("transit/keys/logs/rotate", json!({})).await;
    c.post("transit/datakey/plaintext/logs", json!({})).await;
    // Bad input of every kind.
    c.raw("POST", "transit/encrypt/logs", Some(b"{not json".to_vec()))
        .await
        .unwrap();
    c.post("transit/encrypt/logs", json!({"plaintext": "%%%"}))
        .await;
    c.post(
        "transit/decrypt/logs",
        json!({"ciphertext": format!("{ct}AA")}),
    )
    .await;
    c.post(
        "transit/decrypt/logs",
        json!({"ciphertext": "vault:v1:AAAA"}),
    )
    .await;
    c.post("transit/decrypt/logs", json!({"batch_input": "x"}))
        .await;
    c.with_token("wrong-token-9c1d")
        .post("transit/encrypt/logs", json!({"plaintext": b64(secret)}))
        .await;
    // Garbage straight onto the enclave's socket.
    {
        use tokio::io::AsyncWriteExt;
        let sock = data.path().join("dev/enclave.sock");
        let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        s.write_all(b"PIIE\x00\x01\x00\x01\xff\xff\xff\xff garbage")
            .await
            .unwrap();
        let mut s2 = tokio::net::UnixStream::connect(&sock).await.unwrap();
        s2.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Still serving after all that.
    assert_eq!(
        c.post("transit/decrypt/logs", json!({"ciphertext": ct}))
            .await
            .status,
        200
    );

    // Key material, read back from the sealed store with the dev passphrase.
    let keyring_dir = data.path().join("dev/keyring");
    let newest = std::fs::read_dir(&keyring_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "blob"))
        .max()
        .unwrap();
    let blob = std::fs::read(newest).unwrap();
    let seal = pii_custody::seal::DangerousDevSeal::from_passphrase("pii-enclave-dev");
    let pt = pii_custody::seal::unseal_blob(&seal, &blob).await.unwrap();
    let kr = pii_engine::keyring::Keyring::from_cbor(&pt, 0).unwrap();
    let mut needles: Vec<(String, String)> = vec![
        (
            "plaintext".into(),
            String::from_utf8_lossy(secret).into_owned(),
        ),
        ("plaintext (base64)".into(), b64(secret)),
        ("token".into(), token.into()),
        ("wrong token".into(), "wrong-token-9c1d".into()),
    ];
    for k in kr.keys.values() {
        for (v, d) in &k.doc.versions {
            needles.push((format!("key v{v} (hex)"), hex::encode(&*d.key)));
            needles.push((format!("key v{v} (base64)"), b64(&d.key)));
            needles.push((format!("hmac key v{v} (hex)"), hex::encode(&*d.hmac_key)));
        }
    }
    assert!(needles.len() > 8);
    // The sealed blob itself never contains raw key bytes.
    for k in kr.keys.values() {
        for d in k.doc.versions.values() {
            assert!(
                !blob.windows(d.key.len()).any(|w| w == &d.key[..]),
                "raw key in sealed blob"
            );
        }
    }

    // SIGTERM, as Kubernetes stops it: `host-proxy dev` then stops its
    // enclave child (a SIGKILL would leave that child running, orphaned).
    let pid = child.id().expect("dev stack running").to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    let exited = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    if exited.is_err() {
        child.start_kill().unwrap();
        let _ = child.wait().await;
        panic!("host-proxy dev did not stop within 20 s of SIGTERM");
    }
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(logs.lines().count() > 10, "debug logs were written");
    assert!(!logs.contains("panicked"), "a component panicked:\n{logs}");
    for (what, n) in &needles {
        let hits: Vec<&str> = logs.lines().filter(|l| l.contains(n.as_str())).collect();
        assert!(hits.is_empty(), "{what} appears in the logs: {hits:?}");
    }
}

/// The production binary has no development switch, even when cargo built
/// its library with the `dangerous-dev` feature (as it does here): a flag is
/// an unknown argument, an environment variable or a `dangerous-dev` seal in
/// the config is refused with a clear message and exit code 64.
#[test]
fn production_binary_refuses_every_development_switch() {
    let bins = pii_tests::binaries();
    let prod = bins.join("pii-enclave");
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("unix:{}", dir.path().join("e.sock").display());
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(&prod);
        c.args(args).env_remove("PII_ENCLAVE_CONFIG");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for flag in [
        "--dangerous-dev-seal-passphrase=x",
        "--dangerous-dev-root-token=x",
        "--dangerous-dev-nsm",
    ] {
        let (code, err) = run(&["serve", "--listen", &sock, flag], &[]);
        assert_eq!(code, Some(2), "{flag}: {err}");
        assert!(err.contains("unexpected argument"), "{flag}: {err}");
    }
    for var in [
        "PII_ENCLAVE_DANGEROUS_DEV_SEAL_PASSPHRASE",
        "PII_ENCLAVE_DANGEROUS_DEV_ROOT_TOKEN",
        "PII_ENCLAVE_DANGEROUS_DEV_NSM",
    ] {
        let (code, err) = run(&["serve", "--listen", &sock], &[(var, "true")]);
        assert_eq!(code, Some(64), "{var}: {err}");
        assert!(
            err.contains("only in the pii-enclave-dangerous-dev binary"),
            "{var}: {err}"
        );
    }
    // Config the production binary refuses, each with exit 64 and a reason.
    let cfg = dir.path().join("enclave.toml");
    let vault = "[seal]\ntype = \"vault-transit\"\ndeployment_id = \"d\"\n\
                 address = \"https://127.0.0.1:1\"\nrole_id = \"r\"\n";
    for (text, why) in [
        (
            "[seal]\ntype = \"dangerous-dev\"\npassphrase = \"x\"\n".to_string(),
            "the development seal exists only",
        ),
        (
            format!("{vault}dangerous_allow_http = true\n"),
            "that test switch exists only",
        ),
        (
            format!("{vault}dangerous_no_anchor = true\n"),
            "that test switch exists only",
        ),
    ] {
        std::fs::write(&cfg, &text).unwrap();
        let (code, err) = run(
            &[
                "serve",
                "--listen",
                &sock,
                "--config",
                cfg.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, Some(64), "{text}: {err}");
        assert!(err.contains(why), "{text}: {err}");
    }
    // The development binary has them, under its own name.
    let out = std::process::Command::new(bins.join("pii-enclave-dangerous-dev"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--dangerous-dev-seal-passphrase"), "{help}");
}

/// `hash-token` refuses weak tokens with a clear message; `new-token` makes
/// one it accepts, with the same hash.
#[test]
fn weak_tokens_are_refused_and_new_ones_hash() {
    let bins = pii_tests::binaries();
    let prod = bins.join("pii-enclave");
    let out = std::process::Command::new(&prod)
        .args(["hash-token", "dev-root-token"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("at least 128") && err.contains("new-token"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no hash for a weak token");

    let out = std::process::Command::new(&prod)
        .arg("new-token")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches([' ', '=']).trim().to_owned())
            .unwrap()
    };
    let (token, hmac) = (field("token "), field("token_hmac"));
    let out = std::process::Command::new(&prod)
        .args(["hash-token", &token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), hmac);
    assert_eq!(hmac, hex::encode(pii_enclave::auth::token_hash(&token)));
}
