//! Prometheus metrics of a run (`--metrics-listen`), and the progress bar.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    /// Rows read by scans.
    pub rows_read: Counter,
    /// Rows written (encrypted, rewrapped).
    pub rows_written: Counter,
    /// Rows an application changed between read and write (retried later).
    pub rows_skipped: Counter,
    /// Rows checked by verify, and those that failed.
    pub rows_verified: Counter,
    pub rows_mismatched: Counter,
    /// Batches committed.
    pub batches: Counter,
    /// Rows left to do, as estimated at the start of the pass.
    pub rows_remaining: Gauge,
    /// The latency-budget throttle's current pause between batches.
    pub throttle_pause_ms: Gauge,
}

impl Metrics {
    /// The metrics, with the Transit client's retry counter registered too.
    pub fn new(transit_retries: &Counter) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("pii_fle");
        let m = Metrics {
            rows_read: Counter::default(),
            rows_written: Counter::default(),
            rows_skipped: Counter::default(),
            rows_verified: Counter::default(),
            rows_mismatched: Counter::default(),
            batches: Counter::default(),
            rows_remaining: Gauge::default(),
            throttle_pause_ms: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("rows_read", "Rows read by scans", m.rows_read.clone());
        registry.register(
            "rows_written",
            "Rows written (encrypted or rewrapped)",
            m.rows_written.clone(),
        );
        registry.register(
            "rows_skipped",
            "Rows changed by an application between read and write (retried in a later pass)",
            m.rows_skipped.clone(),
        );
        registry.register(
            "rows_verified",
            "Rows checked by verify",
            m.rows_verified.clone(),
        );
        registry.register(
            "rows_mismatched",
            "Rows whose ciphertext is missing, undecryptable or not the plaintext",
            m.rows_mismatched.clone(),
        );
        registry.register("batches", "Batches committed", m.batches.clone());
        registry.register(
            "rows_remaining",
            "Rows left in this pass (estimate)",
            m.rows_remaining.clone(),
        );
        registry.register(
            "throttle_pause_milliseconds",
            "Pause between batches set by the latency budget (--latency-budget-ms)",
            m.throttle_pause_ms.clone(),
        );
        registry.register(
            "transit_retries",
            "Transit calls retried after 429/5xx or a connection error",
            transit_retries.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(addr: std::net::SocketAddr, m: Arc<Metrics>) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics on /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

/// A progress bar on a terminal (hidden otherwise) and a log line every
/// 10 s with the rate, for job logs.
pub struct Progress {
    bar: indicatif::ProgressBar,
    what: &'static str,
    started: Instant,
    last_log: Instant,
    done: u64,
}

impl Progress {
    pub fn new(what: &'static str, total: u64, quiet: bool) -> Progress {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(total)
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} rows, {per_sec}, ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what);
        let now = Instant::now();
        Progress {
            bar,
            what,
            started: now,
            last_log: now,
            done: 0,
        }
    }

    pub fn add(&mut self, rows: u64) {
        self.done += rows;
        self.bar.inc(rows);
        if self.last_log.elapsed().as_secs() >= 10 {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            tracing::info!(
                what = self.what,
                rows = self.done,
                rows_per_sec = (self.done as f64 / secs) as u64,
                "progress"
            );
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    pub fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}
