#![no_main]
//! A measurement history file (JSON lines of signed records).
use std::sync::OnceLock;

fn key() -> &'static pii_measurements::VerifyingKey {
    static K: OnceLock<pii_measurements::VerifyingKey> = OnceLock::new();
    K.get_or_init(|| pii_measurements::SigningKey::generate().expect("key").0.verifying_key())
}

libfuzzer_sys::fuzz_target!(|s: &str| {
    let _ = pii_measurements::verify_history(s, key());
});
