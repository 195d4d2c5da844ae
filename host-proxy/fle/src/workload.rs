//! `pii-fle workload`: what field-level encryption costs an application.
//!
//! A read/write load on a copy of the table's primary key, ciphertext and
//! context (`pii_fle_load_<table>_<pid>`; its plaintext column holds `x`s of
//! each email's length, so no plaintext is copied; the table itself is never
//! written), in three modes, alternating in rounds so that drift on a
//! shared machine hits all of them alike:
//!
//! - `plain`: reads and writes the plaintext column (the application before);
//! - `encrypted`: reads `<column>_enc` and decrypts it through Transit, and
//!   writes a new value encrypted through Transit (the application after
//!   cut-over);
//! - `cached`: as `encrypted`, with a [`DecryptCache`] in front of decrypt.
//!
//! Each operation is timed from its first query to its last answer, per
//! client connection, and reported as throughput and p50/p95/p99 per mode;
//! the overhead is a mode's p95 over `plain`'s. Rows are picked with a skew
//! (by default 90 % of operations on 1 % of the sampled rows), the usual
//! shape of user traffic and what makes a cache worth having at all; the
//! hit ratio is reported with the figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::cache::DecryptCache;
use crate::ident::{Ident, Table};
use crate::{FleError, Run};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Plain,
    Encrypted,
    Cached,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub modes: Vec<Mode>,
    pub clients: usize,
    /// Measured seconds per mode and round.
    pub seconds: f64,
    /// Unmeasured seconds before each mode's first round.
    pub warmup: f64,
    pub rounds: u32,
    /// Percent of operations that are reads.
    pub read_percent: u32,
    /// Rows sampled from the table to operate on.
    pub rows: i64,
    /// Share of the sampled rows that is hot, and share of operations on it.
    pub hot_fraction: f64,
    pub hot_share: f64,
    pub cache_size: usize,
    pub cache_ttl: Duration,
    pub seed: u64,
    /// Keep the copy table afterwards.
    pub keep_table: bool,
}

/// One mode's figures (latencies in milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub read_p95_ms: f64,
    pub write_p95_ms: f64,
    /// Hits over lookups (cached mode only).
    pub cache_hit_ratio: Option<f64>,
    /// This mode's p95 over plain's p95, minus one (when plain ran).
    pub p95_overhead: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub table_rows: i64,
    pub sampled_rows: usize,
    pub clients: usize,
    pub read_percent: u32,
    pub hot_fraction: f64,
    pub hot_share: f64,
    pub modes: Vec<ModeReport>,
}

/// A sampled row: its primary key and per-row context, as text.
struct Target {
    pk: String,
    ctx: Option<String>,
}

struct Sql {
    read_plain: String,
    read_enc: String,
    write_plain: String,
    write_enc: String,
}

/// Per client: (is_read, microseconds) of every measured operation.
type Samples = Vec<(bool, u32)>;

fn copy_table(t: &Table) -> Result<Table, FleError> {
    let table: String = t.name.name().chars().take(40).collect();
    let name = Ident::new(&format!("pii_fle_load_{table}_{}", std::process::id()))
        .map_err(crate::schema::SchemaError::from)?;
    Ok(Table {
        schema: t.schema.clone(),
        name,
    })
}

