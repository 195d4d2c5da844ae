//! # pii-proto — the host ↔ enclave wire protocol
//!
//! This crate is *sans-IO*: it owns no sockets, spawns no tasks and reads no clock.
//! It turns bytes into [`Frame`]s and [`Message`]s and back, and nothing else. The
//! transport crate (`pii-transport`) drives it over AF_VSOCK or Unix sockets.
//!
//! ## Layout on the wire
//!
//! 1. **Handshake** ([`Hello`]): the connecting side sends 8 bytes
//!    `"PIIE" ‖ min_version:u16be ‖ max_version:u16be`; the accepting side answers
//!    `"PIIE" ‖ chosen_version:u16be ‖ status:u16be` (status 0 = accepted).
//! 2. **Frames** ([`Frame`]): a 17-byte header
//!    `len:u32be ‖ kind:u8 ‖ id:u64be ‖ deadline_ms:u32be` followed by
//!    `len - 13` bytes of payload. `len` counts everything after itself and is
//!    checked against a hard cap *before* any payload is buffered, on encode and
//!    on decode.
//! 3. **Messages** ([`Request`], [`Response`]): one CBOR item per payload, trailing
//!    bytes rejected.
//!
//! Both sides may send requests on one connection; request ids are scoped to the
//! sender, so a [`FrameKind::Response`] always answers one of the *receiver's*
//! own outstanding requests. Many requests may be in flight at once.
//!
//! What this crate does **not** do: authenticate the peer (attestation does),
//! encrypt (the vsock channel is local to the instance and the payloads that
//! matter are sealed end-to-end), or interpret API bodies.
#![forbid(unsafe_code)]

pub mod attest;
pub mod audit;
mod frame;
mod hello;
mod message;
pub mod relay;

pub use frame::{Frame, FrameDecoder, FrameKind, FRAME_HEADER_LEN, HARD_MAX_FRAME_LEN};
pub use hello::{Hello, HelloReply, HELLO_LEN, MAGIC, STATUS_NO_COMMON_VERSION};
pub use message::{
    ApiRequest, ApiResponse, EnclaveStatus, ErrorCode, Message, Method, NonceUsage, Request,
    Response, SealState, SealedBlob, TokenEntry,
};

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build still accepts.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Everything that can go wrong while decoding or encoding protocol bytes.
///
/// Any of these on a live connection is fatal for that connection: the peer is
/// broken or hostile, and resynchronising a length-prefixed stream is not safe.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    #[error("bad handshake magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("no common protocol version (ours {ours_min}..={ours_max}, theirs {theirs_min}..={theirs_max})")]
    NoCommonVersion {
        ours_min: u16,
        ours_max: u16,
        theirs_min: u16,
        theirs_max: u16,
    },
    #[error("peer rejected handshake with status {0}")]
    Rejected(u16),
    #[error("frame of {len} bytes exceeds the cap of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame length {0} is shorter than the frame header")]
    FrameTooShort(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed CBOR message: {0}")]
    BadMessage(String),
    #[error("{0} trailing bytes after the CBOR message")]
    TrailingBytes(usize),
    #[error("frame kind {kind:?} cannot carry this message")]
    KindMismatch { kind: FrameKind },
}
