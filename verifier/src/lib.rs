//! # verifier — checks evidence produced by pii-enclave
//!
//! [`audit`] verifies the enclave's signed, hash-chained audit log as the
//! host stored it: every record's hash and Ed25519 signature, the chain from
//! record to record, and the sequence numbers, reporting each gap, edit,
//! reordering or foreign record with its line. Attestation document
//! verification (issue #6) is not built yet.
#![forbid(unsafe_code)]

pub mod attestation;
pub mod audit;
pub mod boot;
pub mod policy;
pub mod report;
