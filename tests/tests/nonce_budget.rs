//! The random-nonce budget: counted per key version, persisted with the
//! keyring before use, exported as a metric, rotated away from at
//! `rotate_at`, and never exceeded (limits shrunk from 2^31/2^32 to small
//! numbers so the test runs them out).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use pii_engine::keyring::NonceLimits;
use pii_tests::{b64, Client, Stack, StackOpts};
use serde_json::json;

/// A key version's count from the enclave's status (what the metrics
/// aggregate).
async fn nonce_metric(stack: &Stack, key: &str, version: u32) -> Option<u64> {
    let r = stack
        .pool()
        .call(
            pii_proto::Request::Status,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    let pii_proto::Response::Status(s) = r else {
        panic!("not a status: {r:?}")
    };
    s.nonce_usage
        .iter()
        .find(|u| u.key == key && u.version == version)
        .map(|u| u.encryptions)
}

/// `pii_proxy_key_random_nonces_max` from `/metrics`.
async fn max_metric(stack: &Stack) -> u64 {
    pii_tests::metric(&stack.url, "pii_proxy_key_random_nonces_max")
        .await
        .expect("the nonce gauge is exposed")
}

async fn encrypt_version(c: &Client, key_version: Option<u32>) -> (u16, String) {
    let mut body = json!({ "plaintext": b64(b"4111-1111-1111-1111") });
    if let Some(v) = key_version {
        body["key_version"] = json!(v);
    }
    let r = c.post("transit/encrypt/pii", body).await;
    let out = if r.status == 200 {
        r.data("ciphertext").as_str().unwrap().to_owned()
    } else {
        r.error().unwrap_or_default().to_owned()
    };
    (r.status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_nonces_are_counted_persisted_rotated_and_capped() {
    let mut stack = Stack::start_with(StackOpts {
        nonce_limits: Some(NonceLimits {
            block: 4,
            rotate_at: 10,
            limit: 12,
        }),
        ..StackOpts::default()
    })
    .await
    .unwrap();
    let c = stack.client();
    assert_eq!(c.post("transit/keys/pii", json!({})).await.status, 200);
    // Reservations of 4: v1 reserves 4, then 8; the next 4 would pass 10,
    // so the 9th encryption rotates and uses v2.
    for i in 1..=8 {
        let (s, ct) = encrypt_version(&c, None).await;
        assert_eq!(s, 200, "{ct}");
        assert!(ct.starts_with("vault:v1:"), "encryption {i}: {ct}");
    }
    let (s, ct) = encrypt_version(&c, None).await;
    assert_eq!(s, 200);
    assert!(
        ct.starts_with("vault:v2:"),
        "rotated before the budget: {ct}"
    );
    assert_eq!(
        c.get("transit/keys/pii").await.data("latest_version"),
        &json!(2)
    );
    assert_eq!(nonce_metric(&stack, "pii", 1).await, Some(8));
    // 2 for one encryption: the rotation changed which version the request
    // uses, so it was counted again against v2 (counts only over-state).
    assert_eq!(nonce_metric(&stack, "pii", 2).await, Some(2));
    assert_eq!(max_metric(&stack).await, 8);

    // An explicit old version may use what is left below the limit, no more.
    for _ in 0..4 {
        let (s, ct) = encrypt_version(&c, Some(1)).await;
        assert_eq!(s, 200, "{ct}");
    }
    let (s, err) = encrypt_version(&c, Some(1)).await;
    assert_eq!(s, 400);
    assert!(err.contains("budget of 12 random nonces"), "{err}");

    // A batch takes its items at once: 5 do not fit the 3 left of v2's
    // block [0, 4), so it reserves [4, 9) and the rest of the old block is
    // counted as used (counts only ever over-state).
    let batch: Vec<_> = (0..5).map(|_| json!({ "plaintext": b64(b"x") })).collect();
    let r = c
        .post("transit/encrypt/pii", json!({ "batch_input": batch }))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(nonce_metric(&stack, "pii", 2).await, Some(9));

    // The count survives a restart: it restarts at what was reserved
    // (stored before use), never lower.
    stack.restart_enclave().await;
    let c = stack.client();
    let (s, _) = encrypt_version(&c, None).await;
    assert_eq!(s, 200);
    let v1 = nonce_metric(&stack, "pii", 1).await.unwrap();
    assert_eq!(v1, 12, "v1's reservation was all used");
    let v2 = nonce_metric(&stack, "pii", 2).await.unwrap();
    assert!(
        v2 > 6,
        "v2 restarts above its count before the restart: {v2}"
    );
    let (s, err) = encrypt_version(&c, Some(1)).await;
    assert_eq!((s, err.contains("budget")), (400, true), "{err}");

    // Convergent keys derive their nonces: nothing to count.
    let r = c
        .post(
            "transit/keys/conv",
            json!({ "derived": true, "convergent_encryption": true }),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = c
        .post(
            "transit/encrypt/conv",
            json!({ "plaintext": b64(b"x"), "context": b64(b"u1") }),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(nonce_metric(&stack, "conv", 1).await, None);
}
