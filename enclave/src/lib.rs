//! # pii-enclave — the in-enclave PII crypto service
//!
//! Everything that touches key material lives in this crate and runs inside
//! the Nitro Enclave: the keyring ([`keyring`]), the Vault-Transit-compatible
//! engine ([`transit`]), the API router and authorization ([`api`], [`auth`]),
//! sealing ([`seal`]) and the protocol server ([`server`]).
//!
//! What it does **not** do: open network connections of its own, write files,
//! or trust anything the host says beyond "here are some bytes". The host
//! stores sealed blobs it cannot read and forwards API calls it cannot
//! authorize.
#![forbid(unsafe_code)]

pub mod api;
pub mod attest;
pub mod audit;
pub mod auth;
pub mod b64;
pub mod cli;
pub mod cms;
pub mod config;
pub mod error;
pub mod keyring;
pub mod kms_seal;
pub mod nsm;
pub mod seal;
pub mod server;
pub mod sigv4;
pub mod transform;
pub mod transform_api;
pub mod transit;
pub mod vault_seal;
