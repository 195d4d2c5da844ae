//! Signals out: a bounded queue in front of the Kafka producer, with the
//! disk spool behind it.
//!
//! Every batch handed to the sink is, when its acknowledgement resolves,
//! either acknowledged by the broker (acks=all, idempotent producer) or
//! fsynced to the spool. While the spool holds anything, new batches are
//! appended to it too, so replay keeps the original order; a drain loop
//! sends the oldest segment whenever the broker answers again and deletes it
//! only when all of it was delivered.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::spool::{Record, Spool, SpoolError};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the signal sink has stopped")]
    Stopped,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Where signals go (Kafka in production: [`KafkaTransport`]).
pub trait Transport: Send + Sync + 'static {
    fn send(
        &self,
        key: &str,
        value: &str,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Called when sends keep failing: start over with a fresh connection.
    fn reset(&self) {}
}

/// A `--kafka-option` that is not `KEY=VALUE`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?}: KEY=VALUE")]
pub struct KvError(String);

/// `KEY=VALUE` for `--kafka-option`.
pub fn parse_kv(s: &str) -> Result<(String, String), KvError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(KvError(s.to_owned())),
    }
}

/// A Kafka client configuration: the brokers and the operator's extra
/// librdkafka settings (`--kafka-option security.protocol=SASL_PLAINTEXT`, …).
pub fn client_config(brokers: &str, options: &[(String, String)]) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in options {
        c.set(k, v);
    }
    c
}

/// How long a signal may wait for the broker's acknowledgement before it
/// counts as not delivered (and is spooled, or stays spooled).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The producer for `fraud-signals`: idempotent, acks from all in-sync replicas.
pub struct KafkaTransport {
    producer: Mutex<Arc<rdkafka::producer::FutureProducer>>,
    brokers: String,
    options: Vec<(String, String)>,
    topic: String,
}

impl KafkaTransport {
    pub fn new(
        brokers: &str,
        options: &[(String, String)],
        topic: &str,
    ) -> Result<Self, TransportError> {
        Ok(KafkaTransport {
            producer: Mutex::new(Arc::new(Self::producer(brokers, options)?)),
            brokers: brokers.to_owned(),
            options: options.to_vec(),
            topic: topic.to_owned(),
        })
    }

    fn producer(
        brokers: &str,
        options: &[(String, String)],
    ) -> Result<rdkafka::producer::FutureProducer, TransportError> {
        client_config(brokers, options)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // A send that cannot be delivered in time fails and is spooled.
            .set(
                "message.timeout.ms",
                MESSAGE_TIMEOUT.as_millis().to_string(),
            )
            .set("linger.ms", "5")
            .create()
            .map_err(|e| TransportError(e.to_string()))
    }
}

impl Transport for KafkaTransport {
    async fn send(&self, key: &str, value: &str) -> Result<(), TransportError> {
        let producer = match self.producer.lock() {
            Ok(p) => p.clone(),
            Err(_) => return Err(TransportError("producer lock poisoned".into())),
        };
        let rec = rdkafka::producer::FutureRecord::to(&self.topic)
            .key(key)
            .payload(value);
        producer
            .send(rec, rdkafka::util::Timeout::After(MESSAGE_TIMEOUT))
            .await
            .map(|_| ())
            .map_err(|(e, _)| TransportError(e.to_string()))
    }

    /// A broker that lost its state (a restart without storage, a failover
    /// to a fresh cluster) no longer knows the idempotent producer's id, and
    /// the old producer can stay wedged: a fresh one gets a new id.
    ///
    /// The old producer is destroyed on a blocking thread: librdkafka's
    /// destroy purges, flushes and joins its threads, which can take seconds
    /// against a broker that does not answer, and must not hold up the
    /// runtime's workers (the sink's own task among them).
    fn reset(&self) {
        match Self::producer(&self.brokers, &self.options) {
            Ok(p) => {
                let old = match self.producer.lock() {
                    Ok(mut cur) => Some(std::mem::replace(&mut *cur, Arc::new(p))),
                    Err(_) => None,
                };
                if let Some(old) = old {
                    tokio::task::spawn_blocking(move || drop(old));
                }
            }
            Err(e) => tracing::warn!(error = %e, "recreating the signal producer"),
        }
    }
}

#[derive(Debug, Default)]
pub struct SinkStats {
    pub delivered: AtomicU64,
    pub spooled: AtomicU64,
    pub replayed: AtomicU64,
    pub send_failures: AtomicU64,
    pub spool_bytes: AtomicU64,
}

type Ack = oneshot::Sender<Result<(), SinkError>>;

#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<(Vec<Record>, Ack)>,
    spool: Arc<Mutex<Spool>>,
    pub stats: Arc<SinkStats>,
}

