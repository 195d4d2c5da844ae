//! A pool of multiplexed connections to the enclave.
//!
//! Each slot keeps one connection alive, reconnecting with capped exponential
//! backoff. Calls go round-robin over live connections; with none live they
//! fail at once (`Unavailable`) rather than queue, and calls in flight on a
//! connection that drops fail at once too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pii_proto::{ErrorCode, Request, Response};
use pii_transport::{connect, handshake_client, Addr, CallError, Handler, Peer, PeerConfig};

use crate::metrics::{ErrorLabels, Metrics};
use crate::store::{KeyringStore, Put};

/// Answers the enclave's own requests: keyring load and store.
pub struct HostHandler {
    pub store: Arc<dyn KeyringStore>,
    pub audit: Arc<crate::audit::AuditStore>,
    pub tokens: Arc<dyn crate::tokens::TokenStore>,
    pub metrics: Arc<Metrics>,
}

impl Handler for HostHandler {
    async fn handle(&self, request: Request, _peer: Peer) -> Response {
        match request {
            Request::Ping => Response::Pong,
            Request::KeyringLoad => match self.store.latest().await {
                Ok(b) => Response::Keyring(b),
                Err(e) => {
                    tracing::error!(error = %e, "keyring load failed");
                    Response::Error(ErrorCode::Unavailable)
                }
            },
            Request::KeyringStore { expected, blob } => {
                let label = |k: &str| ErrorLabels { kind: k.into() };
                match self.store.put(expected, blob.bytes).await {
                    Ok(Put::Stored(version)) => {
                        self.metrics
                            .keyring_writes
                            .get_or_create(&label("stored"))
                            .inc();
                        tracing::info!(version, "sealed keyring stored");
                        Response::Stored { version }
                    }
                    Ok(Put::Conflict(b)) => {
                        self.metrics
                            .keyring_writes
                            .get_or_create(&label("conflict"))
                            .inc();
                        tracing::info!(expected, newest = b.version, "keyring write conflict");
                        Response::Conflict(b)
                    }
                    Err(e) => {
                        self.metrics
                            .keyring_writes
                            .get_or_create(&label("error"))
                            .inc();
                        tracing::error!(error = %e, "keyring store failed");
                        Response::Error(ErrorCode::Unavailable)
                    }
                }
            }
            Request::AuditAppend { stream, records } => {
                let n = records.len();
                let records = records.into_iter().map(|r| r.into_vec()).collect();
                match self.audit.append(&stream, records).await {
                    Ok(()) => {
                        self.metrics.audit_records.inc_by(n as u64);
                        Response::Ack
                    }
                    Err(e) => {
                        tracing::error!(error = %e, %stream, "audit append failed");
                        Response::Error(ErrorCode::Unavailable)
                    }
                }
            }
            Request::TokenPut { entries } => match self.tokens.put(entries).await {
                Ok(()) => Response::Ack,
                Err(e) => {
                    tracing::error!(error = %e, "token store write failed");
                    Response::Error(ErrorCode::Unavailable)
                }
            },
            Request::TokenGet { keys } => match self.tokens.get(keys).await {
                Ok(v) => Response::Tokens(
                    v.into_iter()
                        .map(|o| o.map(serde_bytes::ByteBuf::from))
                        .collect(),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "token store read failed");
                    Response::Error(ErrorCode::Unavailable)
                }
            },
            Request::TokenTidy { now } => match self.tokens.tidy(now).await {
                Ok(deleted) => Response::Tidied { deleted },
                Err(e) => {
                    tracing::error!(error = %e, "token store tidy failed");
                    Response::Error(ErrorCode::Unavailable)
                }
            },
            // Requests only the host sends.
            _ => Response::Error(ErrorCode::BadRequest),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("enclave unavailable")]
    Unavailable,
    #[error("enclave call timed out")]
    Timeout,
    #[error("request too large for the enclave link")]
    TooLarge,
}

/// Connection pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub addr: Addr,
    pub connections: usize,
    pub peer: PeerConfig,
}

pub struct Pool {
    slots: Vec<RwLock<Option<Peer>>>,
    next: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("live", &self.live()).finish()
    }
}

