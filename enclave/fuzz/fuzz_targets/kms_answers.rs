#![no_main]
//! What the host can answer for IMDS and DynamoDB, and a sealed KMS blob.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = std::str::from_utf8(data).map(pii_custody::kms_seal::parse_imds_credentials);
    let _ = serde_json::from_slice::<serde_json::Value>(data)
        .map(|v| pii_custody::kms_seal::parse_anchor_item(v.get("Item")));
    let _ = pii_custody::kms_seal::split(data);
});
