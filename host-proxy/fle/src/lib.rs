//! Field-level encryption for PostgreSQL through Transit.
//!
//! `pii-fle backfill` encrypts a plaintext column into `<column>_enc`
//! without one giant transaction and without losing an application's write:
//!
//! - rows are read by keyset pagination on the primary key, encrypted in
//!   `batch_input` calls outside any database transaction, and written only
//!   where the plaintext is still what was read
//!   (`… AND email IS NOT DISTINCT FROM $read AND email_enc IS NULL`); a row an
//!   application changed meanwhile is skipped and retried in a later pass;
//! - a trigger (from `db/migrations/fle/`) clears `<column>_enc` whenever an
//!   application changes the plaintext without writing the ciphertext, so a
//!   stale ciphertext cannot survive and a re-run encrypts exactly those rows;
//! - each batch's writes and its checkpoint commit in one transaction, so a
//!   `kill -9` anywhere loses nothing and writes nothing twice.
//!
//! `verify` decrypts every row and compares; `cutover --drop-plaintext`
//! drops the plaintext only after a verify passed in the same run, under a
//! lock; `rotate` rotates the key, rewraps every row (same rules), raises
//! `min_decryption_version` and optionally trims.
//!
//! The tool never holds key material; plaintext passes through it (it reads
//! the column), and no value is ever logged: only primary keys and counts.

#![forbid(unsafe_code)]

pub mod backfill;
pub mod cache;
pub mod cli;
pub mod config;
pub mod ident;
pub mod job;
pub mod metrics;
pub mod pipeline;
pub mod rotate;
pub mod schema;
pub mod transit;
pub mod verify;
pub mod workload;

/// What a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FleError {
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("transit: {0}")]
    Transit(#[from] transit::TransitError),
    #[error("postgres: {}{}", pii_pg::chain(.0), search_path_hint(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Connect(#[from] pii_pg::PgError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    #[error("{0}")]
    Usage(String),
    /// Work remains: rows changed by applications in every pass.
    #[error(
        "{rows} rows still need encrypting after {passes} passes (applications kept changing \
         them); run the same command again: it encrypts only those rows"
    )]
    Incomplete { rows: i64, passes: i32 },
    #[error("verify failed: {0}")]
    VerifyFailed(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl FleError {
    /// Process exit code: 3 for "run again / look at the report", 1 else.
    pub fn exit_code(&self) -> i32 {
        match self {
            FleError::Incomplete { .. } | FleError::VerifyFailed(_) => 3,
            FleError::Usage(_) => 2,
            // The table, column or names given do not fit: fix the command.
            FleError::Schema(e) if !matches!(e, schema::SchemaError::Db(_)) => 2,
            _ => 1,
        }
    }
}

/// What every command works with.
pub struct Run {
    pub transit: std::sync::Arc<transit::Transit>,
    pub db: pii_pg::Target,
    pub plan: schema::Plan,
    /// The Transit key of the column.
    pub key: String,
    /// The HMAC key of the blind index (not rotated with `key`).
    pub bidx_key: String,
    /// Rows per batch (one Transit call, one transaction).
    pub batch: i64,
    /// Batches in Transit calls at once.
    pub in_flight: usize,
    /// Throttle: at most this many rows written per second.
    pub rows_per_sec: Option<f64>,
    /// Throttle: keep each batch's write transaction within this time.
    pub latency_budget: Option<std::time::Duration>,
    /// Passes before giving up on rows applications keep changing.
    pub max_passes: i32,
    pub metrics: std::sync::Arc<metrics::Metrics>,
    /// No progress bar.
    pub quiet: bool,
    /// Every session's search path.
    pub search_path: SearchPath,
}

/// The search path of every session the tool opens: PostgreSQL's own
/// catalog, the schemas named with `--search-path` (none by default), then
/// temporary objects. No function, operator, type or table that another role
/// created in a schema on the default search path can then stand in for one
/// the tool's SQL names (CVE-2018-1058's class: an exact match such as
/// `public.=(varchar, text)` beats the built-in that needs a cast), and every
/// name the tool writes into SQL is schema-qualified. PostgreSQL's own client
/// tools pin theirs the same way since that CVE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchPath(Vec<ident::Ident>);

impl SearchPath {
    /// Trusted schemas, searched after pg_catalog (for triggers on the table
    /// that name objects without their schema).
    pub fn new(trusted: Vec<ident::Ident>) -> SearchPath {
        SearchPath(trusted)
    }

    /// The statement that sets it.
    pub fn set_sql(&self) -> String {
        let mut path = vec!["pg_catalog".to_owned()];
        path.extend(self.0.iter().map(ToString::to_string));
        path.push("pg_temp".into());
        format!("SET search_path = {}", path.join(", "))
    }

    /// A session on `db` with this search path.
    pub async fn session(
        &self,
        db: &pii_pg::Target,
        what: &'static str,
    ) -> Result<tokio_postgres::Client, FleError> {
        let c = db.connect(what).await?;
        c.batch_execute(&self.set_sql()).await?;
        Ok(c)
    }
}

/// What a database error that names a missing object may mean in the tool's
/// sessions, appended to its message.
pub fn search_path_hint(e: &tokio_postgres::Error) -> &'static str {
    use tokio_postgres::error::SqlState;
    let missing = [
        SqlState::UNDEFINED_TABLE,
        SqlState::UNDEFINED_FUNCTION,
        SqlState::UNDEFINED_OBJECT,
        SqlState::INVALID_SCHEMA_NAME,
    ];
    match e.code() {
        Some(c) if missing.contains(c) => {
            " (pii-fle resolves names in pg_catalog only: a trigger or function on this table \
             that names objects without their schema needs schema-qualified names or its own \
             SET search_path, or name the schemas you trust with --search-path)"
        }
        _ => "",
    }
}

