//! The online ingest (`host-proxy fraud ingest`): gateway logs over HTTP
//! (`POST /v1/fraud/ingest`) and from Kafka `gateway-logs`, subjects to
//! enclave tokens, the pipeline, signals to `fraud-signals`.
//!
//! Kafka delivery is at least once: a consumed batch's offsets are committed
//! only after the signals it produced were acknowledged by the broker or
//! fsynced to the spool. HTTP batches are answered once their signals are
//! queued (or spooled when the queue is full); a full spool answers 503 so
//! the shipper retries.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use sha2::{Digest, Sha256};

use crate::crawlers::{verify, Budget, Check, CrawlerList, Lookup, Resolver};
use crate::pipeline::{Decision, Pipeline};
use crate::record::{parse_line, LogRecord, Reject};
use crate::rules::KeyType;
use crate::signal::Signal;
use crate::sink::{Sink, SinkError};
use crate::spool::{Record, SpoolError};
use crate::tokenize::{TokenCache, TokenizeError, TransformClient};

mod metrics;
use metrics::Snapshot;

/// Largest HTTP ingest body, and largest consumed Kafka batch.
pub const MAX_BODY: usize = 8 << 20;
/// Accepted record times around the ingest's clock.
pub const MAX_AHEAD_MS: i64 = 5 * 60 * 1000;
pub const MAX_BEHIND_MS: i64 = 24 * 3600 * 1000;
/// HTTP requests handled at once.
pub const MAX_CONCURRENT: usize = 32;

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Extra librdkafka settings (security, timeouts).
    pub options: Vec<(String, String)>,
    pub input_topic: String,
    pub group: String,
}

pub struct IngestConfig {
    pub listen: SocketAddr,
    /// SHA-256 of each bearer token allowed to POST logs.
    pub ingest_tokens_sha256: Vec<[u8; 32]>,
    /// Replace client addresses by tokens too (then no address or subnet
    /// keys leave: WAF sync gets subject keys only).
    pub tokenize_ip: bool,
    pub kafka_in: Option<KafkaConfig>,
    /// Consumed messages per batch (and per commit).
    pub kafka_batch: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What one batch of lines produced.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    pub accepted: u64,
    pub rejected: HashMap<&'static str, u64>,
    pub signals: u64,
}

pub struct Ingest {
    pipeline: Mutex<Pipeline>,
    cache: Mutex<TokenCache>,
    client: TransformClient,
    sink: Sink,
    tokenize_ip: bool,
    tokenize_errors: std::sync::atomic::AtomicU64,
    crawler_dns: Option<Checker>,
    crawler_checks: std::sync::atomic::AtomicU64,
}

/// The background crawler checks: claims go in through a bounded queue,
/// answers come back for the next batch to record.
struct Checker {
    tx: tokio::sync::mpsc::Sender<Lookup>,
    answers: Arc<Mutex<Vec<(Lookup, Check)>>>,
    budget: Budget,
}

/// Claims waiting for a check; more in one go are asked with a later batch.
const CHECK_QUEUE: usize = 1024;

async fn check_claims(
    dns: Resolver,
    list: Arc<CrawlerList>,
    mut rx: tokio::sync::mpsc::Receiver<Lookup>,
    answers: Arc<Mutex<Vec<(Lookup, Check)>>>,
    budget: Budget,
) {
    let dns = Arc::new(dns);
    let slots = Arc::new(tokio::sync::Semaphore::new(budget.concurrency.max(1)));
    while let Some(l) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (dns, list, answers) = (dns.clone(), list.clone(), answers.clone());
        tokio::spawn(async move {
            let check = match list.get(l.crawler) {
                Some(c) => tokio::time::timeout(budget.deadline, verify(&*dns, c, l.ip))
                    .await
                    .unwrap_or(Check::Unresolved),
                None => Check::Unresolved,
            };
            answers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((l, check));
            drop(slot);
        });
    }
}

impl Ingest {
    pub fn new(pipeline: Pipeline, client: TransformClient, sink: Sink, tokenize_ip: bool) -> Self {
        Ingest {
            pipeline: Mutex::new(pipeline),
            cache: Mutex::new(TokenCache::new(200_000)),
            client,
            sink,
            tokenize_ip,
            tokenize_errors: Default::default(),
            crawler_dns: None,
            crawler_checks: Default::default(),
        }
    }