/// Runs the workload; the table must be backfilled (no NULL `<column>_enc`).
pub async fn run(r: &Run, o: &Options) -> Result<Report, FleError> {
    r.plan.require_migrated()?;
    if o.clients == 0 || o.rows < 1 || !(0.0..=1.0).contains(&o.hot_share) {
        return Err(FleError::Usage(
            "workload: --clients and --rows must be positive, --hot-share within 0..=1".into(),
        ));
    }
    let p = &r.plan;
    let copy = copy_table(&p.table)?;
    let db = r.connect("pii-fle workload").await?;
    let missing: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {} WHERE {} IS NULL", p.table, p.enc),
            &[],
        )
        .await?
        .get(0);
    if missing > 0 {
        return Err(FleError::Usage(format!(
            "workload: {missing} rows of {} have no {} yet: run pii-fle backfill first",
            p.table.label(),
            p.enc.name()
        )));
    }
    tracing::info!(copy = %copy.label(), "copying the table for the workload");
    let ctx = p
        .context
        .as_ref()
        .filter(|c| **c != p.pk)
        .map(|c| format!(", {c}"))
        .unwrap_or_default();
    db.batch_execute(&format!(
        "CREATE TABLE {copy} AS SELECT {pk}, repeat('x', length({c}::text)) AS {c}, {e}{ctx} \
         FROM {t}; ALTER TABLE {copy} ADD PRIMARY KEY ({pk}); REVOKE ALL ON {copy} FROM PUBLIC; \
         ANALYZE {copy};",
        t = p.table,
        pk = p.pk,
        c = p.column,
        e = p.enc,
    ))
    .await?;
    let result = measure(r, o, &copy, &db).await;
    if !o.keep_table {
        db.batch_execute(&format!("DROP TABLE {copy}")).await?;
    }
    result
}

async fn measure(
    r: &Run,
    o: &Options,
    copy: &Table,
    db: &tokio_postgres::Client,
) -> Result<Report, FleError> {
    let p = &r.plan;
    let table_rows: i64 = db
        .query_one(&format!("SELECT count(*) FROM {copy}"), &[])
        .await?
        .get(0);
    let ctx = p
        .context
        .as_ref()
        .map(|c| format!("{c}::text"))
        .unwrap_or_else(|| "NULL::text".into());
    let targets: Vec<Target> = db
        .query(
            &format!(
                "SELECT {pk}::text, {ctx} FROM {copy} ORDER BY random() LIMIT $1",
                pk = p.pk
            ),
            &[&o.rows],
        )
        .await?
        .iter()
        .map(|row| Target {
            pk: row.get(0),
            ctx: row.get(1),
        })
        .collect();
    if targets.is_empty() {
        return Err(FleError::Usage(format!(
            "workload: {} has no rows",
            p.table.label()
        )));
    }
    let by_pk = format!("{} = ($1::text)::{}", p.pk, p.pk_type);
    let sql = Arc::new(Sql {
        read_plain: format!("SELECT {} FROM {copy} WHERE {by_pk}", p.column),
        read_enc: format!("SELECT {} FROM {copy} WHERE {by_pk}", p.enc),
        write_plain: format!("UPDATE {copy} SET {} = $2 WHERE {by_pk}", p.column),
        write_enc: format!("UPDATE {copy} SET {} = $2 WHERE {by_pk}", p.enc),
    });
    let targets = Arc::new(targets);
    let cache = Arc::new(DecryptCache::new(o.cache_size, o.cache_ttl)?);
    let mut samples: Vec<(Mode, Samples, f64)> =
        o.modes.iter().map(|m| (*m, vec![], 0.0)).collect();
    for round in 0..o.rounds {
        for (mode, acc, secs) in samples.iter_mut() {
            if round == 0 && o.warmup > 0.0 {
                one_round(r, o, *mode, &sql, &targets, &cache, o.warmup, round, false).await?;
            }
            let s = one_round(r, o, *mode, &sql, &targets, &cache, o.seconds, round, true).await?;
            acc.extend(s);
            *secs += o.seconds;
        }
    }
    let (hits, misses) = cache.stats();
    let mut modes: Vec<ModeReport> = samples
        .into_iter()
        .map(|(mode, s, secs)| summarize(mode, s, secs))
        .collect();
    if let Some(plain) = modes
        .iter()
        .find(|m| m.mode == Mode::Plain)
        .map(|m| m.p95_ms)
    {
        for m in &mut modes {
            m.p95_overhead = (plain > 0.0).then(|| m.p95_ms / plain - 1.0);
        }
    }
    for m in &mut modes {
        if m.mode == Mode::Cached && hits + misses > 0 {
            m.cache_hit_ratio = Some(hits as f64 / (hits + misses) as f64);
        }
    }
    Ok(Report {
        table_rows,
        sampled_rows: targets.len(),
        clients: o.clients,
        read_percent: o.read_percent,
        hot_fraction: o.hot_fraction,
        hot_share: o.hot_share,
        modes,
    })
}

