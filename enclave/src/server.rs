//! The enclave's protocol server: accepts host connections, answers API calls,
//! and keeps the keyring in step with the host's store.

use std::sync::Arc;
use std::time::Duration;

use pii_proto::{EnclaveStatus, ErrorCode, Request, Response, SealState, SealedBlob};
use pii_transport::{handshake_server, CallError, Handler, Listener, Peer, PeerConfig};

use crate::auth::Auth;
use crate::service::Engine;
use crate::store::{BlobStore, StoreError, StoreFuture, StoreOutcome};

/// Timeout for the enclave's calls to the host's store.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a connection needs.
pub struct Server {
    pub engine: Engine,
    pub auth: Auth,
    /// Attestation documents (the NSM, when there is one).
    pub attestor: pii_custody::attest::Attestor,
}

/// How often keys are checked for auto-rotation.
const AUTO_ROTATE_CHECK: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// The host's store, reached through the connection a request came on.
pub struct PeerStore<'a>(pub &'a Peer);

fn call_err(e: CallError) -> StoreError {
    StoreError(e.to_string())
}

impl BlobStore for PeerStore<'_> {
    fn load(&self) -> StoreFuture<'_, Option<SealedBlob>> {
        Box::pin(async move {
            match self
                .0
                .call(Request::KeyringLoad, STORE_TIMEOUT)
                .await
                .map_err(call_err)?
            {
                Response::Keyring(b) => Ok(b),
                other => Err(StoreError(format!("unexpected answer {other:?}"))),
            }
        })
    }

    fn store(&self, expected: u64, blob: Vec<u8>) -> StoreFuture<'_, StoreOutcome> {
        Box::pin(async move {
            let req = Request::KeyringStore {
                expected,
                blob: SealedBlob {
                    version: expected + 1,
                    bytes: blob,
                },
            };
            match self.0.call(req, STORE_TIMEOUT).await.map_err(call_err)? {
                Response::Stored { version } => Ok(StoreOutcome::Stored(version)),
                Response::Conflict(b) => Ok(StoreOutcome::Conflict(b)),
                other => Err(StoreError(format!("unexpected answer {other:?}"))),
            }
        })
    }

    fn token_put(&self, entries: Vec<pii_proto::TokenEntry>) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            match self
                .0
                .call(Request::TokenPut { entries }, STORE_TIMEOUT)
                .await
                .map_err(call_err)?
            {
                Response::Ack => Ok(()),
                other => Err(StoreError(format!("unexpected answer {other:?}"))),
            }
        })
    }

    fn token_get(&self, keys: Vec<String>) -> StoreFuture<'_, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let n = keys.len();
            match self
                .0
                .call(Request::TokenGet { keys }, STORE_TIMEOUT)
                .await
                .map_err(call_err)?
            {
                Response::Tokens(v) if v.len() == n => {
                    Ok(v.into_iter().map(|o| o.map(|b| b.into_vec())).collect())
                }
                other => Err(StoreError(format!("unexpected answer {other:?}"))),
            }
        })
    }

    fn token_tidy(&self, now: u64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            match self
                .0
                .call(Request::TokenTidy { now }, STORE_TIMEOUT)
                .await
                .map_err(call_err)?
            {
                Response::Tidied { deleted } => Ok(deleted),
                other => Err(StoreError(format!("unexpected answer {other:?}"))),
            }
        })
    }

    fn append_audit<'a>(&'a self, stream: &'a str, records: Vec<Vec<u8>>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let req = Request::AuditAppend {
                stream: stream.to_owned(),
                records: records
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
            };
            match self.0.call(req, STORE_TIMEOUT).await.map_err(call_err)? {
                Response::Ack => Ok(()),
                other => Err(StoreError(format!("unexpected answer {other:?}"))),
            }
        })
    }
}

