#![no_main]
//! The enclave's configuration file (TOML), including policies and seals.
libfuzzer_sys::fuzz_target!(|s: &str| {
    let _ = pii_enclave::config::Config::parse(s);
});