#[allow(clippy::too_many_arguments)]
async fn one_round(
    r: &Run,
    o: &Options,
    mode: Mode,
    sql: &Arc<Sql>,
    targets: &Arc<Vec<Target>>,
    cache: &Arc<DecryptCache>,
    seconds: f64,
    round: u32,
    record: bool,
) -> Result<Samples, FleError> {
    // Connections first: their setup is not part of any operation.
    let mut conns = Vec::with_capacity(o.clients);
    for _ in 0..o.clients {
        conns.push(r.connect("pii-fle workload").await?);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (client, db) in conns.into_iter().enumerate() {
        let (sql, targets, cache) = (sql.clone(), targets.clone(), cache.clone());
        let transit = r.transit.clone();
        let key = r.key.clone();
        let (read_percent, hot_fraction, hot_share) = (o.read_percent, o.hot_fraction, o.hot_share);
        let seed = o.seed ^ (u64::from(round) << 32) ^ (client as u64) ^ ((mode as u64) << 48);
        tasks.spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let hot =
                ((targets.len() as f64 * hot_fraction).ceil() as usize).clamp(1, targets.len());
            let mut out = Samples::new();
            let mut n: u64 = 0;
            while Instant::now() < deadline {
                let i = if rng.random_bool(hot_share) {
                    rng.random_range(0..hot)
                } else {
                    rng.random_range(0..targets.len())
                };
                let t = &targets[i];
                let read = rng.random_range(0..100u32) < read_percent;
                n += 1;
                let start = Instant::now();
                op(&db, &sql, &transit, &key, &cache, mode, t, read, n).await?;
                if record {
                    let us = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
                    out.push((read, us));
                }
            }
            Ok::<Samples, FleError>(out)
        });
    }
    let mut all = Samples::new();
    while let Some(done) = tasks.join_next().await {
        let s = done.map_err(|e| FleError::Internal(format!("workload client: {e}")))??;
        all.extend(s);
    }
    Ok(all)
}

#[allow(clippy::too_many_arguments)]
async fn op(
    db: &tokio_postgres::Client,
    sql: &Sql,
    transit: &crate::transit::Transit,
    key: &str,
    cache: &DecryptCache,
    mode: Mode,
    t: &Target,
    read: bool,
    n: u64,
) -> Result<(), FleError> {
    let ctx = t.ctx.as_deref().map(str::as_bytes);
    match (mode, read) {
        (Mode::Plain, true) => {
            let row = db.query_one(&sql.read_plain, &[&t.pk]).await?;
            let _: Option<String> = row.get(0);
        }
        (Mode::Plain, false) => {
            let v = format!("load{n}.{}@example.com", t.pk);
            db.execute(&sql.write_plain, &[&t.pk, &v]).await?;
        }
        (_, true) => {
            let row = db.query_one(&sql.read_enc, &[&t.pk]).await?;
            let Some(ct): Option<String> = row.get(0) else {
                return Err(FleError::Internal(format!(
                    "workload: primary key {} lost its ciphertext",
                    t.pk
                )));
            };
            let now = Instant::now();
            if mode == Mode::Cached && cache.get(&ct, ctx, now).is_some() {
                return Ok(());
            }
            let mut got = transit.decrypt(key, &[(ct.as_str(), ctx)]).await?;
            match got.pop() {
                Some(Ok(p)) => {
                    if mode == Mode::Cached {
                        cache.insert(&ct, ctx, &p, now);
                    }
                }
                Some(Err(e)) => {
                    return Err(FleError::Internal(format!(
                        "workload: primary key {} does not decrypt: {e}",
                        t.pk
                    )))
                }
                None => return Err(FleError::Internal("workload: empty decrypt answer".into())),
            }
        }
        (_, false) => {
            let v = format!("load{n}.{}@example.com", t.pk);
            let ct = transit
                .encrypt(key, &[(v.as_bytes(), ctx)])
                .await?
                .pop()
                .ok_or_else(|| FleError::Internal("workload: empty encrypt answer".into()))?;
            db.execute(&sql.write_enc, &[&t.pk, &ct]).await?;
            if mode == Mode::Cached {
                cache.insert(&ct, ctx, v.as_bytes(), Instant::now());
            }
        }
    }
    Ok(())
}