impl Sink {
    /// Starts the sink task. `queue` bounds the batches waiting for the producer.
    pub fn start<T: Transport>(
        transport: T,
        spool_dir: &Path,
        spool_cap: u64,
        queue: usize,
    ) -> Result<Self, SinkError> {
        let spool = Arc::new(Mutex::new(Spool::open(spool_dir, spool_cap)?));
        let stats = Arc::new(SinkStats::default());
        let (tx, rx) = mpsc::channel(queue.max(1));
        tokio::spawn(run(Arc::new(transport), rx, spool.clone(), stats.clone()));
        Ok(Sink { tx, spool, stats })
    }

    /// Hands a batch over and waits until it is delivered or spooled.
    pub async fn submit(&self, records: Vec<Record>) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        self.tx
            .send((records, ack))
            .await
            .map_err(|_| SinkError::Stopped)?;
        done.await.map_err(|_| SinkError::Stopped)?
    }

    /// Hands a batch over and waits until it is durable (delivered or
    /// spooled), without ever waiting for room: when the queue is full the
    /// batch goes straight to the spool.
    pub async fn offer(&self, records: Vec<Record>) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        match self.tx.try_send((records, ack)) {
            Ok(()) => done.await.map_err(|_| SinkError::Stopped)?,
            Err(mpsc::error::TrySendError::Full((records, _))) => {
                append(&self.spool, &self.stats, &records)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SinkError::Stopped),
        }
    }

    pub fn spool_is_empty(&self) -> bool {
        self.spool.lock().map(|s| s.is_empty()).unwrap_or(false)
    }
}

fn append(spool: &Mutex<Spool>, stats: &SinkStats, records: &[Record]) -> Result<(), SinkError> {
    let mut s = spool.lock().map_err(|_| SinkError::Stopped)?;
    s.append(records)?;
    stats
        .spooled
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    stats.spool_bytes.store(s.bytes(), Ordering::Relaxed);
    Ok(())
}

/// Sends records in order (concurrently in flight: the idempotent producer
/// keeps their order); returns the records that failed.
async fn deliver<T: Transport>(t: &T, records: &[Record], stats: &SinkStats) -> Vec<Record> {
    let sends = records.iter().map(|r| t.send(&r.key, &r.value));
    let results = futures_util::future::join_all(sends).await;
    let mut failed = Vec::new();
    for (r, res) in records.iter().zip(results) {
        match res {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.send_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "signal not delivered; spooled");
                failed.push(r.clone());
            }
        }
    }
    failed
}

async fn run<T: Transport>(
    t: Arc<T>,
    mut rx: mpsc::Receiver<(Vec<Record>, Ack)>,
    spool: Arc<Mutex<Spool>>,
    stats: Arc<SinkStats>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some((records, ack)) = msg else { return };
                let spooling = spool.lock().map(|s| !s.is_empty()).unwrap_or(true);
                let result = if spooling {
                    append(&spool, &stats, &records)
                } else {
                    let failed = deliver(&*t, &records, &stats).await;
                    if failed.is_empty() { Ok(()) } else { append(&spool, &stats, &failed) }
                };
                if let Err(e) = &result {
                    tracing::error!(error = %e, records = records.len(), "signals neither delivered nor spooled; the sender is told");
                }
                let _ = ack.send(result);
            }
            _ = tick.tick() => drain(&*t, &spool, &stats).await,
        }
    }
}

/// How long one spool segment's replay may take before it is retried with a
/// new producer: the message timeout and a margin for the acknowledgements.
const DRAIN_DEADLINE: Duration = Duration::from_secs(MESSAGE_TIMEOUT.as_secs() + 5);

/// Sends the spool's segments oldest first while the broker takes them.
async fn drain<T: Transport>(t: &T, spool: &Mutex<Spool>, stats: &SinkStats) {
    loop {
        let oldest = match spool.lock() {
            Ok(mut s) => s.oldest(),
            Err(_) => return,
        };
        let (n, records) = match oldest {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "reading the signal spool");
                return;
            }
        };
        tracing::debug!(
            segment = n,
            records = records.len(),
            "replaying spooled signals"
        );
        // A producer wedged by a broker that lost its state may never
        // answer: a bounded wait, then the segment stays for the next tick.
        let failed = match tokio::time::timeout(DRAIN_DEADLINE, deliver(t, &records, stats)).await {
            Ok(failed) => failed,
            Err(_) => {
                tracing::warn!(
                    records = records.len(),
                    "replaying the signal spool: no answer in time; retrying with a new producer"
                );
                records.clone()
            }
        };
        if !failed.is_empty() {
            // The whole segment stays and is sent again later: at least once.
            t.reset();
            return;
        }
        tracing::info!(records = records.len(), "replayed spooled signals");
        stats
            .replayed
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        if let Ok(mut s) = spool.lock() {
            if let Err(e) = s.remove(n) {
                tracing::error!(error = %e, "removing a delivered spool segment");
                return;
            }
            stats.spool_bytes.store(s.bytes(), Ordering::Relaxed);
        }
    }
}
