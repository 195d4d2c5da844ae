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
//! record with the public key and **links**: the heads of the streams before
//! it (the stream this run abandoned after a failed write, and, for a run's
//! first stream, the checkpoints the rollback anchor held when it began). A
//! failed write abandons the stream (its requests failed, nothing was
//! released) and the next record starts a new one linked to the last record
//! the host acknowledged.
//!
//! With an anchor (the Vault and KMS seals), the enclave publishes signed
//! checkpoints (stream, seq, hash and the record's signature) outside the
//! host: before the first answer of every stream, and then before every
//! decrypt/decode answer (`[audit] checkpoint_secs = 0`, the default) or at
//! most every `checkpoint_secs` seconds. Every answer that wrote a record also
//! carries that record's checkpoint (the `X-Pii-Audit-Receipt` header). So the
//! host cannot drop an acknowledged record, a stream's tail or a whole stream
//! without a checkpoint, a link or a receipt pointing at what is missing;
//! `verifier audit` names each.

#[cfg(test)]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use pii_engine::clock::{Clock, SystemClock};
use pii_proto::audit::{
    AuditBody, AuditEvent, AuditRecord, Checkpoint, CheckpointSet, SignedCheckpoint,
};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::store::BlobStore;
use pii_custody::seal::Anchor;

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
            links: vec![],
        })
    }
    pub fn decode(op: &str, role: &str, reason: &str, items: usize) -> Event {
        Event::new("decode", op, role, reason, items)
    }
    pub fn decrypt(op: &str, key: &str, reason: &str, items: usize) -> Event {
        Event::new("decrypt", op, key, reason, items)
    }
    /// An encode on a low-entropy role (an encoder could enumerate it).
    pub fn encode(op: &str, role: &str, reason: &str, items: usize) -> Event {
        Event::new("encode", op, role, reason, items)
    }
}

/// A request's wait for its record: the receipt, or why it failed.
type Waiter = oneshot::Sender<std::result::Result<SignedCheckpoint, &'static str>>;

const STORE_FAILED: &str = "audit log unavailable";
const ANCHOR_FAILED: &str = "audit checkpoint could not be published";

struct Queued {
    line: Vec<u8>,
    point: SignedCheckpoint,
    /// `None` for the genesis record (it rides with the first event).
    waiter: Option<Waiter>,
}

struct Chain {
    stream: String,
    next_seq: u64,
    prev: [u8; 32],
    queue: Vec<Queued>,
    writing: bool,
    /// What the genesis record linked to.
    links: Vec<Checkpoint>,
    /// The newest record the host acknowledged.
    acked: Option<SignedCheckpoint>,
    /// Whether the anchor holds a checkpoint of this stream yet.
    anchored: bool,
}

/// The enclave's audit log writer.
pub struct AuditLog {
    chain: Mutex<Option<Chain>>,
    /// Links for the next stream: heads of streams this run left.
    links: Mutex<Vec<Checkpoint>>,
    /// 0: checkpoint before every answer; N: at most every N seconds.
    checkpoint_secs: AtomicU64,
    last_checkpoint: AtomicU64,
    /// Record times and checkpoint intervals.
    clock: Arc<dyn Clock>,
}

