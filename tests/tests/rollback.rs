//! Keyring rollback and forks, played by the host that owns the store: it
//! serves an older blob as the newest, a different blob for a generation the
//! enclave already holds, a successor that does not name its predecessor, and
//! a blob from another deployment sharing the same KEK and image. Each is
//! refused; the enclave keeps serving the keyring it has and says why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use pii_custody::seal::{open_blob, seal_blob_at, DangerousDevSeal, Lineage};
use pii_tests::{b64, Stack, StackOpts, DEV_PASSPHRASE};
use serde_json::json;

/// `(version, bytes)` of the newest stored blob.
fn newest(stack: &Stack) -> (u64, Vec<u8>) {
    let mut v: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(stack.keyring_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_str()?.to_owned();
            let ver = n
                .strip_prefix("keyring-")?
                .strip_suffix(".blob")?
                .parse()
                .ok()?;
            Some((ver, e.path()))
        })
        .collect();
    v.sort();
    let (ver, p) = v.pop().expect("a stored blob");
    (ver, std::fs::read(p).unwrap())
}

/// What the host does: put `bytes` in the store as the newest version.
fn serve_as_newest(stack: &Stack, bytes: &[u8]) {
    let (ver, _) = newest(stack);
    let p = stack
        .keyring_dir()
        .join(format!("keyring-{:020}.blob", ver + 1));
    std::fs::write(p, bytes).unwrap();
}

async fn wait_rollback(c: &pii_tests::Client) -> serde_json::Value {
    for _ in 0..100 {
        let h = c.get("sys/health").await;
        if !h.body["rollback_detected"].is_null() {
            return h.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the enclave never reported the rollback");
}

async fn serves_newest_state(c: &pii_tests::Client) {
    let r = c
        .post(
            "transit/encrypt/newer",
            json!({"plaintext": b64(b"jane@example.com")}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let k = c.get("transit/keys/pii").await;
    assert_eq!(k.data("latest_version"), 2, "the rotation is still there");
}

async fn setup() -> (Stack, Vec<u8>) {
    let stack = Stack::start().await;
    let c = stack.client();
    assert_eq!(c.post("transit/keys/pii", json!({})).await.status / 100, 2);
    let (_, old) = newest(&stack);
    assert_eq!(
        c.post("transit/keys/newer", json!({})).await.status / 100,
        2
    );
    assert_eq!(
        c.post("transit/keys/pii/rotate", json!({})).await.status / 100,
        2
    );
    (stack, old)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_blob_served_as_newest_is_refused() {
    let (stack, old) = setup().await;
    let c = stack.client();
    serve_as_newest(&stack, &old);
    let h = wait_rollback(&c).await;
    assert_eq!(h["seal_status"], "rollback detected", "{h}");
    assert!(
        h["rollback_detected"]
            .as_str()
            .unwrap()
            .contains("older than generation"),
        "{h}"
    );
    serves_newest_state(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_bytes_for_a_held_generation_are_refused() {
    let (stack, _) = setup().await;
    let c = stack.client();
    // A blob the enclave could have sealed in another history: the same
    // generation and predecessor, other bytes (as a forked replica would make).
    let seal = DangerousDevSeal::from_passphrase(DEV_PASSPHRASE);
    let (_, cur) = newest(&stack);
    let o = open_blob(&seal, &cur).await.unwrap();
    let twin = seal_blob_at(&seal, &o.plaintext, o.lineage).await.unwrap();
    assert_ne!(twin, cur);
    serve_as_newest(&stack, &twin);
    let h = wait_rollback(&c).await;
    assert!(
        h["rollback_detected"]
            .as_str()
            .unwrap()
            .contains("different keyring for generation"),
        "{h}"
    );
    serves_newest_state(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successor_that_names_another_predecessor_is_refused() {
    let (stack, _) = setup().await;
    let c = stack.client();
    let seal = DangerousDevSeal::from_passphrase(DEV_PASSPHRASE);
    let (_, cur) = newest(&stack);
    let o = open_blob(&seal, &cur).await.unwrap();
    let mut kr = pii_engine::keyring::Keyring::from_cbor(&o.plaintext, 0).unwrap();
    kr = kr.next_generation();
    kr.keys.remove("pii");
    let next = seal_blob_at(
        &seal,
        &kr.to_cbor().unwrap(),
        Lineage {
            generation: kr.generation,
            prev: [0x66; 32],
        },
    )
    .await
    .unwrap();
    serve_as_newest(&stack, &next);
    let h = wait_rollback(&c).await;
    assert!(
        h["rollback_detected"]
            .as_str()
            .unwrap()
            .contains("forked history"),
        "{h}"
    );
    serves_newest_state(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyring_from_another_deployment_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let opts = |deployment: &str| StackOpts {
        keyring_dir: Some(dir.path().to_path_buf()),
        seal: Some(Arc::new(
            DangerousDevSeal::from_passphrase(DEV_PASSPHRASE).with_deployment(deployment),
        )),
        ..StackOpts::default()
    };
    let mut stack = Stack::start_with(opts("payments")).await.unwrap();
    let c = stack.client();
    assert_eq!(c.post("transit/keys/pii", json!({})).await.status / 100, 2);
    // Same KEK, same image, another deployment's store: stays sealed.
    stack.kill_enclave().await;
    stack.opts = opts("marketing");
    stack.start_enclave().unwrap();
    let mut last = 0;
    for _ in 0..50 {
        last = c
            .post("transit/encrypt/pii", json!({"plaintext": b64(b"x")}))
            .await
            .status;
        if last == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, 503);
    assert_eq!(c.get("sys/health").await.body["sealed"], true);
    // Back with the right deployment id: opens.
    stack.kill_enclave().await;
    stack.opts = opts("payments");
    stack.start_enclave().unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if c.post("transit/encrypt/pii", json!({"plaintext": b64(b"x")}))
            .await
            .status
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
}
