#![no_main]
//! Arbitrary bytes through the parsers only (COSE structure, payload fields):
//! a result, never a panic.
use libfuzzer_sys::fuzz_target;
use verifier::attestation::{parse_document_unverified, parse_payload};

fuzz_target!(|data: &[u8]| {
    let _ = parse_document_unverified(data);
    let _ = parse_payload(data);
});
