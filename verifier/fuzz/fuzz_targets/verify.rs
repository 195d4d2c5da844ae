#![no_main]
//! Arbitrary bytes as an attestation document: every verification step, with
//! and without the chain cache, returns a result, never panics. Seeds are the
//! real AWS documents.
use libfuzzer_sys::fuzz_target;
use verifier::attestation::{verify, verify_cached, ChainCache, Policy};

fuzz_target!(|data: &[u8]| {
    let mut p = Policy::aws(1_736_179_625);
    p.allow_debug = data.first().is_some_and(|b| b & 1 == 1);
    let _ = verify(data, &p);
    let cache = ChainCache::default();
    let _ = verify_cached(data, &p, &cache);
});
