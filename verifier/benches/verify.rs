//! Verification time per document: ours cold (full chain), ours warm (chain
//! cache), and the published `nitro_attest` crate on the same real document.
//! `cargo bench -p verifier --bench verify` prints median and p99 in µs.
use std::time::Instant;

use verifier::attestation::{verify, verify_cached, ChainCache, Policy};

const AT: i64 = 1_736_179_625;

fn stats(label: &str, mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let med = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    println!(
        "{label:45} median {med:8.1} µs   p99 {p99:8.1} µs   ({} runs)",
        samples.len()
    );
    med
}

fn time(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..n / 10 {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64 / 1000.0
        })
        .collect()
}

fn main() {
    let doc = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nitro-attest_2025-01-06.cbor"
    ))
    .expect("fixture");
    let n = 2000;
    let policy = Policy::aws(AT);
    let cold = stats(
        "pii-enclave verifier, cold (full chain)",
        time(n, || {
            verify(&doc, &policy).expect("verifies");
        }),
    );
    let cache = ChainCache::default();
    let warm = stats(
        "pii-enclave verifier, warm (chain cache)",
        time(n, || {
            verify_cached(&doc, &policy, &cache).expect("verifies");
        }),
    );
    let now = time::OffsetDateTime::from_unix_timestamp(AT).expect("time");
    let theirs = stats(
        "nitro_attest 0.2 (crates.io), parse_and_verify",
        time(n, || {
            nitro_attest::UnparsedAttestationDoc::from(doc.as_slice())
                .parse_and_verify(now)
                .expect("verifies");
        }),
    );
    println!(
        "ratio: nitro_attest / ours cold = {:.2}x, nitro_attest / ours warm = {:.2}x",
        theirs / cold,
        theirs / warm
    );
}
