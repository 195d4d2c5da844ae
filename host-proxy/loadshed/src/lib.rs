//! Adaptive load shedding for the pii-enclave sidecar (issue 15, item 7).
//!
//! [`Core`] decides (pure: the time is an argument); [`Gate`] waits. The
//! sidecar asks the gate before each request goes to the enclave and
//! answers `429` (the client is over its fair share) or `503` (everyone is
//! waiting too long), both with `Retry-After`. See `core` for the algorithm.

#![forbid(unsafe_code)]

pub mod config;
pub mod core;
pub mod gate;

pub use config::{Config, ConfigError, Mode};
pub use core::{Arrival, ClientKey, Core, Reject, Stats};
pub use gate::{Gate, Permit, Snapshot};