/// The `q`-quantile of sorted microseconds, in milliseconds.
fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    f64::from(sorted[i]) / 1000.0
}

fn summarize(mode: Mode, s: Samples, seconds: f64) -> ModeReport {
    let mut all: Vec<u32> = s.iter().map(|(_, us)| *us).collect();
    let mut reads: Vec<u32> = s.iter().filter(|(r, _)| *r).map(|(_, us)| *us).collect();
    let mut writes: Vec<u32> = s.iter().filter(|(r, _)| !*r).map(|(_, us)| *us).collect();
    all.sort_unstable();
    reads.sort_unstable();
    writes.sort_unstable();
    ModeReport {
        mode,
        ops: all.len() as u64,
        reads: reads.len() as u64,
        writes: writes.len() as u64,
        seconds,
        ops_per_sec: all.len() as f64 / seconds.max(1e-9),
        p50_ms: quantile_ms(&all, 0.50),
        p95_ms: quantile_ms(&all, 0.95),
        p99_ms: quantile_ms(&all, 0.99),
        read_p95_ms: quantile_ms(&reads, 0.95),
        write_p95_ms: quantile_ms(&writes, 0.95),
        cache_hit_ratio: None,
        p95_overhead: None,
    }
}

impl Report {
    /// The Markdown table that goes into docs/benchmarks.md.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| mode | ops/s | p50 ms | p95 ms | p99 ms | read p95 ms | write p95 ms | p95 overhead | cache hits |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for m in &self.modes {
            s += &format!(
                "| {:?} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |\n",
                m.mode,
                m.ops_per_sec,
                m.p50_ms,
                m.p95_ms,
                m.p99_ms,
                m.read_p95_ms,
                m.write_p95_ms,
                m.p95_overhead
                    .map(|o| format!("{:+.1} %", o * 100.0))
                    .unwrap_or_else(|| "—".into()),
                m.cache_hit_ratio
                    .map(|h| format!("{:.1} %", h * 100.0))
                    .unwrap_or_else(|| "—".into()),
            );
        }
        s += &format!(
            "\n({} clients, {} % reads, {:.0} % of operations on {:.1} % of {} sampled rows of {} in the table)\n",
            self.clients,
            self.read_percent,
            self.hot_share * 100.0,
            self.hot_fraction * 100.0,
            self.sampled_rows,
            self.table_rows
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.50), 50.0);
        assert_eq!(quantile_ms(&v, 0.95), 95.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&[7000], 0.95), 7.0);
        assert_eq!(quantile_ms(&[], 0.95), 0.0);
    }

    #[test]
    fn summary_splits_reads_and_writes() {
        let s: Samples = (0..100)
            .map(|i| (i % 10 != 0, if i % 10 == 0 { 9000 } else { 1000 }))
            .collect();
        let m = summarize(Mode::Encrypted, s, 2.0);
        assert_eq!((m.ops, m.reads, m.writes), (100, 90, 10));
        assert_eq!(m.ops_per_sec, 50.0);
        assert_eq!(m.read_p95_ms, 1.0);
        assert_eq!(m.write_p95_ms, 9.0);
        assert_eq!(m.p95_ms, 9.0);
    }
}