    /// Checks crawler claims with this resolver in the background (the
    /// pipeline must have been made with a crawler list; call within a
    /// tokio runtime): at most `budget.lookups` new claims per batch,
    /// `budget.concurrency` at a time, each within `budget.deadline`. A
    /// batch never waits for DNS; an address whose claim is being checked
    /// gets no decision of its own until the answer is in.
    pub fn with_crawler_dns(mut self, dns: Resolver, budget: Budget) -> Self {
        let Some(list) = self.lock_pipeline().crawler_list() else {
            return self;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(CHECK_QUEUE);
        let answers = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(check_claims(dns, list, rx, answers.clone(), budget));
        self.crawler_dns = Some(Checker {
            tx,
            answers,
            budget,
        });
        self
    }

    /// Crawler checks answered and recorded so far.
    pub fn crawler_checks_done(&self) -> u64 {
        self.crawler_checks
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Parses, tokenizes and scores a batch of NDJSON lines; returns the
    /// signals to send. No raw subject survives this function.
    /// `now_ms` is the ingest's clock: records more than 5 minutes ahead of
    /// it or 24 hours behind are refused (a forged far-future `ts` would
    /// otherwise freeze a key's windows and its block refreshes).
    pub async fn process(
        &self,
        body: &[u8],
        now_ms: i64,
    ) -> Result<(Outcome, Vec<Record>), IngestError> {
        let mut out = Outcome::default();
        let mut records: Vec<LogRecord> = Vec::new();
        let mut rejects: Vec<Reject> = Vec::new();
        for line in body.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(line) {
                Ok(r) if r.ts_ms > now_ms + MAX_AHEAD_MS || r.ts_ms < now_ms - MAX_BEHIND_MS => {
                    *out.rejected.entry(Reject::OutOfWindow.label()).or_default() += 1;
                    rejects.push(Reject::OutOfWindow);
                }
                Ok(r) => records.push(r),
                Err(e) => {
                    *out.rejected.entry(e.label()).or_default() += 1;
                    rejects.push(e);
                }
            }
        }
        out.accepted = records.len() as u64;
        // Subjects (and with --tokenize-ip the addresses, as "ip:<addr>" so
        // that they never share a token with a subject) to tokens: the cache
        // first, the enclave for the rest; this batch keeps its own map, so a
        // concurrent batch evicting cache entries cannot drop its subjects.
        let ip_value = |r: &LogRecord| format!("ip:{}", r.ip);
        let mut values: Vec<String> = records
            .iter()
            .filter(|r| !r.jwt_sub.is_empty())
            .map(|r| r.jwt_sub.clone())
            .collect();
        if self.tokenize_ip {
            values.extend(records.iter().map(ip_value));
        }
        values.sort_unstable();
        values.dedup();
        let mut known: HashMap<String, String> = HashMap::with_capacity(values.len());
        let mut missing: Vec<&str> = Vec::new();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for v in &values {
                match cache.lookup(v) {
                    Some(t) => {
                        known.insert(v.clone(), t);
                    }
                    None => missing.push(v),
                }
            }
            cache.count(values.len() - missing.len(), missing.len());
        }
        if !missing.is_empty() {
            let tokens = self.client.encode(&missing).await.inspect_err(|_| {
                self.tokenize_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })?;
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for (v, t) in missing.iter().zip(tokens) {
                cache.insert(v, &t);
                known.insert((*v).to_owned(), t);
            }
        }
        // Answers that came in since the last batch are recorded; claims
        // without a fresh answer are asked in the background (never waited for).
        if let Some(ch) = &self.crawler_dns {
            let answers =
                std::mem::take(&mut *ch.answers.lock().unwrap_or_else(|p| p.into_inner()));
            let mut p = self.lock_pipeline();
            if !answers.is_empty() {
                p.crawler_checked(&answers, now_ms);
                self.crawler_checks
                    .fetch_add(answers.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            let asked: Vec<Lookup> = p
                .crawler_checks(records.iter(), now_ms)
                .into_iter()
                .take(ch.budget.lookups)
                .filter(|l| ch.tx.try_send(*l).is_ok())
                .collect();
            p.crawler_pending(&asked, now_ms);
        }
        let mut decisions: Vec<Decision> = Vec::new();
        {
            let mut p = self.lock_pipeline();
            for e in rejects {
                p.rejected(e);
            }
            for r in &mut records {
                let subject = known.get(&r.jwt_sub).cloned();
                if self.tokenize_ip {
                    r.ip_text = known.get(&ip_value(r)).cloned().unwrap_or_default();
                }
                // The raw subject goes no further than this line.
                r.jwt_sub.clear();
                p.observe(r, subject.as_deref(), &mut decisions);
            }
        }
        if self.tokenize_ip {
            // Subnets would reveal the address; address keys are tokens.
            decisions.retain(|d| d.key_type != KeyType::Subnet);
        } else {
            // An address joined to an account's token links the two in
            // every consumer: published only when the address is a token too.
            decisions.retain(|d| d.key_type != KeyType::IpSubject);
        }
        out.signals = decisions.len() as u64;
        let recs = decisions
            .iter()
            .map(|d| Record {
                key: d.key.clone(),
                value: serde_json::to_string(&Signal::from(d)).unwrap_or_default(),
            })
            .collect();
        Ok((out, recs))
    }

    fn lock_pipeline(&self) -> std::sync::MutexGuard<'_, Pipeline> {
        self.pipeline.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The HTTP API: ingest, health, metrics.
    pub fn router(self: Arc<Self>, tokens: Vec<[u8; 32]>) -> Router {
        let state = (self, Arc::new(tokens));
        Router::new()
            .route("/v1/fraud/ingest", post(ingest_http))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/metrics", get(metrics))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT))
            .with_state(state)
    }
}

type AppState = (Arc<Ingest>, Arc<Vec<[u8; 32]>>);

fn authorized(headers: &HeaderMap, tokens: &[[u8; 32]]) -> bool {
    let Some(bearer) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let h: [u8; 32] = Sha256::digest(bearer.trim().as_bytes()).into();
    // Compare hashes in constant time, against every entry.
    tokens.iter().fold(false, |ok, t| {
        ok | bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &t[..]))
    })
}

