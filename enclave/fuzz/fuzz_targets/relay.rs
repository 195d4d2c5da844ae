#![no_main]
//! The relay's preamble line and host names (the relay parses what the
//! enclave sends; the enclave parses the relay's answer).
libfuzzer_sys::fuzz_target!(|s: &str| {
    let _ = pii_transport::relay::parse_request(s);
    let _ = pii_transport::relay::parse_reply(s);
});
