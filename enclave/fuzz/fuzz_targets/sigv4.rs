#![no_main]
//! SigV4 verification of an arbitrary request (method, path, query, headers, body).
libfuzzer_sys::fuzz_target!(|r: (String, String, String, Vec<(String, String)>, Vec<u8>)| {
    let req = pii_enclave::sigv4::Request { method: &r.0, path: &r.1, query: &r.2, headers: r.3, body: &r.4 };
    let _ = pii_enclave::sigv4::verify(&req, "eu-west-1", "kms", 1_700_000_000, |_| Some("secret".into()));
});
