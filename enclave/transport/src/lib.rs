//! # pii-transport — every socket the host ↔ enclave link touches
//!
//! One seam, three transports: [`Addr::Vsock`] (production, AF_VSOCK through
//! `tokio-vsock`), [`Addr::HybridVsock`] (a guest's vsock behind
//! vhost-device-vsock or Firecracker, e.g. QEMU's nitro-enclave machine) and
//! [`Addr::Unix`] (dev and tests). Everything above this crate
//! sees a [`BoxIo`] and a [`Peer`]; nothing above it opens a socket.
//!
//! A [`Peer`] runs the `pii-proto` protocol over one connection: it performs the
//! handshake, multiplexes many requests in each direction, enforces the frame
//! cap both ways, applies per-request deadlines, and fails every waiting caller
//! at once when the connection drops (so callers can answer 503 instead of
//! hanging).
#![forbid(unsafe_code)]

mod addr;
mod peer;
pub mod relay;

pub use addr::{connect, Addr, AddrParseError, BoxIo, Io, Listener};
pub use peer::{handshake_client, handshake_server, CallError, Handler, Peer, PeerConfig};
