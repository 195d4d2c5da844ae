use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Frame, FrameKind, ProtoError};

/// HTTP-level method of an API call (Vault's `LIST` included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Get,
    Put,
    Post,
    Delete,
    List,
}

/// A Vault-style API call, passed through from the sidecar untouched.
///
/// The host proxy does not interpret the body or the token: routing, parsing and
/// authorization all happen inside the enclave.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiRequest {
    pub method: Method,
    /// Path below `/v1/`, e.g. `transit/encrypt/pii`.
    pub path: String,
    /// Raw query string without `?` (may be empty).
    #[serde(default)]
    pub query: String,
    /// The caller's token, as presented. Never logged.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(with = "serde_bytes", default)]
    pub body: Vec<u8>,
}

impl std::fmt::Debug for ApiRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The enclave's answer to an [`ApiRequest`]: an HTTP status and a JSON body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResponse {
    pub status: u16,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Response headers the enclave sets (the host proxy forwards only the
    /// ones it knows, e.g. `X-Pii-Audit-Receipt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for ApiResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiResponse")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A sealed keyring blob and its version in the host's store. The host can
/// read neither; it only stores and returns it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBlob {
    pub version: u64,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBlob")
            .field("version", &self.version)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Whether the enclave holds its keyring in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealState {
    /// Keyring loaded; crypto calls are served.
    Unsealed,
    /// No keyring in memory; crypto calls fail with 503.
    Sealed,
}

/// Health of the enclave, as reported to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveStatus {
    pub seal: SealState,
    /// Name of the seal backend (`dangerous-dev`, `vault-transit`, …).
    pub seal_backend: String,
    /// The seal backend's last error, when its last call failed (keys in
    /// memory keep serving; changes and cold starts wait for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_error: Option<String>,
    /// Why the enclave last refused the store's keyring as a rollback or a
    /// fork (it keeps serving the keyring it has, and adopts no older state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_detected: Option<String>,
    /// The rollback anchor's last error, when its last call failed (nothing
    /// is adopted or changed until it answers again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_error: Option<String>,
    /// Version of the keyring blob in memory (0 = none).
    pub keyring_version: u64,
    pub enclave_version: String,
    /// Random-nonce encryptions counted per key version (an upper bound:
    /// reservations are counted whole).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nonce_usage: Vec<NonceUsage>,
}

/// One key version's random-nonce count, for the nonce-budget metric.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NonceUsage {
    pub key: String,
    pub version: u32,
    pub encryptions: u64,
}

/// Requests either side may send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Liveness; answered with [`Response::Pong`].
    Ping,
    /// host → enclave: health and seal state.
    Status,
    /// host → enclave: a Vault-style API call.
    Api(ApiRequest),
    /// host → enclave: the store holds a blob newer than `version`; reload.
    KeyringChanged { version: u64 },
    /// enclave → host: return the newest stored keyring blob, if any.
    KeyringLoad,
    /// enclave → host: store `blob` as version `expected + 1` only if the
    /// newest stored version is `expected` (compare-and-swap).
    KeyringStore { expected: u64, blob: SealedBlob },
    /// enclave → host: append signed audit records (JSON lines, in order) to
    /// `stream`, durably, before answering `Ack`.
    AuditAppend {
        stream: String,
        records: Vec<serde_bytes::ByteBuf>,
    },
    /// enclave → host: durably store token mappings (encrypted by the
    /// enclave) before answering `Ack`. Existing keys are replaced.
    TokenPut { entries: Vec<TokenEntry> },
    /// enclave → host: fetch mappings; answered with `Tokens` in key order.
    TokenGet { keys: Vec<String> },
    /// enclave → host: delete mappings that expired before `now` (unix s).
    TokenTidy { now: u64 },
    // There is deliberately no attestation request: a host that could ask the
    // NSM for documents with fields of its choice would hold an attestation
    // oracle. Documents are API calls (`sys/attestation`), built by the enclave.
}

/// One stored token mapping. `key` is a keyed hash of the token id, `value`
/// the enclave's ciphertext of the original value and metadata: the host
/// learns neither.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Unix seconds; 0 = never.
    pub expires_at: u64,
}

impl std::fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEntry")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Coarse error codes. Details stay in the sender's local log: fine-grained
/// errors from crypto code can be side channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request could not be decoded or is not allowed from this side.
    BadRequest,
    /// Temporarily unable (sealed, store down, shutting down). Retry later.
    Unavailable,
    /// The request's deadline passed before it finished.
    DeadlineExceeded,
    /// The response would exceed the frame cap.
    TooLarge,
    /// Compare-and-swap lost: someone stored a newer version first.
    Conflict,
    /// Anything else; see the peer's logs.
    Internal,
}

/// Responses to [`Request`]s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    Pong,
    Status(EnclaveStatus),
    Api(ApiResponse),
    /// Answer to `KeyringLoad`: the newest blob, or none stored yet.
    Keyring(Option<SealedBlob>),
    /// Answer to `KeyringStore`: stored under this version.
    Stored {
        version: u64,
    },
    /// Answer to `KeyringStore` when the CAS lost: the current newest blob.
    Conflict(SealedBlob),
    /// Answer to `KeyringChanged`, `AuditAppend`, `TokenPut`.
    Ack,
    /// Answer to `TokenGet`: one entry per key, `None` when absent.
    Tokens(Vec<Option<serde_bytes::ByteBuf>>),
    /// Answer to `TokenTidy`: mappings deleted.
    Tidied {
        deleted: u64,
    },
    Error(ErrorCode),
}

/// A decoded frame: what arrived, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request {
        id: u64,
        deadline_ms: u32,
        request: Request,
    },
    Response {
        id: u64,
        response: Response,
    },
    Cancel {
        id: u64,
    },
}

fn to_cbor<T: Serialize>(v: &T) -> Result<Bytes, ProtoError> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(v, &mut out).map_err(|e| ProtoError::BadMessage(e.to_string()))?;
    Ok(Bytes::from(out))
}

fn from_cbor<T: for<'de> Deserialize<'de>>(mut b: &[u8]) -> Result<T, ProtoError> {
    let v = ciborium::from_reader(&mut b).map_err(|e| ProtoError::BadMessage(e.to_string()))?;
    if !b.is_empty() {
        return Err(ProtoError::TrailingBytes(b.len()));
    }
    Ok(v)
}

impl Message {
    /// Build the frame for this message.
    pub fn to_frame(&self) -> Result<Frame, ProtoError> {
        Ok(match self {
            Message::Request {
                id,
                deadline_ms,
                request,
            } => Frame {
                kind: FrameKind::Request,
                id: *id,
                deadline_ms: *deadline_ms,
                payload: to_cbor(request)?,
            },
            Message::Response { id, response } => Frame {
                kind: FrameKind::Response,
                id: *id,
                deadline_ms: 0,
                payload: to_cbor(response)?,
            },
            Message::Cancel { id } => Frame {
                kind: FrameKind::Cancel,
                id: *id,
                deadline_ms: 0,
                payload: Bytes::new(),
            },
        })
    }

    /// Decode a frame's payload. Exactly one CBOR item; trailing bytes rejected.
    pub fn from_frame(f: &Frame) -> Result<Message, ProtoError> {
        Ok(match f.kind {
            FrameKind::Request => Message::Request {
                id: f.id,
                deadline_ms: f.deadline_ms,
                request: from_cbor(&f.payload)?,
            },
            FrameKind::Response => Message::Response {
                id: f.id,
                response: from_cbor(&f.payload)?,
            },
            FrameKind::Cancel => Message::Cancel { id: f.id },
        })
    }
}
