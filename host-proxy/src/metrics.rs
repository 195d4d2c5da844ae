//! Prometheus metrics (`GET /metrics`, OpenMetrics text format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Operation class, e.g. `transit/encrypt` (never the key name).
    pub op: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayLabels {
    /// `host:port` the enclave asked for.
    pub upstream: String,
    /// ok, denied, limit, dns, connect, bad-request.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    /// admitted, queued, over_share (429), overloaded (503), queue_timeout
    /// (503 after waiting), guard_admit (let in over the limit by
    /// max_drop_percent), cancelled (the client left while waiting), decrease
    /// (the limit was cut).
    pub event: &'static str,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily,
    pub enclave_connections: Gauge,
    pub enclave_errors: Family<ErrorLabels, Counter>,
    pub keyring_writes: Family<ErrorLabels, Counter>,
    pub request_bytes: Counter,
    pub audit_records: Counter,
    pub relay_connections: Family<RelayLabels, Counter>,
    pub relay_active: Gauge,
    pub relay_bytes: Family<DirLabels, Counter>,
    /// The highest random-nonce count of any Transit key version (key
    /// names never become labels).
    pub key_random_nonces_max: Gauge,
    /// Key versions past half their nonce budget (rotated away from, or
    /// pinned by an explicit `key_version`).
    pub key_versions_past_half_budget: Gauge,
    pub loadshed_limit: Gauge,
    pub loadshed_inflight: Gauge,
    pub loadshed_waiting: Gauge,
    pub loadshed_events: Family<ShedLabels, Counter>,
    /// The shedder's counts at the last scrape (the counters advance by the
    /// difference).
    loadshed_seen: std::sync::Mutex<pii_loadshed::Stats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pii_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let enclave_connections = Gauge::default();
        let enclave_errors = Family::<ErrorLabels, Counter>::default();
        let keyring_writes = Family::<ErrorLabels, Counter>::default();
        let request_bytes = Counter::default();
        let audit_records = Counter::default();
        registry.register(
            "http_requests",
            "Sidecar API requests by operation and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Sidecar API latency by operation",
            latency.clone(),
        );
        registry.register(
            "enclave_connections",
            "Live multiplexed connections to the enclave",
            enclave_connections.clone(),
        );
        registry.register(
            "enclave_call_errors",
            "Calls to the enclave that failed without an answer",
            enclave_errors.clone(),
        );
        registry.register(
            "keyring_writes",
            "Sealed keyring writes by outcome (stored, conflict, error)",
            keyring_writes.clone(),
        );
        registry.register(
            "http_request_body_bytes",
            "Request body bytes forwarded",
            request_bytes.clone(),
        );
        let relay_connections = Family::<RelayLabels, Counter>::default();
        let relay_active = Gauge::default();
        let relay_bytes = Family::<DirLabels, Counter>::default();
        registry.register(
            "relay_connections",
            "Egress relay connections by upstream and result",
            relay_connections.clone(),
        );
        registry.register(
            "relay_active_connections",
            "Egress relay connections being copied now",
            relay_active.clone(),
        );
        registry.register(
            "relay_bytes",
            "Bytes copied by the egress relay, by direction (ciphertext: the enclave's TLS)",
            relay_bytes.clone(),
        );
        let key_random_nonces_max = Gauge::default();
        registry.register(
            "key_random_nonces_max",
            "Highest random-nonce encryption count of any Transit key version, counted by \
             the enclave (an upper bound; the limit is 2^32, keys rotate at 2^31)",
            key_random_nonces_max.clone(),
        );
        let key_versions_past_half_budget = Gauge::default();
        registry.register(
            "key_versions_past_half_budget",
            "Transit key versions that have used more than 2^31 random nonces",
            key_versions_past_half_budget.clone(),
        );
        let loadshed_limit = Gauge::default();
        let loadshed_inflight = Gauge::default();
        let loadshed_waiting = Gauge::default();
        let loadshed_events = Family::<ShedLabels, Counter>::default();
        registry.register(
            "loadshed_limit",
            "The adaptive concurrency limit on the enclave hop",
            loadshed_limit.clone(),
        );
        registry.register(
            "loadshed_inflight",
            "Requests on the enclave hop counted by the shedder",
            loadshed_inflight.clone(),
        );
        registry.register(
            "loadshed_waiting",
            "Requests waiting for a place on the enclave hop",
            loadshed_waiting.clone(),
        );
        registry.register(
            "loadshed_events",
            "Load shedding decisions by kind",
            loadshed_events.clone(),
        );
        Metrics {
            loadshed_limit,
            loadshed_inflight,
            loadshed_waiting,
            loadshed_events,
            loadshed_seen: std::sync::Mutex::new(pii_loadshed::Stats::default()),
            key_random_nonces_max,
            key_versions_past_half_budget,
            registry,
            relay_connections,
            relay_active,
            relay_bytes,
            requests,
            latency,
            enclave_connections,
            enclave_errors,
            keyring_writes,
            request_bytes,
            audit_records,
        }
    }

    /// Brings the load shedding metrics up to date.
    pub fn loadshed(&self, s: &pii_loadshed::Snapshot) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.loadshed_limit.set(gauge(u64::from(s.limit)));
        self.loadshed_inflight.set(gauge(u64::from(s.inflight)));
        self.loadshed_waiting.set(gauge(s.waiting as u64));
        let Ok(mut seen) = self.loadshed_seen.lock() else {
            return;
        };
        let now = s.stats;
        for (event, new, old) in [
            ("admitted", now.admitted, seen.admitted),
            ("queued", now.queued, seen.queued),
            ("over_share", now.over_share, seen.over_share),
            ("overloaded", now.overloaded, seen.overloaded),
            ("queue_timeout", now.queue_timeouts, seen.queue_timeouts),
            ("guard_admit", now.guard_admits, seen.guard_admits),
            ("cancelled", now.cancelled, seen.cancelled),
            ("decrease", now.decreases, seen.decreases),
        ] {
            self.loadshed_events
                .get_or_create(&ShedLabels { event })
                .inc_by(new.saturating_sub(old));
        }
        *seen = now;
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
