//! Differential compatibility: the same requests against a real OpenBao dev
//! server and against our sidecar. Status codes, response shapes, error
//! strings and deterministic values must match; ciphertext bytes, timestamps
//! and random values are compared by form (version, length) only.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashMap;

use pii_tests::{OpenBao, Reply, Stack};
use serde_json::{Map, Value};

struct Step {
    method: &'static str,
    path: &'static str,
    body: &'static str,
    /// `(variable, JSON pointer)` captured from the response.
    capture: &'static [(&'static str, &'static str)],
    /// Data fields whose values are random on both sides (compared by length).
    random: &'static [&'static str],
}

const fn s(method: &'static str, path: &'static str, body: &'static str) -> Step {
    Step {
        method,
        path,
        body,
        capture: &[],
        random: &[],
    }
}

const fn cap(
    method: &'static str,
    path: &'static str,
    body: &'static str,
    capture: &'static [(&'static str, &'static str)],
) -> Step {
    Step {
        method,
        path,
        body,
        capture,
        random: &[],
    }
}

fn steps() -> Vec<Step> {
    vec![
        // Key lifecycle.
        s("POST", "transit/keys/k1", "{}"),
        s("POST", "transit/keys/k1", "{}"),
        s("GET", "transit/keys/k1", ""),
        s("GET", "transit/keys/missing", ""),
        s("POST", "transit/keys/c1", r#"{"type":"chacha20-poly1305"}"#),
        s("POST", "transit/keys/a128", r#"{"type":"aes128-gcm96"}"#),
        s("POST", "transit/keys/d1", r#"{"derived":true}"#),
        s(
            "POST",
            "transit/keys/cv1",
            r#"{"derived":true,"convergent_encryption":true}"#,
        ),
        s(
            "POST",
            "transit/keys/bad1",
            r#"{"convergent_encryption":true}"#,
        ),
        s("POST", "transit/keys/bad2", r#"{"type":"bogus"}"#),
        s("LIST", "transit/keys", ""),
        s("GET", "transit/keys?list=true", ""),
        // Encrypt / decrypt round trips.
        cap(
            "POST",
            "transit/encrypt/k1",
            r#"{"plaintext":"aGVsbG8gd29ybGQ="}"#,
            &[("ct1", "/data/ciphertext")],
        ),
        s("POST", "transit/decrypt/k1", r#"{"ciphertext":"{{ct1}}"}"#),
        s(
            "POST",
            "transit/decrypt/k1",
            r#"{"ciphertext":"{{ct1}}","context":"Y3R4"}"#,
        ),
        s(
            "POST",
            "transit/decrypt/k1",
            r#"{"ciphertext":"{{ct1}}","associated_data":"YWQ="}"#,
        ),
        cap(
            "POST",
            "transit/encrypt/c1",
            r#"{"plaintext":"aGk=","associated_data":"YWQ="}"#,
            &[("ctc", "/data/ciphertext")],
        ),
        s(
            "POST",
            "transit/decrypt/c1",
            r#"{"ciphertext":"{{ctc}}","associated_data":"YWQ="}"#,
        ),
        s("POST", "transit/decrypt/c1", r#"{"ciphertext":"{{ctc}}"}"#),
        cap(
            "POST",
            "transit/encrypt/a128",
            r#"{"plaintext":""}"#,
            &[("cta", "/data/ciphertext")],
        ),
        s(
            "POST",
            "transit/decrypt/a128",
            r#"{"ciphertext":"{{cta}}"}"#,
        ),
        // Derived and convergent keys.
        s("POST", "transit/encrypt/d1", r#"{"plaintext":"aGVsbG8="}"#),
        cap(
            "POST",
            "transit/encrypt/d1",
            r#"{"plaintext":"aGVsbG8=","context":"dXNlci0x"}"#,
            &[("ctd", "/data/ciphertext")],
        ),
        s(
            "POST",
            "transit/decrypt/d1",
            r#"{"ciphertext":"{{ctd}}","context":"dXNlci0x"}"#,
        ),
        s(
            "POST",
            "transit/decrypt/d1",
            r#"{"ciphertext":"{{ctd}}","context":"dXNlci0y"}"#,
        ),
        s("POST", "transit/decrypt/d1", r#"{"ciphertext":"{{ctd}}"}"#),
        cap(
            "POST",
            "transit/encrypt/cv1",
            r#"{"plaintext":"aGVsbG8=","context":"dXNlci0x"}"#,
            &[("cv_a", "/data/ciphertext")],
        ),
        cap(
            "POST",
            "transit/encrypt/cv1",
            r#"{"plaintext":"aGVsbG8=","context":"dXNlci0x"}"#,
            &[("cv_b", "/data/ciphertext")],
        ),
        s(
            "POST",
            "transit/decrypt/cv1",
            r#"{"batch_input":[{"ciphertext":"{{cv_a}}","context":"dXNlci0x"},{"ciphertext":"{{cv_b}}","context":"dXNlci0x"}]}"#,
        ),
        // Upsert on encrypt.
        s(
            "POST",
            "transit/encrypt/auto1",
            r#"{"plaintext":"aGVsbG8="}"#,
        ),
        s("GET", "transit/keys/auto1", ""),
        s(
            "POST",
            "transit/encrypt/auto2",
            r#"{"plaintext":"aGVsbG8=","context":"Y3R4"}"#,
        ),
        s("GET", "transit/keys/auto2", ""),
        s(
            "POST",
            "transit/encrypt/auto3",
            r#"{"plaintext":"aGVsbG8=","type":"chacha20-poly1305"}"#,
        ),
        s("GET", "transit/keys/auto3", ""),
        // Bad input.
        s("POST", "transit/encrypt/k1", "{}"),
        s(
            "POST",
            "transit/encrypt/k1",
            r#"{"plaintext":"not base64!!"}"#,
        ),
        s("POST", "transit/encrypt/k1", r#"{"plaintext":"aGVsbG8"}"#),
        s("POST", "transit/encrypt/k1", r#"{"plaintext":123}"#),
        s("POST", "transit/encrypt/k1", "{bad json"),
        s("POST", "transit/encrypt/k1", "[1,2]"),
        s(
            "POST",
            "transit/encrypt/k1",
            r#"{"plaintext":"aGVsbG8=","key_version":"x"}"#,
        ),
        s(
            "POST",
            "transit/encrypt/k1",
            r#"{"plaintext":"aGVsbG8=","nonce":"AAAAAAAAAAAAAAAA"}"#,
        ),
        s("POST", "transit/decrypt/k1", "{}"),
        s("POST", "transit/decrypt/k1", r#"{"ciphertext":"garbage"}"#),
        s(
            "POST",
            "transit/decrypt/k1",
            r#"{"ciphertext":"vault:v1:AAAA"}"#,
        ),
        s(
            "POST",
            "transit/decrypt/k1",
            r#"{"ciphertext":"vault:vx:AAAA"}"#,
        ),
        s(
            "POST",
            "transit/decrypt/k1",
            r#"{"ciphertext":"vault:v9:AAAA"}"#,
        ),
        s(
            "POST",
            "transit/decrypt/k1",
            r#"{"ciphertext":"vault:v1:!!!!"}"#,
        ),
        s(
            "POST",
            "transit/decrypt/k1",
            r#"{"ciphertext":"vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        ),
        s("POST", "transit/decrypt/k1", r#"{"ciphertext":123}"#),
        s(
            "POST",
            "transit/decrypt/nokey",
            r#"{"ciphertext":"vault:v1:AAAA"}"#,
        ),
        s("GET", "transit/encrypt/k1", ""),
        s("POST", "transit/bogus", "{}"),
        s("POST", "transit/keys/bad%20name", "{}"),
        // Batches with partial failures and references.
        s(
            "POST",
            "transit/encrypt/k1",
            r#"{"batch_input":[{"plaintext":"aGVsbG8=","reference":"a"},{"plaintext":"!!","reference":"b"}]}"#,
        ),
        s(
            "POST",
            "transit/encrypt/k1",
            r#"{"batch_input":[{"plaintext":"aGVsbG8=","reference":"a"},{"plaintext":"!!","reference":"b"}],"partial_failure_response_code":207}"#,
        ),
        s(
            "POST",
            "transit/encrypt/k1",
            r#"{"batch_input":[{"plaintext":"!!"},{"plaintext":"!!"}],"partial_failure_response_code":207}"#,
        ),
        s(
            "POST",
            "transit/encrypt/k1",
            r#"{"batch_input":[{"plaintext":"aGVsbG8="},{"plaintext":"aGk="}]}"#,
        ),
        s("POST", "transit/encrypt/k1", r#"{"batch_input":[]}"#),
        s(
            "POST",
            "transit/encrypt/d1",
            r#"{"batch_input":[{"plaintext":"aGVsbG8=","context":"Y3R4"},{"plaintext":"aGVsbG8="}]}"#,
        ),
        s(
            "POST",
            "transit/decrypt/k1",
            r#"{"batch_input":[{"ciphertext":"{{ct1}}","reference":"r1"},{"ciphertext":"nope","reference":"r2"}]}"#,
        ),
        s(
            "POST",
            "transit/decrypt/k1",
            r#"{"batch_input":[{"ciphertext":"{{ct1}}","reference":"r1"}]}"#,
        ),
        // Rotation, rewrap, versions.
        s("POST", "transit/keys/k1/rotate", "{}"),
        s("POST", "transit/rewrap/k1", r#"{"ciphertext":"{{ct1}}"}"#),
        s(
            "POST",
            "transit/rewrap/k1",
            r#"{"ciphertext":"{{ct1}}","key_version":1}"#,
        ),
        s(
            "POST",
            "transit/rewrap/k1",
            r#"{"batch_input":[{"ciphertext":"{{ct1}}","reference":"x"},{"ciphertext":"bad"}]}"#,
        ),
        s("POST", "transit/rewrap/k1", "{}"),
        s(
            "POST",
            "transit/encrypt/k1",
            r#"{"plaintext":"aGVsbG8=","key_version":1}"#,
        ),
        s(
            "POST",
            "transit/encrypt/k1",
            r#"{"plaintext":"aGVsbG8=","key_version":9}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"min_decryption_version":2}"#,
        ),
        s("POST", "transit/decrypt/k1", r#"{"ciphertext":"{{ct1}}"}"#),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"min_decryption_version":9}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"min_encryption_version":9}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"min_encryption_version":1}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"auto_rotate_period":"10s"}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"auto_rotate_period":"1h"}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"min_decryption_version":"abc"}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"deletion_allowed":"maybe"}"#,
        ),
        s("POST", "transit/keys/k1/trim", "{}"),
        s(
            "POST",
            "transit/keys/k1/trim",
            r#"{"min_available_version":2}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"min_encryption_version":2}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/trim",
            r#"{"min_available_version":3}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/trim",
            r#"{"min_available_version":2}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/trim",
            r#"{"min_available_version":1}"#,
        ),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"min_decryption_version":1}"#,
        ),
        s("GET", "transit/keys/k1", ""),
        s("POST", "transit/keys/missing/rotate", "{}"),
        // Data keys.
        Step {
            random: &["plaintext"],
            ..s("POST", "transit/datakey/plaintext/k1", "{}")
        },
        s("POST", "transit/datakey/wrapped/k1", r#"{"bits":128}"#),
        Step {
            random: &["plaintext"],
            ..s("POST", "transit/datakey/plaintext/k1", r#"{"bits":512}"#)
        },
        s("POST", "transit/datakey/wrapped/k1", r#"{"bits":100}"#),
        s("POST", "transit/datakey/bogus/k1", "{}"),
        s("POST", "transit/datakey/plaintext/nokey", "{}"),
        // HMAC and verify.
        cap(
            "POST",
            "transit/hmac/k1",
            r#"{"input":"aGVsbG8="}"#,
            &[("h1", "/data/hmac")],
        ),
        s(
            "POST",
            "transit/hmac/k1/sha2-512",
            r#"{"input":"aGVsbG8="}"#,
        ),
        s(
            "POST",
            "transit/hmac/k1",
            r#"{"input":"aGVsbG8=","algorithm":"md5"}"#,
        ),
        s("POST", "transit/hmac/k1", "{}"),
        s("POST", "transit/hmac/nokey", r#"{"input":"aGVsbG8="}"#),
        s(
            "POST",
            "transit/hmac/k1",
            r#"{"input":"aGVsbG8=","key_version":7}"#,
        ),
        s(
            "POST",
            "transit/hmac/k1",
            r#"{"batch_input":[{"input":"aGVsbG8=","reference":"a"},{"input":"!!"}]}"#,
        ),
        s(
            "POST",
            "transit/verify/k1",
            r#"{"input":"aGVsbG8=","hmac":"{{h1}}"}"#,
        ),
        s(
            "POST",
            "transit/verify/k1",
            r#"{"input":"aGk=","hmac":"{{h1}}"}"#,
        ),
        s(
            "POST",
            "transit/verify/k1/sha2-512",
            r#"{"input":"aGVsbG8=","hmac":"{{h1}}"}"#,
        ),
        s(
            "POST",
            "transit/verify/k1",
            r#"{"input":"aGVsbG8=","hmac":"garbage"}"#,
        ),
        s("POST", "transit/verify/k1", r#"{"input":"aGVsbG8="}"#),
        s(
            "POST",
            "transit/verify/k1",
            r#"{"batch_input":[{"input":"aGVsbG8=","hmac":"{{h1}}","reference":"a"},{"input":"aGVsbG8=","hmac":"x"}]}"#,
        ),
        // Random and hash.
        Step {
            random: &["random_bytes"],
            ..s("POST", "transit/random", "{}")
        },
        Step {
            random: &["random_bytes"],
            ..s("POST", "transit/random/8", r#"{"format":"hex"}"#)
        },
        s("POST", "transit/random/0", "{}"),
        s("POST", "transit/random/999999", "{}"),
        s("POST", "transit/random", r#"{"format":"bin"}"#),
        s("POST", "transit/hash", r#"{"input":"aGVsbG8="}"#),
        s(
            "POST",
            "transit/hash/sha2-512",
            r#"{"input":"aGVsbG8=","format":"base64"}"#,
        ),
        s(
            "POST",
            "transit/hash",
            r#"{"input":"aGVsbG8=","algorithm":"sha3-256"}"#,
        ),
        s(
            "POST",
            "transit/hash",
            r#"{"input":"aGVsbG8=","algorithm":"md5"}"#,
        ),
        s(
            "POST",
            "transit/hash",
            r#"{"input":"aGVsbG8=","format":"bin"}"#,
        ),
        s("POST", "transit/hash", "{}"),
        // Deletion.
        s("DELETE", "transit/keys/k1", ""),
        s("DELETE", "transit/keys/nokey", ""),
        s(
            "POST",
            "transit/keys/k1/config",
            r#"{"deletion_allowed":true}"#,
        ),
        s("DELETE", "transit/keys/k1", ""),
        s("GET", "transit/keys/k1", ""),
        s("LIST", "transit/keys", ""),
    ]
}

fn substitute(body: &str, vars: &HashMap<String, String>) -> String {
    let mut out = body.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// Replace values that legitimately differ by a description of their form.
fn canonical(v: &Value, random: &[&str], key: Option<&str>) -> Value {
    match v {
        Value::String(s) => {
            if let Some(rest) = s.strip_prefix("vault:v") {
                if let Some((ver, payload)) = rest.split_once(':') {
                    return Value::String(format!("vault:v{ver}:<{} chars>", payload.len()));
                }
            }
            if key.is_some_and(|k| random.contains(&k)) {
                return Value::String(format!("<random {} chars>", s.len()));
            }
            v.clone()
        }
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                match k.as_str() {
                    "request_id" => continue,
                    // Creation timestamps.
                    "keys" if x.is_object() => {
                        let ts: Map<String, Value> = x
                            .as_object()
                            .map(|o| o.keys().map(|k| (k.clone(), Value::from(0))).collect())
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(ts));
                    }
                    _ => {
                        out.insert(k.clone(), canonical(x, random, Some(k)));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| canonical(x, random, key)).collect()),
        other => other.clone(),
    }
}

async fn run(client: &pii_tests::Client, st: &Step, vars: &mut HashMap<String, String>) -> Reply {
    let body = substitute(st.body, vars);
    let body = if body.is_empty() {
        None
    } else {
        Some(body.into_bytes())
    };
    let r = client
        .raw(st.method, st.path, body)
        .await
        .expect("request completes");
    for (name, ptr) in st.capture {
        if let Some(v) = r.body.pointer(ptr).and_then(Value::as_str) {
            vars.insert((*name).to_owned(), v.to_owned());
        }
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_matches_openbao() {
    let bao = OpenBao::start().await.expect("OpenBao starts");
    let stack = Stack::start().await;
    let (ours, theirs) = (stack.client(), bao.client());
    let (mut v_ours, mut v_theirs) = (HashMap::new(), HashMap::new());
    let mut mismatches = vec![];
    let steps = steps();
    for (i, st) in steps.iter().enumerate() {
        let a = run(&theirs, st, &mut v_theirs).await;
        let b = run(&ours, st, &mut v_ours).await;
        let (ca, cb) = (
            canonical(&a.body, st.random, None),
            canonical(&b.body, st.random, None),
        );
        if a.status != b.status || ca != cb {
            mismatches.push(format!(
                "step {i}: {} {} {}\n  openbao: {} {}\n  sidecar: {} {}",
                st.method, st.path, st.body, a.status, ca, b.status, cb
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} requests differ:\n{}",
        mismatches.len(),
        steps.len(),
        mismatches.join("\n")
    );
    eprintln!(
        "differential: {} requests, identical status/shape/errors",
        steps.len()
    );
}
