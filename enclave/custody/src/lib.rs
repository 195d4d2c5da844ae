//! # pii-custody — who may open the keyring
//!
//! The seals that wrap the keyring for the host's store ([`seal`]: the blob
//! format and the development seal; [`vault_seal`]; [`kms_seal`] with
//! [`cms`] and [`sigv4`]), the rollback [`seal::Anchor`], and the Nitro
//! Security Module ([`nsm`]: the real device and the development emulator)
//! with the attestation it signs ([`attest`]). Linked into the measured
//! image. The KMS emulator does not link this crate: it carries its own
//! SigV4 verifier and CMS builder.
#![forbid(unsafe_code)]

pub mod attest;
pub mod cms;
pub mod kms_seal;
pub mod nsm;
pub mod seal;
pub mod sigv4;
pub mod vault_seal;
