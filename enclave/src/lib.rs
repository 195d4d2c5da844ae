//! # pii-enclave — the in-enclave PII crypto service
//!
//! The Vault-compatible API ([`api`], [`transit_api`], [`transform_api`]),
//! authorization ([`auth`]), the signed audit log ([`audit`]), the running
//! state ([`service`]: the keyring in memory and its compare-and-swap life
//! cycle over [`store::BlobStore`]), the protocol server ([`server`]) and the
//! binary ([`cli`], [`config`]).
//!
//! Key handling is in `pii-engine`; custody of the keyring (seals, NSM,
//! attestation) in `pii-custody`. What this crate does **not** do: open
//! network connections of its own, write files, or trust anything the host
//! says beyond "here are some bytes". The host stores sealed blobs it cannot
//! read and forwards API calls it cannot authorize.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod request;
pub mod server;
pub mod service;
pub mod store;
pub mod transform_api;
pub mod transit_api;
