//! `pii-fle verify`: every row's ciphertext decrypts to its plaintext (and
//! its blind index matches); `pii-fle cutover --drop-plaintext`: drops the
//! plaintext only after such a verify, under a lock.

use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::pipeline::{self, Row, Scan, Sink};
use crate::transit::Transit;
use crate::{job, schema, FleError, Run};

/// Primary keys listed per kind of failure (the counts are exact).
pub const LISTED: usize = 100;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Failures {
    pub count: u64,
    pub keys: Vec<String>,
}

impl Failures {
    fn add(&mut self, pk: &str) {
        self.count += 1;
        if self.keys.len() < LISTED {
            self.keys.push(pk.to_owned());
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Report {
    pub checked: u64,
    pub ok: u64,
    /// Plaintext set, ciphertext NULL (not yet encrypted, or cleared by an
    /// application's write).
    pub missing: Failures,
    /// Ciphertext set, plaintext NULL.
    pub orphaned: Failures,
    /// Decrypts, but not to the plaintext.
    pub mismatched: Failures,
    /// Does not decrypt (wrong key, context or version, tampered).
    pub undecryptable: Failures,
    /// Blind index missing or not the HMAC of the plaintext.
    pub blind_index: Failures,
    pub seconds: f64,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checked == self.ok
    }

    pub fn summary(&self) -> String {
        format!(
            "{} rows checked, {} ok; missing {}, orphaned {}, mismatched {}, undecryptable {}, \
             blind index {}",
            self.checked,
            self.ok,
            self.missing.count,
            self.orphaned.count,
            self.mismatched.count,
            self.undecryptable.count,
            self.blind_index.count
        )
    }
}

enum Outcome {
    Ok,
    Missing,
    Orphaned,
    Mismatched,
    Undecryptable,
    BlindIndex,
}

async fn check(
    t: &Transit,
    key: &str,
    bidx_key: Option<&str>,
    rows: Vec<Row>,
) -> Result<Vec<(String, Outcome)>, FleError> {
    let with_enc: Vec<&Row> = rows
        .iter()
        .filter(|r| r.enc.is_some() && r.plain.is_some())
        .collect();
    let items: Vec<(&str, Option<&[u8]>)> = with_enc
        .iter()
        .map(|r| (r.enc.as_deref().unwrap_or_default(), r.context()))
        .collect();
    let plain = if items.is_empty() {
        vec![]
    } else {
        t.decrypt(key, &items).await?
    };
    let bidx = match bidx_key {
        Some(k) if !with_enc.is_empty() => {
            let inputs: Vec<&[u8]> = with_enc
                .iter()
                .map(|r| r.plain.as_deref().unwrap_or_default().as_bytes())
                .collect();
            Some(t.hmac(k, &inputs).await?)
        }
        _ => None,
    };
    let mut decrypted = with_enc.iter().zip(plain).enumerate();
    let mut out = Vec::with_capacity(rows.len());
    let mut next = decrypted.next();
    for r in &rows {
        let outcome = match (&r.plain, &r.enc) {
            (Some(_), None) => Outcome::Missing,
            (None, Some(_)) => Outcome::Orphaned,
            (None, None) => Outcome::Ok,
            (Some(p), Some(_)) => {
                let Some((i, (_, got))) = next.take() else {
                    return Err(FleError::Internal("verify lost a row".into()));
                };
                next = decrypted.next();
                match got {
                    Err(_) => Outcome::Undecryptable,
                    Ok(g) if g.as_slice() != p.as_bytes() => Outcome::Mismatched,
                    Ok(_) => match &bidx {
                        Some(b) if r.bidx.as_deref() != Some(b[i].as_str()) => Outcome::BlindIndex,
                        _ => Outcome::Ok,
                    },
                }
            }
        };
        out.push((r.pk.clone(), outcome));
    }
    Ok(out)
}

struct Tally {
    report: Report,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    progress: crate::metrics::Progress,
}

impl Sink for Tally {
    type Item = Vec<(String, Outcome)>;

    async fn write(&mut self, batch: Self::Item) -> Result<(), FleError> {
        let r = &mut self.report;
        for (pk, o) in &batch {
            r.checked += 1;
            match o {
                Outcome::Ok => r.ok += 1,
                Outcome::Missing => r.missing.add(pk),
                Outcome::Orphaned => r.orphaned.add(pk),
                Outcome::Mismatched => r.mismatched.add(pk),
                Outcome::Undecryptable => r.undecryptable.add(pk),
                Outcome::BlindIndex => r.blind_index.add(pk),
            }
        }
        let bad = batch
            .iter()
            .filter(|(_, o)| !matches!(o, Outcome::Ok))
            .count() as u64;
        self.metrics.rows_verified.inc_by(batch.len() as u64);
        self.metrics.rows_mismatched.inc_by(bad);
        self.progress.add(batch.len() as u64);
        Ok(())
    }
}

/// Checks every row; records the outcome as job `verify:<table>.<column>`.
pub async fn verify(run: &Run) -> Result<Report, FleError> {
    let t0 = Instant::now();
    let plan = &run.plan;
    plan.require_migrated()?;
    let db = run.connect("pii-fle verify").await?;
    schema::ensure_jobs(&db, &run.plan).await?;
    let id = plan.job("verify");
    job::start(&db, &id, "verify", None).await?;
    let filter = format!("{} IS NOT NULL OR {} IS NOT NULL", plan.column, plan.enc);
    let total: i64 = db
        .query_one(
            &format!("SELECT count(*) FROM {} WHERE {filter}", plan.table),
            &[],
        )
        .await?
        .get(0);
    let scan = Scan::new(plan, &filter);
    let sink = Tally {
        report: Report::default(),
        metrics: run.metrics.clone(),
        progress: crate::metrics::Progress::new("verify", total as u64, run.quiet),
    };
    let t = &*run.transit;
    let key = run.key.as_str();
    let bidx_key = plan.bidx.is_some().then_some(run.bidx_key.as_str());
    let (sink, read) = pipeline::run(
        &db,
        &scan,
        None,
        run.batch,
        run.in_flight,
        &move |rows| check(t, key, bidx_key, rows),
        sink,
    )
    .await?;
    sink.progress.finish();
    run.metrics.rows_read.inc_by(read);
    let mut report = sink.report;
    report.seconds = t0.elapsed().as_secs_f64();
    let state = if report.passed() { "passed" } else { "failed" };
    job::finish(&db, &id, state, &json!(report)).await?;
    Ok(report)
}

/// With `drop_plaintext`: locks the table against writes, verifies every
/// row, and drops the plaintext column and its triggers in the same
/// transaction (readers go on until the drop takes its exclusive lock).
pub async fn cutover(run: &Run, drop_plaintext: bool) -> Result<Report, FleError> {
    if !drop_plaintext {
        return Err(FleError::Usage(format!(
            "cutover drops {}.{} for good: pass --drop-plaintext (after a dual-write period; \
             see docs/fle.md)",
            run.plan.table.label(),
            run.plan.column.name()
        )));
    }
    // Writers wait from here to the drop (SHARE blocks INSERT, UPDATE and
    // DELETE, not reads), so what the verify checks is what is dropped:
    // no write to either column, the context or a new row can slip in
    // between the verify and the drop.
    let plan = &run.plan;
    let mut db = run.connect("pii-fle cutover").await?;
    let tx = db.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '30s'; LOCK TABLE {} IN SHARE MODE",
        plan.table
    ))
    .await?;
    let report = verify(run).await?;
    if !report.passed() {
        return Err(FleError::VerifyFailed(report.summary()));
    }
    tx.batch_execute(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        plan.table
    ))
    .await?;
    // Nothing could change since the verify; a last, cheap check all the same.
    let left: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE {} IS NOT NULL AND {} IS NULL",
                plan.table, plan.column, plan.enc
            ),
            &[],
        )
        .await?
        .get(0);
    if left > 0 {
        return Err(FleError::VerifyFailed(format!(
            "{left} rows changed after the verify and have no ciphertext: run backfill, then \
             cutover again"
        )));
    }
    tx.batch_execute(&plan.drop_plaintext_sql()?).await?;
    tx.commit().await?;
    tracing::info!(table = %plan.table.label(), column = %plan.column.name(), "plaintext column dropped");
    Ok(report)
}