impl Run {
    /// A session for this run ([`SearchPath::session`]).
    pub async fn connect(&self, what: &'static str) -> Result<tokio_postgres::Client, FleError> {
        self.search_path.session(&self.db, what).await
    }
}

/// The latency-budget throttle (`--latency-budget-ms`): after each batch,
/// how long to pause so that the batches' write transactions stay within
/// the budget. A write that takes longer than usual means the database is
/// busy (locks, I/O, CPU shared with the application), so the tool backs
/// off: the pause at least covers the overshoot and doubles while writes
/// stay over budget, and decays by a quarter per batch once they are
/// within it (the `--chunk-time` idea of pt-online-schema-change, applied
/// to the pause rather than the batch size, which the checkpoint fixes).
/// Pure: durations in, a duration out.
#[derive(Clone, Debug)]
pub struct LatencyBudget {
    budget: std::time::Duration,
    pause: std::time::Duration,
}

impl LatencyBudget {
    /// The longest pause between two batches.
    pub const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);
    const MIN_STEP: std::time::Duration = std::time::Duration::from_millis(10);

    pub fn new(budget: std::time::Duration) -> LatencyBudget {
        LatencyBudget {
            budget,
            pause: std::time::Duration::ZERO,
        }
    }

    /// The pause after a batch whose write transaction took `took`.
    pub fn observe(&mut self, took: std::time::Duration) -> std::time::Duration {
        self.pause = match took.checked_sub(self.budget) {
            Some(over) if !over.is_zero() => (self.pause * 2)
                .max(over)
                .max(Self::MIN_STEP)
                .min(Self::MAX_PAUSE),
            _ => {
                let decayed = self.pause * 3 / 4;
                if decayed < std::time::Duration::from_millis(1) {
                    std::time::Duration::ZERO
                } else {
                    decayed
                }
            }
        };
        self.pause
    }
}

/// Paces writes to `rate` rows per second (measured from `start`).
pub async fn throttle(rate: Option<f64>, start: std::time::Instant, rows: u64) {
    if let Some(rate) = rate.filter(|r| *r > 0.0) {
        // A rate so small that the wait overflows waits a day at a time.
        let due = std::time::Duration::try_from_secs_f64(rows as f64 / rate)
            .unwrap_or(std::time::Duration::from_secs(86_400) + start.elapsed());
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LatencyBudget;
    use std::time::Duration;

    #[test]
    fn the_pause_grows_while_writes_are_over_budget_and_decays_after() {
        let ms = Duration::from_millis;
        let mut t = LatencyBudget::new(ms(50));
        assert_eq!(t.observe(ms(20)), Duration::ZERO, "within budget: no pause");
        assert_eq!(t.observe(ms(50)), Duration::ZERO, "at the budget: no pause");
        assert_eq!(
            t.observe(ms(55)),
            ms(10),
            "a small overshoot: the smallest step"
        );
        assert_eq!(t.observe(ms(55)), ms(20), "still over: doubles");
        assert_eq!(
            t.observe(ms(450)),
            ms(400),
            "far over: at least the overshoot"
        );
        let mut over = Duration::ZERO;
        for _ in 0..20 {
            over = t.observe(ms(5_000));
        }
        assert_eq!(over, LatencyBudget::MAX_PAUSE, "bounded");
        let mut p = over;
        let mut batches = 0;
        while !p.is_zero() {
            p = t.observe(ms(10));
            batches += 1;
            assert!(batches < 60, "decays to nothing");
        }
        assert!(batches > 5, "but not at once: {batches}");
    }
}
