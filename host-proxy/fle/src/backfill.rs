//! `pii-fle backfill`: plaintext column → `<column>_enc` (and the blind
//! index), resumable and lost-update-free; `--dry-run` checks a sample.

use std::time::Instant;

use serde_json::json;

use crate::pipeline::{self, Row};
use crate::transit::Transit;
use crate::{job, schema, FleError, Run};

/// What a backfill did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// Rows encrypted and written by this run.
    pub written: u64,
    /// Rows an application changed between read and write (retried).
    pub skipped: u64,
    /// Passes made (the first may have resumed a crashed run).
    pub passes: i32,
    /// Where the first pass resumed, if it did.
    pub resumed_after: Option<String>,
    pub seconds: f64,
}

/// Checks the key exists (creating it if asked) and suits the column.
async fn check_key(run: &Run, create: bool) -> Result<(), FleError> {
    let derived = run.plan.context.is_some();
    for (key, is_bidx) in [(&run.key, false), (&run.bidx_key, true)] {
        if is_bidx && run.plan.bidx.is_none() {
            continue;
        }
        match run.transit.key(key).await {
            Ok(info) => {
                if !is_bidx && derived && !info.derived {
                    return Err(FleError::Usage(format!(
                        "key {key} is not derived, but --context-column asks for per-row \
                         contexts: create a key with derived=true"
                    )));
                }
                if !is_bidx && !derived && info.derived {
                    return Err(FleError::Usage(format!(
                        "key {key} is derived: name the context with --context-column"
                    )));
                }
            }
            Err(e) if e.is_not_found() && create => {
                tracing::info!(key = %key, "creating the Transit key");
                run.transit.create_key(key, derived && !is_bidx).await?;
            }
            Err(e) if e.is_not_found() => {
                return Err(FleError::Usage(format!(
                    "Transit key {key} does not exist: create it (bao write -f {}keys/{key}) \
                     or pass --create-key",
                    if derived && !is_bidx {
                        "-field=derived=true "
                    } else {
                        ""
                    }
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One batch, encrypted.
pub struct Encrypted {
    pks: Vec<String>,
    plains: Vec<String>,
    encs: Vec<String>,
    bidxs: Vec<Option<String>>,
    /// The contexts the ciphertexts were made under (the write checks the
    /// row still has them).
    ctxs: Vec<Option<String>>,
}

fn contexts(run_plan: &schema::Plan, rows: &[Row]) -> Result<(), FleError> {
    if let Some(c) = &run_plan.context {
        if let Some(r) = rows
            .iter()
            .find(|r| r.ctx.as_deref().is_none_or(str::is_empty))
        {
            return Err(FleError::Usage(format!(
                "row {}: context column {} is NULL or empty (a derived key needs a context)",
                r.pk,
                c.name()
            )));
        }
    }
    Ok(())
}

async fn encrypt(
    t: &Transit,
    key: &str,
    bidx_key: Option<&str>,
    plan: &schema::Plan,
    rows: Vec<Row>,
) -> Result<Encrypted, FleError> {
    contexts(plan, &rows)?;
    let items: Vec<(&[u8], Option<&[u8]>)> = rows
        .iter()
        .map(|r| {
            (
                r.plain.as_deref().unwrap_or_default().as_bytes(),
                r.context(),
            )
        })
        .collect();
    let (encs, bidxs) = match bidx_key {
        Some(k) => {
            let inputs: Vec<&[u8]> = items.iter().map(|(p, _)| *p).collect();
            let (e, b) = tokio::join!(t.encrypt(key, &items), t.hmac(k, &inputs));
            (e?, b?.into_iter().map(Some).collect())
        }
        None => (t.encrypt(key, &items).await?, vec![None; rows.len()]),
    };
    let mut pks = Vec::with_capacity(rows.len());
    let mut plains = Vec::with_capacity(rows.len());
    let mut ctxs = Vec::with_capacity(rows.len());
    for r in rows {
        pks.push(r.pk);
        plains.push(r.plain.unwrap_or_default());
        ctxs.push(r.ctx);
    }
    Ok(Encrypted {
        pks,
        plains,
        encs,
        bidxs,
        ctxs,
    })
}

impl pipeline::Batch for Encrypted {
    fn pks(&self) -> &[String] {
        &self.pks
    }
    fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        vec![&self.pks, &self.plains, &self.encs, &self.bidxs, &self.ctxs]
    }
}

/// The filter of rows still to encrypt.
fn todo_filter(plan: &schema::Plan) -> String {
    format!("{} IS NULL AND {} IS NOT NULL", plan.enc, plan.column)
}

pub async fn backfill(run: &mut Run, create_key: bool) -> Result<Report, FleError> {
    let t0 = Instant::now();
    check_key(run, create_key).await?;
    let mut reader = run.connect("pii-fle reader").await?;
    schema::refuse_ciphertext(&reader, &run.plan).await?;
    schema::migrate(&mut reader, &mut run.plan).await?;
    let plan = run.plan.clone();
    let id = plan.job("backfill");
    let mut job = match job::load(&reader, &id).await? {
        Some(j) if j.state == "running" => {
            tracing::info!(job = %id, pass = j.pass, after = ?j.last_pk, rows_done = j.rows_done, "resuming");
            j
        }
        _ => job::start(&reader, &id, "backfill", None).await?,
    };
    let mut report = Report {
        resumed_after: job.last_pk.clone(),
        ..Report::default()
    };
    let filter = todo_filter(&plan);
    let set_bidx = plan
        .bidx
        .as_ref()
        .map(|b| format!(", {b} = v.bidx"))
        .unwrap_or_default();
    // A ciphertext is bound to its row's context: written only if that is
    // unchanged too.
    let same_ctx = plan
        .context
        .as_ref()
        .map(|x| format!(" AND t.{x}::text IS NOT DISTINCT FROM v.ctx"))
        .unwrap_or_default();
    let write_sql = format!(
        "UPDATE {t} AS t SET {e} = v.enc{set_bidx}
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS v(pk, pt, enc, bidx, ctx)
         WHERE t.{pk} = (v.pk)::{ty} AND t.{c} IS NOT DISTINCT FROM v.pt AND t.{e} IS NULL{same_ctx}",
        t = plan.table,
        e = plan.enc,
        pk = plan.pk,
        ty = plan.pk_type,
        c = plan.column,
    );
    let bidx_key = plan.bidx.is_some().then_some(run.bidx_key.as_str());
    let (t, key) = (&*run.transit, run.key.as_str());
    let p = pipeline::passes(
        run,
        &reader,
        &mut job,
        &filter,
        &write_sql,
        "encrypt",
        |rows| encrypt(t, key, bidx_key, &plan, rows),
    )
    .await?;
    report.written = p.written;
    report.skipped = p.skipped;
    report.passes = p.passes;
    report.seconds = t0.elapsed().as_secs_f64();
    job::finish(
        &reader,
        &id,
        "done",
        &json!({ "written": report.written, "skipped": report.skipped, "passes": report.passes }),
    )
    .await?;
    Ok(report)
}

/// What a dry run found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DryRun {
    pub sampled: u64,
    pub round_tripped: u64,
    /// Primary keys whose value did not come back unchanged.
    pub failed: Vec<String>,
}

/// Encrypts a 1 % sample and checks each decrypts to its original;
/// writes nothing (not even the migration).
pub async fn dry_run(run: &Run) -> Result<DryRun, FleError> {
    check_key(run, false).await?;
    let db = run.connect("pii-fle dry run").await?;
    schema::refuse_ciphertext(&db, &run.plan).await?;
    let plan = &run.plan;
    let ctx = plan
        .context
        .as_ref()
        .map(|c| format!("{c}::text"))
        .unwrap_or_else(|| "NULL::text".into());
    let sql = format!(
        "SELECT {pk}::text, {c}::text, {ctx} FROM {t} TABLESAMPLE BERNOULLI (1)
         WHERE {c} IS NOT NULL LIMIT 100000",
        pk = plan.pk,
        c = plan.column,
        t = plan.table
    );
    let rows: Vec<Row> = db
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| Row {
            pk: r.get(0),
            plain: r.get(1),
            enc: None,
            bidx: None,
            ctx: r.get(2),
        })
        .collect();
    let mut out = DryRun::default();
    for chunk in rows.chunks(run.batch.max(1) as usize) {
        let e = encrypt(&run.transit, &run.key, None, plan, chunk.to_vec()).await?;
        let items: Vec<(&str, Option<&[u8]>)> = e
            .encs
            .iter()
            .zip(chunk)
            .map(|(c, r)| (c.as_str(), r.context()))
            .collect();
        let back = run.transit.decrypt(&run.key, &items).await?;
        for ((r, b), plain) in chunk.iter().zip(back).zip(&e.plains) {
            out.sampled += 1;
            match b {
                Ok(p) if p.as_slice() == plain.as_bytes() => out.round_tripped += 1,
                _ => out.failed.push(r.pk.clone()),
            }
        }
    }
    Ok(out)
}
