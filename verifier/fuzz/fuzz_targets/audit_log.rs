#![no_main]
//! A stream of audit JSON lines as the host stores them, and a checkpoint
//! record as an auditor reads it.
libfuzzer_sys::fuzz_target!(|s: &str| {
    let _ = verifier::audit::verify_stream("0123456789abcdef0123456789abcdef", s, &verifier::audit::KeyTrust::Unpinned);
    let _ = verifier::audit::load_checkpoints(s);
});
