//! `pii-fle` command line: flags, their environment variables, and what
//! each command prints.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use zeroize::Zeroizing;

use crate::ident::{Ident, Table};
use crate::schema::{self, Names};
use crate::transit::{Connect, Retry, Transit};
use crate::{backfill, metrics, rotate, verify, workload, FleError, Run};

#[derive(Parser, Debug)]
#[command(
    name = "pii-fle",
    version,
    about = "Field-level encryption for PostgreSQL through Transit (the pii-enclave sidecar, Vault or OpenBao)",
    long_about = "Field-level encryption for PostgreSQL through Transit.\n\n\
        Every command is safe to interrupt (kill -9 included) and to run again: \
        backfill and rotate resume from their checkpoint in pii_fle_jobs, write a row \
        only if it is unchanged since it was read, and never write a row twice.\n\n\
        Typical sequence:\n  \
        pii-fle backfill --table users --column email --key pii --dry-run\n  \
        pii-fle backfill --table users --column email --key pii\n  \
        pii-fle verify   --table users --column email --key pii\n  \
        pii-fle rotate   --table users --column email --key pii\n  \
        pii-fle cutover  --table users --column email --key pii --drop-plaintext"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// Settings as TOML (keys: the long flags' names); the command line and
    /// the environment override it.
    #[arg(long, env = "PII_FLE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "PII_FLE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Encrypt <column> into <column>_enc (adds the column, its trigger and
    /// the job table if missing); resumable; re-running encrypts only rows
    /// whose <column>_enc is NULL.
    Backfill {
        #[command(flatten)]
        common: Common,
        /// Encrypt a 1 % sample and check it decrypts to the original; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Create the Transit key (and the blind-index key) if missing.
        #[arg(long)]
        create_key: bool,
    },
    /// Decrypt every row and compare with the plaintext; mismatches listed by
    /// primary key; exit code 3 when any row fails.
    Verify {
        #[command(flatten)]
        common: Common,
    },
    /// Rotate the key, rewrap every row to the new version, raise
    /// min_decryption_version; --trim then deletes the old versions.
    Rotate {
        #[command(flatten)]
        common: Common,
        /// Rewrap to the current latest version without rotating first.
        #[arg(long)]
        no_rotate: bool,
        /// Delete key versions below the new one afterwards (irreversible).
        #[arg(long)]
        trim: bool,
    },
    /// Verify, then drop the plaintext column and its triggers (needs
    /// --drop-plaintext).
    Cutover {
        #[command(flatten)]
        common: Common,
        /// Really drop the plaintext column.
        #[arg(long)]
        drop_plaintext: bool,
    },
    /// Rows per key version and the state of this column's jobs.
    Status {
        #[command(flatten)]
        common: Common,
    },
    /// Print the SQL that backfill applies (columns, triggers, job table).
    Migration {
        #[command(flatten)]
        common: Common,
    },
    /// What encryption costs the application: a read/write load on a copy
    /// of the (backfilled) table, plaintext vs encrypted through Transit vs
    /// encrypted with a client-side decrypt cache; throughput and p50/p95/p99.
    Workload {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: WorkloadArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// Modes to run, alternating in rounds.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "plain,encrypted,cached"
    )]
    pub modes: Vec<workload::Mode>,
    /// Concurrent clients (one database connection each).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub clients: u16,
    /// Measured seconds per mode and round.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Unmeasured seconds before each mode's first round.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Percent of operations that are reads (the rest write a new value).
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub read_percent: u32,
    /// Rows sampled from the table to operate on.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub rows: i64,
    /// Share of the sampled rows that is hot.
    #[arg(long, default_value_t = 0.01)]
    pub hot_fraction: f64,
    /// Share of operations on the hot rows.
    #[arg(long, default_value_t = 0.9)]
    pub hot_share: f64,
    /// Decrypt cache entries (cached mode).
    #[arg(long, default_value_t = 10_000)]
    pub cache_size: usize,
    /// Decrypt cache entry lifetime in seconds (cached mode).
    #[arg(long, default_value_t = 60.0)]
    pub cache_ttl: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the copy table (pii_fle_load_<table>) afterwards.
    #[arg(long)]
    pub keep_table: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Table, optionally schema-qualified (app.users).
    #[arg(long)]
    pub table: String,
    /// Plaintext text column.
    #[arg(long)]
    pub column: String,
    /// Transit key name.
    #[arg(long)]
    pub key: String,
    /// PostgreSQL URL (sslmode=disable|verify-full; loopback defaults to disable).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Transit server: the sidecar, Vault or OpenBao.
    #[arg(long, env = "VAULT_ADDR", default_value = "http://127.0.0.1:8210")]
    pub vault_addr: String,
    /// Token (prefer --vault-token-file: the environment of a process is readable by its user).
    #[arg(long, env = "VAULT_TOKEN", hide_env_values = true)]
    pub vault_token: Option<String>,
    /// File holding the token.
    #[arg(long, env = "PII_FLE_VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,
    /// Transit mount path.
    #[arg(long, env = "PII_FLE_MOUNT", default_value = "transit")]
    pub mount: String,
    /// Encrypted column [default: <column>_enc].
    #[arg(long)]
    pub enc_column: Option<String>,
    /// Per-row context for a derived key: this column's text (e.g. the user id).
    #[arg(long)]
    pub context_column: Option<String>,
    /// Also maintain <column>_bidx, an HMAC of the plaintext for equality lookups.
    #[arg(long)]
    pub blind_index: bool,
    /// Transit key of the blind index [default: <key>-bidx]; not rotated by `rotate`.
    #[arg(long)]
    pub blind_index_key: Option<String>,
    /// Rows per batch (one Transit call, one transaction).
    #[arg(long, env = "PII_FLE_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub batch: i64,
    /// Batches in Transit calls at once.
    #[arg(long, env = "PII_FLE_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub in_flight: u16,
    /// Throttle: at most this many rows per second.
    #[arg(long, env = "PII_FLE_ROWS_PER_SEC")]
    pub rows_per_sec: Option<f64>,
    /// Throttle: pause between batches while a batch's write transaction
    /// takes longer than this (the database is busy); the pause doubles
    /// while writes stay over budget and decays once they are within it.
    #[arg(long, env = "PII_FLE_LATENCY_BUDGET_MS", value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub latency_budget_ms: Option<u64>,
    /// Passes before giving up on rows applications keep changing.
    #[arg(long, default_value_t = 5)]
    pub max_passes: i32,
    /// Serve Prometheus metrics on this address while running (e.g. 127.0.0.1:9464).
    #[arg(long, env = "PII_FLE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Attempts per Transit call when the answer means "try again" (429, 5xx,
    /// connection errors), with waits doubling from 0.1 s to 5 s.
    #[arg(long, env = "PII_FLE_TRANSIT_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub transit_attempts: u32,
    /// Allow plain http:// to a non-loopback Transit address.
    #[arg(long)]
    pub insecure_http: bool,
    /// Verify the https:// Transit server against this PEM file's CA
    /// certificates only (a private CA) instead of the system's roots.
    #[arg(long, env = "VAULT_CACERT")]
    pub ca_cert: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Schemas to search after pg_catalog, comma-separated: only for
    /// triggers or functions on the table that name objects without their
    /// schema. Every session otherwise resolves names in pg_catalog only, so
    /// nothing another role created can stand in for what the tool calls;
    /// name only schemas no untrusted role can create objects in.
    #[arg(long, env = "PII_FLE_SEARCH_PATH", value_delimiter = ',')]
    pub search_path: Vec<String>,
}

