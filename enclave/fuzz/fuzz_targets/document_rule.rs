#![no_main]
//! JSON-document field rules (`$.a[*].b`, `['key']`, bare names).
libfuzzer_sys::fuzz_target!(|s: &str| {
    let _ = pii_enclave::transform_api::check_rule(s);
});
