//! **DANGEROUS, tests only.** An AWS KMS emulator for end-to-end tests of
//! the enclave's KMS seal, where real KMS and Nitro hardware are absent.
//!
//! It speaks the real protocol — the KMS JSON 1.1 API over HTTP (`POST /`,
//! `X-Amz-Target: TrentService.<Action>`), SigV4-authenticated — and does
//! what KMS does with a `Recipient`: verifies the Nitro attestation document
//! (COSE_Sign1/ES384 to a configured root: the development NSM's), evaluates
//! the key policy with the request's `kms:RecipientAttestation:PCRn` /
//! `ImageSha384` and `kms:EncryptionContext:*` condition keys, and returns the
//! plaintext as a CMS EnvelopedData (RSAES-OAEP-SHA-256 key transport,
//! AES-256-CBC content, BER with indefinite lengths, as KMS sends it) in
//! `CiphertextForRecipient`. It also serves IMDSv2 credentials.
//!
//! Actions: CreateKey, DescribeKey, PutKeyPolicy, GetKeyPolicy, Encrypt,
//! Decrypt, GenerateDataKey. Ciphertext blobs are this emulator's own
//! format (AES-256-GCM under the key's material, the encryption context
//! bound); real KMS blobs are opaque too.
//!
//! Everything here is behind the `dangerous-kms-emulator` feature.
#![cfg(feature = "dangerous-kms-emulator")]

pub mod cms;
pub mod policy;
pub mod server;
pub mod sigv4;

pub use server::{CallRecord, Config, Emulator, Principal};
