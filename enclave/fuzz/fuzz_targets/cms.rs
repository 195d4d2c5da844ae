#![no_main]
//! KMS's CiphertextForRecipient (CMS EnvelopedData, BER) as a hostile host
//! relaying KMS could shape it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pii_custody::cms::parse(data);
});