impl Pool {
    /// Start the pool's reconnect loops.
    pub fn start(cfg: PoolConfig, handler: Arc<HostHandler>, metrics: Arc<Metrics>) -> Arc<Pool> {
        let n = cfg.connections.max(1);
        let pool = Arc::new(Pool {
            slots: (0..n).map(|_| RwLock::new(None)).collect(),
            next: AtomicUsize::new(0),
            metrics,
        });
        for i in 0..n {
            let pool = pool.clone();
            let cfg = cfg.clone();
            let handler = handler.clone();
            tokio::spawn(async move { pool.run_slot(i, cfg, handler).await });
        }
        pool
    }

    async fn run_slot(self: Arc<Self>, i: usize, cfg: PoolConfig, handler: Arc<HostHandler>) {
        let mut backoff = Duration::from_millis(25);
        loop {
            match connect(&cfg.addr).await {
                Ok(mut io) => match handshake_client(&mut io, cfg.peer.handshake_timeout).await {
                    Ok(v) => {
                        backoff = Duration::from_millis(25);
                        let mut pc = cfg.peer.clone();
                        pc.name = format!("enclave#{i}");
                        let peer = Peer::start(io, handler.clone(), pc);
                        tracing::info!(slot = i, version = v, addr = %cfg.addr, "connected to enclave");
                        self.set(i, Some(peer.clone()));
                        peer.closed().await;
                        self.set(i, None);
                        tracing::warn!(slot = i, "enclave connection lost; reconnecting");
                    }
                    Err(e) => tracing::warn!(slot = i, error = %e, "enclave handshake failed"),
                },
                Err(e) => {
                    if backoff >= Duration::from_secs(1) {
                        tracing::warn!(slot = i, addr = %cfg.addr, error = %e, "cannot reach enclave");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn set(&self, i: usize, p: Option<Peer>) {
        if let Ok(mut s) = self.slots[i].write() {
            *s = p;
        }
        self.metrics.enclave_connections.set(self.live() as i64);
    }

    /// Live connections.
    pub fn live(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.read()
                    .map(|p| p.as_ref().is_some_and(|p| !p.is_closed()))
                    .unwrap_or(false)
            })
            .count()
    }

    /// A live connection, round-robin.
    pub fn peer(&self) -> Option<Peer> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            if let Ok(s) = self.slots[(start + k) % n].read() {
                if let Some(p) = s.as_ref() {
                    if !p.is_closed() {
                        return Some(p.clone());
                    }
                }
            }
        }
        None
    }

    pub async fn call(&self, req: Request, timeout: Duration) -> Result<Response, PoolError> {
        let Some(peer) = self.peer() else {
            self.count_error("no_connection");
            return Err(PoolError::Unavailable);
        };
        match peer.call(req, timeout).await {
            Ok(r) => Ok(r),
            Err(CallError::Closed) => {
                self.count_error("closed");
                Err(PoolError::Unavailable)
            }
            Err(CallError::Timeout(_)) => {
                self.count_error("timeout");
                Err(PoolError::Timeout)
            }
            Err(CallError::Encode(_)) => {
                self.count_error("too_large");
                Err(PoolError::TooLarge)
            }
            Err(_) => {
                self.count_error("other");
                Err(PoolError::Unavailable)
            }
        }
    }

    fn count_error(&self, kind: &str) {
        self.metrics
            .enclave_errors
            .get_or_create(&ErrorLabels { kind: kind.into() })
            .inc();
    }

    /// Wait until at least one connection is live (or the timeout passes).
    pub async fn wait_live(&self, timeout: Duration) -> bool {
        let t0 = tokio::time::Instant::now();
        while self.live() == 0 {
            if t0.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// Tell the enclave when another replica stored a newer keyring.
pub async fn watch_store(pool: Arc<Pool>, store: Arc<dyn KeyringStore>, every: Duration) {
    let mut last = 0u64;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(v) = store.latest_version().await else {
            continue;
        };
        if v > last {
            match pool
                .call(
                    Request::KeyringChanged { version: v },
                    Duration::from_secs(10),
                )
                .await
            {
                Ok(Response::Ack) => last = v,
                Ok(other) => tracing::debug!(?other, "enclave did not take the keyring change yet"),
                Err(e) => tracing::debug!(error = %e, "cannot notify enclave of keyring change"),
            }
        }
    }
}