impl Handler for Server {
    async fn handle(&self, request: Request, peer: Peer) -> Response {
        match request {
            Request::Ping => Response::Pong,
            Request::Status => Response::Status(self.status()),
            Request::Api(api) => {
                let store = PeerStore(&peer);
                if !self.engine.is_unsealed() {
                    // Try to load now: the host may have come back since.
                    if let Err(e) = self.engine.load(&store).await {
                        tracing::warn!(error = %e, "keyring not available");
                    }
                }
                self.engine
                    .check_fresh_if_due(&store, self.engine.now())
                    .await;
                let before = self.engine.store_version();
                let first = crate::api::handle(
                    &self.engine,
                    &self.auth,
                    &self.attestor,
                    &store,
                    api.clone(),
                )
                .await;
                // Another replica may have written a key or version this one
                // has not loaded yet: reload once and retry.
                if first.response.status == 400
                    && first.newer_keyring_may_help
                    && self.engine.load(&store).await.is_ok()
                    && self.engine.store_version() != before
                {
                    let again =
                        crate::api::handle(&self.engine, &self.auth, &self.attestor, &store, api)
                            .await;
                    return Response::Api(again.response);
                }
                Response::Api(first.response)
            }
            Request::KeyringChanged { version } => {
                if version > self.engine.store_version() || !self.engine.is_unsealed() {
                    if let Err(e) = self.engine.load(&PeerStore(&peer)).await {
                        tracing::warn!(error = %e, "reload after keyring change failed");
                        return Response::Error(ErrorCode::Unavailable);
                    }
                }
                Response::Ack
            }
            // Requests only the enclave sends. (There is no attestation
            // request: documents are API calls, `sys/attestation`.)
            _ => Response::Error(ErrorCode::BadRequest),
        }
    }
}

impl Server {
    pub fn status(&self) -> EnclaveStatus {
        EnclaveStatus {
            seal: if self.engine.is_unsealed() {
                SealState::Unsealed
            } else {
                SealState::Sealed
            },
            seal_backend: self.engine.seal_id().to_owned(),
            seal_error: self.engine.seal_error(),
            rollback_detected: self
                .engine
                .rollback_detected()
                .or_else(|| self.engine.stale()),
            anchor_error: self.engine.anchor_error(),
            keyring_version: self.engine.store_version(),
            enclave_version: env!("CARGO_PKG_VERSION").to_owned(),
            nonce_usage: self
                .engine
                .nonce_usage()
                .into_iter()
                .map(|(key, version, encryptions)| pii_proto::NonceUsage {
                    key,
                    version,
                    encryptions,
                })
                .collect(),
        }
    }

    /// Accept host connections until `stop` turns true; then close every
    /// connection (the host sees the enclave go away, as on a restart).
    pub async fn serve(
        self: Arc<Self>,
        listener: Listener,
        cfg: PeerConfig,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        // The newest host connection, used by background work (auto-rotation).
        let (latest_tx, latest_rx) = tokio::sync::watch::channel::<Option<Peer>>(None);
        let rotator = tokio::spawn(auto_rotate(self.clone(), latest_rx));
        let _stop_rotator = AbortOnDrop(rotator);
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => Some(a),
                _ = stop.wait_for(|s| *s) => None,
            };
            let Some(accepted) = accepted else {
                // Every connection closes on the same signal; wait for them.
                while conns.join_next().await.is_some() {}
                return Ok(());
            };
            let (mut io, from) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = self.clone();
            let cfg = cfg.clone();
            let mut stop = stop.clone();
            let latest_tx = latest_tx.clone();
            conns.spawn(async move {
                if let Err(e) = handshake_server(&mut io, cfg.handshake_timeout).await {
                    tracing::warn!(%from, error = %e, "handshake failed");
                    return;
                }
                tracing::info!(%from, "host connected");
                let peer = Peer::start(io, server.clone(), cfg);
                latest_tx.send_replace(Some(peer.clone()));
                if !server.engine.is_unsealed() {
                    if let Err(e) = server.engine.load(&PeerStore(&peer)).await {
                        tracing::warn!(error = %e, "initial keyring load failed; staying sealed");
                    }
                }
                // Create the audit key up front, so decrypts do not depend on a
                // keyring write later (e.g. while the keyring store is down).
                if server.engine.is_unsealed() {
                    if let Err(e) = server.engine.audit_key(&PeerStore(&peer)).await {
                        tracing::warn!(error = %e, "cannot create the audit key yet");
                    }
                }
                tokio::select! {
                    _ = peer.closed() => {}
                    _ = stop.wait_for(|s| *s) => peer.shutdown(),
                }
                tracing::info!(%from, "host disconnected");
            });
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Rotate keys whose `auto_rotate_period` elapsed, through the newest live
/// host connection (the rotation must be stored before it counts).
async fn auto_rotate(server: Arc<Server>, latest: tokio::sync::watch::Receiver<Option<Peer>>) {
    let mut tick = tokio::time::interval(AUTO_ROTATE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let peer = latest.borrow().clone();
        let Some(peer) = peer.filter(|p| !p.is_closed()) else {
            continue;
        };
        if !server.engine.is_unsealed() {
            continue;
        }
        match server
            .engine
            .rotate_due(&PeerStore(&peer), server.engine.now())
            .await
        {
            Ok(names) if !names.is_empty() => tracing::info!(?names, "auto-rotated keys"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "auto-rotation failed; will retry"),
        }
    }
}
