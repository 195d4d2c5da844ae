//! `pii-fle rotate`: rotate the key, rewrap every row below the new
//! version (resumable; a row an application rewrote meanwhile is left to
//! it), raise `min_decryption_version`, optionally trim old versions.
//!
//! A resumed rotation never rotates twice: the job records the version it
//! started from before it rotates, and on resume a key already past that
//! version is taken as rotated.

use std::time::Instant;

use serde_json::json;

use crate::pipeline::{self, Row};
use crate::transit::Transit;
use crate::{job, schema, FleError, Run};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub from_version: u32,
    pub to_version: u32,
    /// Rows per key version (`None`: plaintext without ciphertext).
    pub before: Vec<(Option<i32>, i64)>,
    pub after: Vec<(Option<i32>, i64)>,
    pub rewrapped: u64,
    pub skipped: u64,
    pub min_decryption_version: u32,
    pub trimmed: bool,
    pub seconds: f64,
}

pub struct Rewrapped {
    pks: Vec<String>,
    old: Vec<String>,
    new: Vec<String>,
}

async fn rewrap(t: &Transit, key: &str, to: u32, rows: Vec<Row>) -> Result<Rewrapped, FleError> {
    let items: Vec<(&str, Option<&[u8]>)> = rows
        .iter()
        .map(|r| (r.enc.as_deref().unwrap_or_default(), r.context()))
        .collect();
    let new = t.rewrap(key, &items).await?;
    // What goes into the row must be a new ciphertext at `to` or later: an
    // answer that echoes the old one, or names an older version, would let
    // min_decryption_version strand the row.
    for ((old, _), (n, r)) in items.iter().zip(new.iter().zip(&rows)) {
        if n == old || crate::transit::version_of(n).is_none_or(|v| v < to) {
            return Err(FleError::Transit(crate::transit::TransitError::BadAnswer {
                path: format!("rewrap/{key}"),
                why: format!(
                    "primary key {}: the rewrapped ciphertext is not at v{to} or later",
                    r.pk
                ),
            }));
        }
    }
    let (pks, old) = rows
        .into_iter()
        .map(|r| (r.pk, r.enc.unwrap_or_default()))
        .unzip();
    Ok(Rewrapped { pks, old, new })
}

impl pipeline::Batch for Rewrapped {
    fn pks(&self) -> &[String] {
        &self.pks
    }
    fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        vec![&self.pks, &self.old, &self.new]
    }
}

/// Options of a rotation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Rewrap to the current latest version without rotating first.
    pub no_rotate: bool,
    /// Delete key versions below the new one (irreversible).
    pub trim: bool,
}

pub async fn rotate(run: &Run, opts: Options) -> Result<Report, FleError> {
    let t0 = Instant::now();
    let plan = &run.plan;
    plan.require_migrated()?;
    let reader = run.connect("pii-fle reader").await?;
    schema::ensure_jobs(&reader, &run.plan).await?;
    let id = plan.job("rotate");
    let info = run.transit.key(&run.key).await?;
    let mut job = match job::load(&reader, &id).await? {
        Some(j) if j.state == "running" => {
            tracing::info!(job = %id, from = ?j.from_version, to = ?j.to_version, after = ?j.last_pk, "resuming");
            j
        }
        _ => job::start(&reader, &id, "rotate", Some(info.latest_version as i32)).await?,
    };
    let from = job.from_version.unwrap_or(info.latest_version as i32) as u32;
    let to = match job.to_version {
        Some(v) => v as u32,
        None => {
            let latest = if opts.no_rotate || info.latest_version > from {
                info.latest_version
            } else {
                run.transit.rotate(&run.key).await?;
                run.transit.key(&run.key).await?.latest_version
            };
            job::set_to_version(&reader, &id, latest as i32).await?;
            latest
        }
    };
    // Fresh statistics first: right after a backfill the planner still
    // thinks the ciphertext column is empty, and would answer every page by
    // a sequential scan and a sort (one full scan per batch) instead of
    // walking the primary key.
    if let Err(e) = reader
        .batch_execute(&format!("ANALYZE {}", plan.table))
        .await
    {
        tracing::warn!(error = %pii_pg::chain(&e), "ANALYZE failed; pages may be slow");
    }
    let before = schema::versions(&reader, plan).await?;
    tracing::info!(from, to, "rewrapping to version {to}");
    let filter = format!(
        "{e} ~ '^vault:v[0-9]{{1,9}}:' AND substring({e} from '^vault:v([0-9]+):')::int < {to}",
        e = plan.enc
    );
    let write_sql = format!(
        "UPDATE {t} AS t SET {e} = v.new
         FROM unnest($1::text[], $2::text[], $3::text[]) AS v(pk, old, new)
         WHERE t.{pk} = (v.pk)::{ty} AND t.{e} = v.old",
        t = plan.table,
        e = plan.enc,
        pk = plan.pk,
        ty = plan.pk_type,
    );
    let (t, key) = (&*run.transit, run.key.as_str());
    let p = pipeline::passes(
        run,
        &reader,
        &mut job,
        &filter,
        &write_sql,
        "rewrap",
        |rows| rewrap(t, key, to, rows),
    )
    .await?;
    let (rewrapped, skipped) = (p.written, p.skipped);
    // Every row is at `to` or later: older versions may stop decrypting.
    let info = run.transit.key(&run.key).await?;
    let mut min_dec = info.min_decryption_version;
    // A trim needs min_encryption_version set (Vault's rule): to `to`, the
    // version every row now has.
    let min_enc = (opts.trim && info.min_encryption_version < to).then_some(to);
    if min_dec < to || min_enc.is_some() {
        run.transit
            .set_min_versions(&run.key, to.max(min_dec), min_enc)
            .await?;
        min_dec = to.max(min_dec);
    }
    if opts.trim && info.min_available_version < to {
        run.transit.trim(&run.key, to).await?;
    }
    let after = schema::versions(&reader, plan).await?;
    let report = Report {
        from_version: from,
        to_version: to,
        before,
        after,
        rewrapped,
        skipped,
        min_decryption_version: min_dec,
        trimmed: opts.trim,
        seconds: t0.elapsed().as_secs_f64(),
    };
    job::finish(
        &reader,
        &id,
        "done",
        &json!({ "from": from, "to": to, "rewrapped": rewrapped, "skipped": skipped,
                 "min_decryption_version": min_dec, "trimmed": opts.trim }),
    )
    .await?;
    Ok(report)
}