impl Cmd {
    fn common(&self) -> &Common {
        match self {
            Cmd::Backfill { common, .. }
            | Cmd::Verify { common }
            | Cmd::Rotate { common, .. }
            | Cmd::Cutover { common, .. }
            | Cmd::Status { common }
            | Cmd::Migration { common }
            | Cmd::Workload { common, .. } => common,
        }
    }
}

fn token(c: &Common) -> Result<Zeroizing<String>, FleError> {
    if let Some(p) = &c.vault_token_file {
        let t = std::fs::read_to_string(p)
            .map_err(|e| FleError::Usage(format!("--vault-token-file {}: {e}", p.display())))?;
        return Ok(Zeroizing::new(t.trim().to_owned()));
    }
    c.vault_token
        .clone()
        .map(Zeroizing::new)
        .ok_or_else(|| FleError::Usage("no token: set VAULT_TOKEN or --vault-token-file".into()))
}

async fn setup(c: &Common) -> Result<Run, FleError> {
    let table = Table::parse(&c.table).map_err(schema::SchemaError::from)?;
    let column = Ident::new(&c.column).map_err(schema::SchemaError::from)?;
    let key_name = |flag: &str, k: &str| {
        Ident::new(&k.replace('-', "_"))
            .map(|_| ())
            .map_err(|_| FleError::Usage(format!("{flag} {k:?}: letters, digits, - and _ only")))
    };
    key_name("--key", &c.key)?;
    let bidx_key = c
        .blind_index_key
        .clone()
        .unwrap_or_else(|| format!("{}-bidx", c.key));
    key_name("--blind-index-key", &bidx_key)?;
    let transit = Transit::new(
        &c.vault_addr,
        &c.mount,
        token(c)?,
        Retry {
            attempts: c.transit_attempts,
            ..Retry::default()
        },
        &Connect {
            insecure_http: c.insecure_http,
            ca_file: c.ca_cert.clone(),
        },
    )?;
    let db = pii_pg::Target::parse(&c.database_url)?;
    let conn = db.connect("pii-fle").await?;
    // An unqualified --table is in the role's first schema: read it before
    // the session's search path is pinned (crate::SearchPath).
    let typed_unqualified = table.schema.is_none();
    let table = match table.schema {
        Some(_) => table,
        None => {
            let first: Option<String> = conn
                .query_one("SELECT current_schema()::text", &[])
                .await?
                .try_get(0)?;
            let first = first.ok_or_else(|| {
                FleError::Usage(format!(
                    "--table {}: no schema on this role's search_path exists; name it (schema.table)",
                    c.table
                ))
            })?;
            Table {
                schema: Some(Ident::new(&first).map_err(schema::SchemaError::from)?),
                name: table.name,
            }
        }
    };
    let search_path = crate::SearchPath::new(
        c.search_path
            .iter()
            .map(|s| Ident::new(s.trim()))
            .collect::<Result<_, _>>()
            .map_err(schema::SchemaError::from)?,
    );
    conn.batch_execute(&search_path.set_sql()).await?;
    let names = Names {
        enc_column: c.enc_column.clone(),
        blind_index: c.blind_index,
        context_column: c.context_column.clone(),
    };
    let mut plan = schema::inspect(&conn, &table, &column, &names).await?;
    // Resolved above, so inspect saw a qualified name: the legacy object
    // names depend on what was typed.
    plan.typed_unqualified = typed_unqualified;
    schema::warn_untrusted_schema_owner(&conn, &plan).await?;
    let m = metrics::Metrics::new(&transit.retries);
    if let Some(addr) = c.metrics_listen {
        metrics::serve(addr, m.clone())
            .await
            .map_err(|e| FleError::Usage(format!("--metrics-listen {addr}: {e}")))?;
    }
    Ok(Run {
        transit: Arc::new(transit),
        db,
        plan,
        key: c.key.clone(),
        bidx_key,
        batch: c.batch,
        in_flight: usize::from(c.in_flight),
        rows_per_sec: c.rows_per_sec,
        latency_budget: c.latency_budget_ms.map(std::time::Duration::from_millis),
        max_passes: c.max_passes.max(1),
        metrics: m,
        quiet: c.quiet,
        search_path,
    })
}