impl Default for AuditLog {
    fn default() -> Self {
        AuditLog::new(Arc::new(SystemClock))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn record(
    key: &Ed25519KeyPair,
    chain: &mut Chain,
    event: AuditEvent,
    time: u64,
) -> (Vec<u8>, SignedCheckpoint) {
    let body = AuditBody {
        stream: chain.stream.clone(),
        seq: chain.next_seq,
        time,
        prev: hex::encode(chain.prev),
        event,
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body.signed_bytes());
    let sig = key.sign(digest.as_ref());
    chain.prev.copy_from_slice(digest.as_ref());
    chain.next_seq += 1;
    let point = SignedCheckpoint {
        point: Checkpoint {
            stream: body.stream.clone(),
            seq: body.seq,
            hash: hex::encode(digest.as_ref()),
        },
        time: body.time,
        sig: hex::encode(sig.as_ref()),
        links: vec![],
    };
    let rec = AuditRecord {
        body,
        hash: point.point.hash.clone(),
        sig: point.sig.clone(),
    };
    (serde_json::to_vec(&rec).unwrap_or_default(), point)
}

fn new_chain(key: &Ed25519KeyPair, links: Vec<Checkpoint>, time: u64) -> Result<Chain> {
    let mut id = [0u8; 16];
    pii_engine::keyring::random(&mut id)?;
    let mut chain = Chain {
        stream: hex::encode(id),
        next_seq: 0,
        prev: [0u8; 32],
        queue: vec![],
        writing: false,
        links: links.clone(),
        acked: None,
        anchored: false,
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
        links,
    };
    let (line, point) = record(key, &mut chain, genesis, time);
    chain.queue.push(Queued {
        line,
        point,
        waiter: None,
    });
    Ok(chain)
}

fn unavailable() -> Error {
    Error::new(503, STORE_FAILED)
}

/// Put `cp` into the anchor's checkpoint set (compare-and-swap, retried),
/// with `links`, what its stream's genesis linked to.
async fn publish(anchor: &dyn Anchor, cp: &SignedCheckpoint, links: &[Checkpoint]) -> Result<()> {
    let cp = SignedCheckpoint {
        links: links.to_vec(),
        ..cp.clone()
    };
    let failed = |e: String| {
        tracing::error!(error = %e, anchor = %anchor.describe(), "audit checkpoint not published");
        Error::new(503, ANCHOR_FAILED)
    };
    for _ in 0..8 {
        let (version, bytes) = anchor
            .read_checkpoints()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut set = match bytes {
            Some(b) => CheckpointSet::parse(&b).map_err(|e| failed(e.to_string()))?,
            None => CheckpointSet::default(),
        };
        if !set.merge(cp.clone()).map_err(|e| failed(e.to_string()))? {
            return Ok(());
        }
        if anchor
            .write_checkpoints(version, set.to_json())
            .await
            .map_err(|e| failed(e.to_string()))?
        {
            return Ok(());
        }
    }
    Err(failed("the checkpoint record kept changing".into()))
}

impl AuditLog {
    /// A log that stamps records with `clock`'s time.
    pub fn new(clock: Arc<dyn Clock>) -> AuditLog {
        AuditLog {
            chain: Mutex::new(None),
            links: Mutex::new(vec![]),
            checkpoint_secs: AtomicU64::new(0),
            last_checkpoint: AtomicU64::new(0),
            clock,
        }
    }

    fn unix(&self) -> u64 {
        u64::try_from(self.clock.unix()).unwrap_or(0)
    }

    /// 0: publish a checkpoint before every answer; N: at most every N s.
    pub fn set_checkpoint_secs(&self, secs: u64) {
        self.checkpoint_secs.store(secs, Ordering::Relaxed);
    }

    /// The anchor's checkpoints, read whenever a stream starts: the new
    /// stream links to every one of them (and to what this run left).
    async fn anchor_links(&self, anchor: &dyn Anchor) -> Result<Vec<Checkpoint>> {
        let (_, bytes) = anchor.read_checkpoints().await.map_err(|e| {
            tracing::error!(error = %e, "audit anchor unreachable; refusing to start a stream");
            Error::new(503, "audit anchor unreachable")
        })?;
        let set = match bytes {
            Some(b) => CheckpointSet::parse(&b).map_err(|e| {
                tracing::error!(error = %e, "the anchor's audit checkpoints are malformed");
                unavailable()
            })?,
            None => CheckpointSet::default(),
        };
        Ok(set.checkpoints.into_iter().map(|c| c.point).collect())
    }

    /// Append `event` and wait until the host has stored it (and, with an
    /// anchor, a checkpoint covers it as configured). Returns the record's
    /// signed checkpoint (the receipt).
    pub async fn append(
        &self,
        store: &dyn BlobStore,
        anchor: Option<&dyn Anchor>,
        key: &Arc<Ed25519KeyPair>,
        event: AuditEvent,
    ) -> Result<SignedCheckpoint> {
        let mut fresh_links = vec![];
        if let Some(a) = anchor {
            if lock(&self.chain).is_none() {
                fresh_links = self.anchor_links(a).await?;
            }
        }
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut g = lock(&self.chain);
            if g.is_none() {
                let mut links = vec![];
                for l in std::mem::take(&mut *lock(&self.links))
                    .into_iter()
                    .chain(fresh_links)
                {
                    pii_proto::audit::add_link(&mut links, l);
                }
                *g = Some(new_chain(key, links, self.unix())?);
            }
            let c = g.as_mut().ok_or_else(unavailable)?;
            let (line, point) = record(key, c, event, self.unix());
            c.queue.push(Queued {
                line,
                point,
                waiter: Some(tx),
            });
            !std::mem::replace(&mut c.writing, true)
        };
        if lead {
            self.write_all(store, anchor).await;
        }
        match rx.await {
            Ok(Ok(receipt)) => Ok(receipt),
            Ok(Err(why)) => Err(Error::new(503, why)),
            Err(_) => Err(unavailable()),
        }
    }

    /// Leave the current stream after a failure: its queued records fail,
    /// and the next stream links to the last record the host acknowledged
    /// (or, if none was, to what this stream linked to).
    fn abandon(&self, why: &'static str) {
        let Some(c) = lock(&self.chain).take() else {
            return;
        };
        fail(c.queue, why);
        let mut links = lock(&self.links);
        let carried = match c.acked {
            Some(a) => vec![a.point],
            None => c.links,
        };
        for l in carried {
            pii_proto::audit::add_link(&mut links, l);
        }
    }

    /// Writer loop: send queued records until the queue is empty.
    async fn write_all(&self, store: &dyn BlobStore, anchor: Option<&dyn Anchor>) {
        loop {
            let (stream, batch, first, links) = {
                let mut g = lock(&self.chain);
                let Some(c) = g.as_mut() else { return };
                if c.queue.is_empty() {
                    c.writing = false;
                    return;
                }
                (
                    c.stream.clone(),
                    std::mem::take(&mut c.queue),
                    !c.anchored,
                    c.links.clone(),
                )
            };
            let lines: Vec<Vec<u8>> = batch.iter().map(|q| q.line.clone()).collect();
            let Some(head) = batch.last().map(|q| q.point.clone()) else {
                continue;
            };
            if let Err(e) = store.append_audit(&stream, lines).await {
                tracing::error!(error = %e, %stream, "audit write failed; failing the requests and starting a new stream");
                fail(batch, STORE_FAILED);
                self.abandon(STORE_FAILED);
                return;
            }
            if let Some(c) = lock(&self.chain).as_mut() {
                c.acked = Some(head.clone());
            }
            // Before anyone sees an answer: a new stream's first checkpoint,
            // and every batch's when checkpoint_secs is 0.
            let every = self.checkpoint_secs.load(Ordering::Relaxed);
            let t = self.unix();
            let due = t
                >= self
                    .last_checkpoint
                    .load(Ordering::Relaxed)
                    .saturating_add(every);
            if let Some(a) = anchor {
                if first || every == 0 {
                    if publish(a, &head, &links).await.is_err() {
                        fail(batch, ANCHOR_FAILED);
                        self.abandon(ANCHOR_FAILED);
                        return;
                    }
                    self.published(t);
                } else if due {
                    succeed(batch);
                    if publish(a, &head, &links).await.is_ok() {
                        self.published(t);
                    }
                    continue;
                }
            }
            succeed(batch);
        }
    }

    fn published(&self, t: u64) {
        self.last_checkpoint.store(t, Ordering::Relaxed);
        if let Some(c) = lock(&self.chain).as_mut() {
            c.anchored = true;
        }
    }
}

fn succeed(batch: Vec<Queued>) {
    for q in batch {
        if let Some(w) = q.waiter {
            let _ = w.send(Ok(q.point));
        }
    }
}

fn fail(batch: Vec<Queued>, why: &'static str) {
    for q in batch {
        if let Some(w) = q.waiter {
            let _ = w.send(Err(why));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use pii_custody::seal::{Advance, Head, SealError, SealFuture};

    /// An anchor in memory that can be switched off.
    #[derive(Default)]
    struct FakeAnchor {
        rec: Mutex<(u64, Option<Vec<u8>>)>,
        down: AtomicBool,
    }

    impl FakeAnchor {
        fn set(&self) -> CheckpointSet {
            lock(&self.rec)
                .1
                .as_ref()
                .map(|b| CheckpointSet::parse(b).unwrap())
                .unwrap_or_default()
        }
        fn check(&self) -> std::result::Result<(), SealError> {
            if self.down.load(Ordering::Relaxed) {
                Err(SealError::Unreachable("down".into()))
            } else {
                Ok(())
            }
        }
    }

    impl Anchor for FakeAnchor {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn read(&self) -> SealFuture<'_, Option<Head>> {
            Box::pin(async { Ok(None) })
        }
        fn advance(&self, _: Option<Head>, _: Head) -> SealFuture<'_, Advance> {
            Box::pin(async { Ok(Advance::Done) })
        }
        fn read_checkpoints(&self) -> SealFuture<'_, (u64, Option<Vec<u8>>)> {
            Box::pin(async move {
                self.check()?;
                Ok(lock(&self.rec).clone())
            })
        }
        fn write_checkpoints(&self, version: u64, bytes: Vec<u8>) -> SealFuture<'_, bool> {
            Box::pin(async move {
                self.check()?;
                let mut g = lock(&self.rec);
                if g.0 != version {
                    return Ok(false);
                }
                *g = (version + 1, Some(bytes));
                Ok(true)
            })
        }
    }

    fn key() -> Arc<Ed25519KeyPair> {
        Arc::new(pii_engine::audit_key::load(&pii_engine::audit_key::generate().unwrap()).unwrap())
    }

    fn event() -> AuditEvent {
        Event::decrypt("transit/decrypt", "pii", "", 1).0
    }

    #[tokio::test]
    async fn strict_checkpoints_before_every_answer_and_fail_closed() {
        let (log, store, anchor, k) = (
            AuditLog::default(),
            MemoryStore::default(),
            FakeAnchor::default(),
            key(),
        );
        let r1 = log
            .append(&store, Some(&anchor), &k, event())
            .await
            .unwrap();
        let r2 = log
            .append(&store, Some(&anchor), &k, event())
            .await
            .unwrap();
        assert_eq!(
            (r1.point.seq, r2.point.seq),
            (1, 2),
            "after the genesis record"
        );
        assert_eq!(anchor.set().checkpoints, vec![r2.clone()]);
        anchor.down.store(true, Ordering::Relaxed);
        let e = log
            .append(&store, Some(&anchor), &k, event())
            .await
            .unwrap_err();
        assert_eq!(e.message(), ANCHOR_FAILED);
        // The next stream links to the last record the host stored.
        anchor.down.store(false, Ordering::Relaxed);
        let r4 = log
            .append(&store, Some(&anchor), &k, event())
            .await
            .unwrap();
        assert_ne!(r4.point.stream, r1.point.stream);
        let genesis: AuditRecord = serde_json::from_slice(
            &lock(&store.1)
                .iter()
                .find(|(s, _)| *s == r4.point.stream)
                .unwrap()
                .1,
        )
        .unwrap();
        // To the last record the host acknowledged (the failed answer's,
        // stored but never anchored; past what the anchor holds, seq 2): one
        // link per stream, the furthest.
        let links = &genesis.body.event.links;
        assert_eq!(links.len(), 1, "{links:?}");
        assert_eq!(
            (links[0].stream.as_str(), links[0].seq),
            (r1.point.stream.as_str(), 3)
        );
        // The new stream's link covers the old one's entry: one entry left.
        let set = anchor.set().checkpoints;
        assert_eq!(set.len(), 1, "{set:?}");
        assert_eq!(set[0].point.stream, r4.point.stream);
    }

    #[tokio::test]
    async fn periodic_checkpoints_keep_serving_while_the_anchor_is_away() {
        let (log, store, anchor, k) = (
            AuditLog::default(),
            MemoryStore::default(),
            FakeAnchor::default(),
            key(),
        );
        log.set_checkpoint_secs(3600);
        let first = log
            .append(&store, Some(&anchor), &k, event())
            .await
            .unwrap();
        assert_eq!(
            anchor.set().checkpoints,
            vec![first],
            "a stream's first always"
        );
        anchor.down.store(true, Ordering::Relaxed);
        for _ in 0..3 {
            log.append(&store, Some(&anchor), &k, event())
                .await
                .unwrap();
        }
        assert_eq!(lock(&store.1).len(), 5);
        // A new run starts with the anchor away: no stream without its links.
        let fresh = AuditLog::default();
        let e = fresh
            .append(&store, Some(&anchor), &k, event())
            .await
            .unwrap_err();
        assert_eq!(e.message(), "audit anchor unreachable");
        anchor.down.store(false, Ordering::Relaxed);
        let r = fresh
            .append(&store, Some(&anchor), &k, event())
            .await
            .unwrap();
        let line = lock(&store.1)
            .iter()
            .find(|(s, _)| *s == r.point.stream)
            .unwrap()
            .1
            .clone();
        let genesis: AuditRecord = serde_json::from_slice(&line).unwrap();
        assert_eq!(genesis.body.event.links.len(), 1, "the anchor's checkpoint");
    }
}
