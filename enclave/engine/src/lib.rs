//! # pii-engine — key handling, with nothing else
//!
//! The keyring ([`keyring`]), Transit's ciphertext operations ([`transit`]),
//! the Transform engine and its token formats ([`transform`]), and the
//! primitives they share ([`crypto`], [`b64`]). Pure: no I/O, no sockets, no
//! tokio, no clock — every time is a parameter (see [`clock`] for the seam
//! the layers above pass in). Linked into the measured image; the host proxy
//! never links it.
#![forbid(unsafe_code)]

pub mod audit_key;
pub mod b64;
pub mod clock;
pub mod crypto;
pub mod error;
pub mod keyring;
pub mod transform;
pub mod transit;

pub use error::{CryptoError, EngineError};
