//! The audit log: append-only, hash-chained records signed by the enclave's
//! audit key, stored by the host.
//!
//! Decrypt and decode requests write their record *before* any plaintext is
//! returned; if the host cannot store it, the request fails (503) — fail
//! closed. Records are group-committed: whoever finds no write in flight
//! becomes the writer and sends everything queued in one `AuditAppend`, so
//! concurrent requests share one round trip and one fsync on the host.
//!
//! Each enclave run writes its own stream (a random id); record 0 is a genesis
//! record with the public key. A failed write abandons the stream (its
//! requests failed, nothing was released) and the next record starts a new
//! one, so a stored stream never has a gap the enclave knows about; gaps,
//! edits and reordering by the host are what `verifier audit` detects.

use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use pii_proto::audit::{AuditBody, AuditEvent, AuditRecord};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::transit::BlobStore;

/// An event as handlers describe it; caller fields are filled by the API layer.
pub struct Event(pub AuditEvent);

impl Event {
    fn new(kind: &str, op: &str, target: &str, reason: &str, items: usize) -> Event {
        Event(AuditEvent {
            kind: kind.into(),
            op: op.into(),
            target: target.into(),
            caller: String::new(),
            token: String::new(),
            policies: vec![],
            reason: reason.chars().take(256).collect(),
            items: items as u64,
            public_key: None,
        })
    }
    pub fn decode(op: &str, role: &str, reason: &str, items: usize) -> Event {
        Event::new("decode", op, role, reason, items)
    }
    pub fn decrypt(op: &str, key: &str, reason: &str, items: usize) -> Event {
        Event::new("decrypt", op, key, reason, items)
    }
}

type Waiter = oneshot::Sender<bool>;

struct Chain {
    stream: String,
    next_seq: u64,
    prev: [u8; 32],
    queue: Vec<(Vec<u8>, Waiter)>,
    writing: bool,
}

/// The enclave's audit log writer.
pub struct AuditLog {
    chain: Mutex<Option<Chain>>,
}

impl Default for AuditLog {
    fn default() -> Self {
        AuditLog {
            chain: Mutex::new(None),
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn record(key: &Ed25519KeyPair, chain: &mut Chain, event: AuditEvent) -> Vec<u8> {
    let body = AuditBody {
        stream: chain.stream.clone(),
        seq: chain.next_seq,
        time: now(),
        prev: hex::encode(chain.prev),
        event,
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body.signed_bytes());
    let sig = key.sign(digest.as_ref());
    chain.prev.copy_from_slice(digest.as_ref());
    chain.next_seq += 1;
    let rec = AuditRecord {
        body,
        hash: hex::encode(digest.as_ref()),
        sig: hex::encode(sig.as_ref()),
    };
    serde_json::to_vec(&rec).unwrap_or_default()
}

fn new_chain(key: &Ed25519KeyPair) -> Result<(Chain, Vec<u8>)> {
    let mut id = [0u8; 16];
    crate::keyring::random(&mut id)?;
    let mut chain = Chain {
        stream: hex::encode(id),
        next_seq: 0,
        prev: [0u8; 32],
        queue: vec![],
        writing: false,
    };
    let genesis = AuditEvent {
        kind: "genesis".into(),
        op: String::new(),
        target: String::new(),
        caller: format!("pii-enclave {}", env!("CARGO_PKG_VERSION")),
        token: String::new(),
        policies: vec![],
        reason: String::new(),
        items: 0,
        public_key: Some(hex::encode(key.public_key().as_ref())),
    };
    let g = record(key, &mut chain, genesis);
    Ok((chain, g))
}

impl AuditLog {
    /// Append `event` and wait until the host has stored it.
    pub async fn append(
        &self,
        store: &dyn BlobStore,
        key: &Arc<Ed25519KeyPair>,
        event: AuditEvent,
    ) -> Result<()> {
        let unavailable = || Error::new(503, "audit log unavailable");
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut g = self.chain.lock().map_err(|_| unavailable())?;
            if g.is_none() {
                let (c, genesis) = new_chain(key)?;
                let mut c = c;
                // The genesis record has no waiter: it rides with the first event.
                let (gtx, _grx) = oneshot::channel();
                c.queue.push((genesis, gtx));
                *g = Some(c);
            }
            let c = g.as_mut().ok_or_else(unavailable)?;
            let line = record(key, c, event);
            c.queue.push((line, tx));
            if c.writing {
                false
            } else {
                c.writing = true;
                true
            }
        };
        if lead {
            self.write_all(store).await;
        }
        match rx.await {
            Ok(true) => Ok(()),
            _ => Err(unavailable()),
        }
    }

    /// Writer loop: send queued records until the queue is empty.
    async fn write_all(&self, store: &dyn BlobStore) {
        loop {
            let (stream, batch) = {
                let Ok(mut g) = self.chain.lock() else { return };
                let Some(c) = g.as_mut() else { return };
                if c.queue.is_empty() {
                    c.writing = false;
                    return;
                }
                (c.stream.clone(), std::mem::take(&mut c.queue))
            };
            let (lines, waiters): (Vec<Vec<u8>>, Vec<Waiter>) = batch.into_iter().unzip();
            let ok = match store.append_audit(&stream, lines).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, %stream, "audit write failed; failing the requests and starting a new stream");
                    false
                }
            };
            if !ok {
                // Abandon the stream: queued records built on the lost ones fail too.
                if let Ok(mut g) = self.chain.lock() {
                    if let Some(c) = g.take() {
                        for (_, w) in c.queue {
                            let _ = w.send(false);
                        }
                    }
                }
            }
            for w in waiters {
                let _ = w.send(ok);
            }
            if !ok {
                return;
            }
        }
    }
}

/// Parse a stored PKCS#8 audit key.
pub fn load_key(pkcs8: &[u8]) -> Result<Ed25519KeyPair> {
    Ed25519KeyPair::from_pkcs8(pkcs8)
        .map_err(|_| Error::internal("audit key in keyring is invalid"))
}

/// A fresh PKCS#8 Ed25519 key.
pub fn generate_key() -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| Error::internal("audit key generation failed"))?;
    Ok(zeroize::Zeroizing::new(doc.as_ref().to_vec()))
}
