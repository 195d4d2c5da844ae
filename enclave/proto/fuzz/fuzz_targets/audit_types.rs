#![no_main]
//! The anchor's checkpoint set, audit receipts and attestation user_data: all
//! arrive through hands the host controls.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pii_proto::audit::CheckpointSet::parse(data);
    let _ = std::str::from_utf8(data).map(pii_proto::audit::SignedCheckpoint::parse_receipt);
    let _ = pii_proto::attest::UserData::decode(data);
});