fn versions(v: &[(Option<i32>, i64)]) -> String {
    if v.is_empty() {
        return "no rows".into();
    }
    v.iter()
        .map(|(ver, n)| match ver {
            Some(ver) => format!("v{ver}: {n}"),
            None => format!("not encrypted: {n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs a command; what it prints goes to stdout, logs to stderr.
pub async fn run(cmd: Cmd) -> Result<(), FleError> {
    let mut r = setup(cmd.common()).await?;
    let label = format!("{}.{}", r.plan.table.label(), r.plan.column.name());
    match cmd {
        Cmd::Backfill { dry_run: true, .. } => {
            let d = backfill::dry_run(&r).await?;
            println!(
                "dry run {label}: {} sampled rows encrypted and decrypted, {} round-tripped, nothing written",
                d.sampled, d.round_tripped
            );
            if !d.failed.is_empty() {
                return Err(FleError::VerifyFailed(format!(
                    "{} sampled rows did not round-trip: {:?}",
                    d.failed.len(),
                    &d.failed[..d.failed.len().min(verify::LISTED)]
                )));
            }
        }
        Cmd::Backfill { create_key, .. } => {
            let rep = backfill::backfill(&mut r, create_key).await?;
            let rate = rep.written as f64 / rep.seconds.max(1e-3);
            println!(
                "backfill {label}: {} rows encrypted in {:.1} s ({:.0} rows/s), {} passes, {} rows changed meanwhile and retried{}",
                rep.written,
                rep.seconds,
                rate,
                rep.passes,
                rep.skipped,
                rep.resumed_after
                    .map(|pk| format!("; resumed after primary key {pk}"))
                    .unwrap_or_default()
            );
        }
        Cmd::Verify { .. } => {
            let rep = verify::verify(&r).await?;
            println!("verify {label}: {} in {:.1} s", rep.summary(), rep.seconds);
            for (what, f) in [
                ("missing", &rep.missing),
                ("orphaned", &rep.orphaned),
                ("mismatched", &rep.mismatched),
                ("undecryptable", &rep.undecryptable),
                ("blind index", &rep.blind_index),
            ] {
                if f.count > 0 {
                    println!(
                        "  {what}: {} (primary keys: {})",
                        f.count,
                        f.keys.join(", ")
                    );
                }
            }
            if !rep.passed() {
                return Err(FleError::VerifyFailed(rep.summary()));
            }
        }
        Cmd::Rotate {
            no_rotate, trim, ..
        } => {
            let rep = rotate::rotate(&r, rotate::Options { no_rotate, trim }).await?;
            println!(
                "rotate {label}: key {} v{} → v{}, {} rows rewrapped ({} changed meanwhile), min_decryption_version {}{}",
                r.key,
                rep.from_version,
                rep.to_version,
                rep.rewrapped,
                rep.skipped,
                rep.min_decryption_version,
                if rep.trimmed { ", older versions trimmed" } else { "" }
            );
            println!("  before: {}", versions(&rep.before));
            println!("  after:  {}", versions(&rep.after));
        }
        Cmd::Cutover { drop_plaintext, .. } => {
            let rep = verify::cutover(&r, drop_plaintext).await?;
            println!(
                "cutover {label}: verify passed ({}), plaintext column dropped",
                rep.summary()
            );
        }
        Cmd::Status { .. } => {
            let db = r.connect("pii-fle status").await?;
            println!(
                "{label}: primary key {} ({})",
                r.plan.pk.name(),
                r.plan.pk_type
            );
            if r.plan.migrated {
                println!(
                    "  versions: {}",
                    versions(&schema::versions(&db, &r.plan).await?)
                );
            } else {
                println!("  not migrated ({} does not exist)", r.plan.enc.name());
            }
            schema::ensure_jobs(&db, &r.plan).await?;
            for kind in ["backfill", "verify", "rotate"] {
                if let Some(j) = crate::job::load(&db, &r.plan.job(kind)).await? {
                    println!(
                        "  {kind}: {} (pass {}, {} rows done, {} changed meanwhile)",
                        j.state, j.pass, j.rows_done, j.rows_skipped
                    );
                }
            }
        }
        Cmd::Migration { .. } => print!("{}", r.plan.migration_sql()?),
        Cmd::Workload { load, .. } => {
            let bad = |what: &str| FleError::Usage(format!("workload: {what}"));
            let timing_ok = load.seconds > 0.0
                && load.seconds <= 3600.0
                && (0.0..=600.0).contains(&load.warmup);
            if !timing_ok {
                return Err(bad(
                    "--seconds must be within (0, 3600], --warmup within [0, 600]",
                ));
            }
            if !(0.0..=1.0).contains(&load.hot_fraction) || !(0.0..=1.0).contains(&load.hot_share) {
                return Err(bad("--hot-fraction and --hot-share must be within 0..=1"));
            }
            let ttl = std::time::Duration::try_from_secs_f64(load.cache_ttl)
                .map_err(|_| bad("--cache-ttl must be a number of seconds"))?;
            let o = workload::Options {
                modes: load.modes.clone(),
                clients: usize::from(load.clients),
                seconds: load.seconds,
                warmup: load.warmup,
                rounds: load.rounds,
                read_percent: load.read_percent,
                rows: load.rows,
                hot_fraction: load.hot_fraction,
                hot_share: load.hot_share,
                cache_size: load.cache_size,
                cache_ttl: ttl,
                seed: load.seed,
                keep_table: load.keep_table,
            };
            let rep = workload::run(&r, &o).await?;
            print!("workload {label}:\n\n{}", rep.markdown());
            if let Some(path) = &load.json {
                let text = serde_json::to_string_pretty(&rep)
                    .map_err(|e| FleError::Internal(format!("workload report: {e}")))?;
                std::fs::write(path, text)
                    .map_err(|e| FleError::Usage(format!("--json {}: {e}", path.display())))?;
            }
        }
    }
    Ok(())
}
