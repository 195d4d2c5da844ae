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