async fn ingest_http(
    State((ingest, tokens)): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The token is checked before a byte of the body is read.
    if !authorized(&headers, &tokens) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"errors": ["missing or unknown bearer token"]})),
        )
            .into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            axum::Json(serde_json::json!({"errors": [format!("body larger than {MAX_BODY} bytes, or cut short")]})),
        )
            .into_response();
    };
    let (outcome, records) = match ingest.process(&body, wall_ms()).await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "fraud ingest batch failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("Retry-After", "5")],
                axum::Json(serde_json::json!({"errors": [e.to_string()]})),
            )
                .into_response();
        }
    };
    // Answered once the signals are durable (delivered, or spooled).
    match ingest.sink.offer(records).await {
        Ok(()) => axum::Json(outcome).into_response(),
        Err(e @ SinkError::Spool(SpoolError::Full { .. })) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("Retry-After", "5")],
            axum::Json(serde_json::json!({"errors": [e.to_string()]})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"errors": [e.to_string()]})),
        )
            .into_response(),
    }
}

async fn metrics(State((ingest, _)): State<AppState>) -> Response {
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(Snapshot::of(&ingest)));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &reg) {
        Ok(()) => (
            [(
                "Content-Type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves the HTTP API until `stop` resolves; the handle ends when the
/// requests in flight have been answered.
pub async fn serve_http(
    ingest: Arc<Ingest>,
    cfg: &IngestConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), IngestError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| IngestError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| IngestError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let app = ingest.router(cfg.ingest_tokens_sha256.clone());
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "fraud ingest HTTP server stopped");
        }
    });
    Ok((addr, handle))
}

/// Consumes `gateway-logs` until the consumer fails; commits each batch's
/// offsets only after its signals are delivered or spooled.
pub async fn consume(
    ingest: Arc<Ingest>,
    k: &KafkaConfig,
    batch: usize,
) -> Result<(), IngestError> {
    let consumer: StreamConsumer = crate::sink::client_config(&k.brokers, &k.options)
        .set("group.id", &k.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| IngestError::Kafka(e.to_string()))?;
    consumer
        .subscribe(&[&k.input_topic])
        .map_err(|e| IngestError::Kafka(e.to_string()))?;
    loop {
        let mut body = Vec::new();
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        let mut n = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        while n < batch.max(1) && body.len() < MAX_BODY {
            let wait = if n == 0 {
                Duration::from_secs(3600)
            } else {
                deadline.saturating_duration_since(tokio::time::Instant::now())
            };
            let m = match tokio::time::timeout(wait, consumer.recv()).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "gateway-logs consumer");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            if let Some(p) = m.payload() {
                body.extend_from_slice(p);
                body.push(b'\n');
            }
            next.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
            n += 1;
        }
        if n == 0 {
            continue;
        }
        let records = loop {
            match ingest.process(&body, wall_ms()).await {
                Ok((_, r)) => break r,
                Err(e) => {
                    // The enclave is unreachable: keep the batch, do not commit, retry.
                    tracing::warn!(error = %e, "gateway-logs batch waits for tokenization");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        loop {
            match ingest.sink.submit(records.clone()).await {
                Ok(()) => break,
                Err(SinkError::Stopped) => return Err(SinkError::Stopped.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "signals not yet durable; holding the commit");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for ((t, p), o) in &next {
            tpl.add_partition_offset(t, *p, rdkafka::Offset::Offset(*o))
                .map_err(|e| IngestError::Kafka(e.to_string()))?;
        }
        consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|e| IngestError::Kafka(e.to_string()))?;
    }
}
