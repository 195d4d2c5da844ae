#![no_main]
//! A policy (TOML rules) into Vault-style ACL matching, then the decision on
//! arbitrary paths, plain and as LIST.
use pii_enclave::auth::{Acl, Policy};

libfuzzer_sys::fuzz_target!(|input: (String, Vec<String>)| {
    let Ok(p) = toml::from_str::<Policy>(&input.0) else { return };
    let Ok(acl) = Acl::new([&p]) else { return };
    for path in &input.1 {
        let _ = (acl.lookup(path, false), acl.lookup(path, true));
    }
});
