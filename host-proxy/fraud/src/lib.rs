//! The fraud signal bus of the pii-enclave host proxy.
//!
//! Gateway access logs come in (NDJSON over HTTP or Kafka `gateway-logs`),
//! subjects become enclave tokens before anything is kept, bounded
//! sliding-window features feed a logistic score with reasons, and decisions
//! go out as versioned signals on `fraud-signals` for the WAF sync.
//!
//! Layers, bottom up: [`record`] (one line, strictly parsed), [`ua`]
//! (user-agent classes), [`table`] (fixed-memory keyed state), [`state`]
//! (per-key windows and sketches), [`rules`] (scores and modes),
//! [`pipeline`] (records to decisions), [`signal`] (the wire schema),
//! [`tokenize`], [`replay`] and [`drill`]; [`cli`] is the command line.
#![forbid(unsafe_code)]

pub mod cli;
pub mod crawlers;
pub mod drill;
pub mod ingest;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod rules;
pub mod signal;
pub mod sink;
pub mod spool;
pub mod state;
pub mod table;
pub mod tokenize;
pub mod ua;
pub mod waf;
