//! The shape every pass has: a keyset scan by primary key on one
//! connection, Transit calls for several batches in flight, and one writer
//! that applies batches in order on its own connection (so a checkpoint is
//! always the end of a contiguous, committed prefix).

use std::future::Future;

use futures_util::StreamExt as _;

use crate::schema::Plan;
use crate::FleError;

/// One row as scanned: every value as text.
#[derive(Clone, Debug)]
pub struct Row {
    pub pk: String,
    pub plain: Option<String>,
    pub enc: Option<String>,
    pub bidx: Option<String>,
    pub ctx: Option<String>,
}

impl Row {
    /// The derivation context: the context column's text, when configured.
    pub fn context(&self) -> Option<&[u8]> {
        self.ctx.as_deref().map(str::as_bytes)
    }
}

/// A keyset scan: rows matching `filter`, by primary key, `limit` at a time.
pub struct Scan {
    first: String,
    next: String,
}

impl Scan {
    /// `filter` is SQL over the table's columns (built from quoted
    /// identifiers and integers only).
    pub fn new(plan: &Plan, filter: &str) -> Scan {
        let null = "NULL::text".to_owned();
        let col = |c: Option<String>| c.unwrap_or_else(|| null.clone());
        let enc = plan.migrated.then(|| plan.enc.to_string());
        let bidx = plan
            .bidx
            .as_ref()
            .filter(|_| plan.migrated)
            .map(ToString::to_string);
        let ctx = plan.context.as_ref().map(|c| format!("{c}::text"));
        let select = format!(
            // Aliased: an output column named like the key (`"id"::text`
            // is named "id") would make ORDER BY sort by its text.
            "SELECT {pk}::text AS fle_pk, {c}::text AS fle_plain, {e} AS fle_enc, \
             {b} AS fle_bidx, {x} AS fle_ctx FROM {t}",
            pk = plan.pk,
            c = plan.column,
            e = col(enc),
            b = col(bidx),
            x = col(ctx),
            t = plan.table,
        );
        Scan {
            first: format!(
                "{select} WHERE ({filter}) ORDER BY {pk} LIMIT $1",
                pk = plan.pk
            ),
            next: format!(
                "{select} WHERE ({filter}) AND {pk} > ($2::text)::{ty} ORDER BY {pk} LIMIT $1",
                pk = plan.pk,
                ty = plan.pk_type
            ),
        }
    }

    async fn page(
        &self,
        db: &tokio_postgres::Client,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Row>, FleError> {
        let rows = match after {
            None => db.query(&self.first, &[&limit]).await?,
            Some(pk) => db.query(&self.next, &[&limit, &pk]).await?,
        };
        // try_get: a server that answers other types or a NULL key is an
        // error, not a panic.
        rows.iter()
            .map(|r| {
                Ok(Row {
                    pk: r.try_get(0)?,
                    plain: r.try_get(1)?,
                    enc: r.try_get(2)?,
                    bidx: r.try_get(3)?,
                    ctx: r.try_get(4)?,
                })
            })
            .collect()
    }
}

/// Where processed batches go, one at a time, in scan order.
pub trait Sink: Send + 'static {
    type Item: Send + 'static;
    fn write(&mut self, item: Self::Item) -> impl Future<Output = Result<(), FleError>> + Send;
}

/// Runs one pass: scan from after `start`, `process` up to `in_flight`
/// batches at once, `sink` them in order. Returns the sink and the rows read.
pub async fn run<S, P, F>(
    db: &tokio_postgres::Client,
    scan: &Scan,
    start: Option<String>,
    batch: i64,
    in_flight: usize,
    process: &P,
    sink: S,
) -> Result<(S, u64), FleError>
where
    S: Sink,
    P: Fn(Vec<Row>) -> F,
    F: Future<Output = Result<S::Item, FleError>>,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<S::Item>(in_flight.max(1));
    let writer = tokio::spawn(async move {
        let mut sink = sink;
        while let Some(item) = rx.recv().await {
            sink.write(item).await?;
        }
        Ok::<S, FleError>(sink)
    });
    // Pages, read one after another (each starts after the last key read).
    let pages = futures_util::stream::try_unfold((start, false), |(after, done)| async move {
        if done {
            return Ok(None);
        }
        let rows = scan.page(db, after.as_deref(), batch).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let last = rows.last().map(|r| r.pk.clone());
        let done = (rows.len() as i64) < batch;
        Ok::<_, FleError>(Some((rows, (last, done))))
    });
    let read = std::sync::atomic::AtomicU64::new(0);
    let done = pages
        .map(|page| {
            let page = page.inspect(|rows| {
                read.fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
            });
            async move { process(page?).await }
        })
        .buffered(in_flight.max(1));
    let mut done = std::pin::pin!(done);
    let mut failure = None;
    while let Some(item) = done.next().await {
        match item {
            Ok(item) => {
                if tx.send(item).await.is_err() {
                    break; // the writer stopped: its error is below
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| FleError::Internal(e.to_string()))?;
    match (failure, written) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(e),
        (None, Ok(sink)) => Ok((sink, read.load(std::sync::atomic::Ordering::Relaxed))),
    }
}

/// A processed batch that one prepared statement writes: its primary keys
/// (in scan order) and the statement's parameters.
pub trait Batch: Send + 'static {
    fn pks(&self) -> &[String];
    fn params(&self) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)>;
}

/// Writes batches with `stmt`, each in a transaction with its checkpoint;
/// rows the statement's guard did not match count as skipped.
pub struct Writer<B> {
    db: tokio_postgres::Client,
    stmt: tokio_postgres::Statement,
    job: crate::job::JobId,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    progress: crate::metrics::Progress,
    rate: Option<f64>,
    latency: Option<crate::LatencyBudget>,
    started: std::time::Instant,
    written: u64,
    skipped: u64,
    _batch: std::marker::PhantomData<fn(B)>,
}

impl<B: Batch> Sink for Writer<B> {
    type Item = B;

    async fn write(&mut self, b: B) -> Result<(), FleError> {
        let Some(last) = b.pks().last().cloned() else {
            return Ok(());
        };
        let t0 = std::time::Instant::now();
        let tx = self.db.transaction().await?;
        let n = tx.execute(&self.stmt, &b.params()).await?;
        let skipped = (b.pks().len() as u64).checked_sub(n).ok_or_else(|| {
            FleError::Internal(format!(
                "the database reports {n} rows updated for a batch of {}",
                b.pks().len()
            ))
        })?;
        crate::job::advance(&tx, &self.job, &last, n as i64, skipped as i64).await?;
        tx.commit().await?;
        let took = t0.elapsed();
        self.written += n;
        self.skipped += skipped;
        self.metrics.rows_written.inc_by(n);
        self.metrics.rows_skipped.inc_by(skipped);
        self.metrics.batches.inc();
        self.progress.add(b.pks().len() as u64);
        if skipped > 0 {
            tracing::debug!(
                rows = skipped,
                "rows changed since read: retried in a later pass"
            );
        }
        crate::throttle(self.rate, self.started, self.written).await;
        if let Some(budget) = &mut self.latency {
            let pause = budget.observe(took);
            self.metrics
                .throttle_pause_ms
                .set(i64::try_from(pause.as_millis()).unwrap_or(i64::MAX));
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        Ok(())
    }
}

/// Totals of [`passes`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Passes {
    pub written: u64,
    pub skipped: u64,
    pub passes: i32,
}

/// Passes over the rows matching `filter` until none is left: each pass
/// resumes after the job's checkpoint, then starts over from the first row
/// (rows skipped because an application changed them are met again). After
/// `run.max_passes`, the job is marked incomplete.
pub async fn passes<B, P, F>(
    run: &crate::Run,
    reader: &tokio_postgres::Client,
    job: &mut crate::job::Job,
    filter: &str,
    write_sql: &str,
    what: &'static str,
    process: P,
) -> Result<Passes, FleError>
where
    B: Batch,
    P: Fn(Vec<Row>) -> F,
    F: Future<Output = Result<B, FleError>>,
{
    let plan = &run.plan;
    let scan = Scan::new(plan, filter);
    let count_sql = format!("SELECT count(*) FROM {} WHERE {filter}", plan.table);
    let mut db = run.connect("pii-fle writer").await?;
    // A batch's rows and its checkpoint commit together, so a commit that a
    // crash of PostgreSQL itself loses (asynchronous commit loses at most
    // the last moments' transactions, never part of one) is a batch the
    // next run simply does again: nothing written twice, nothing lost. So
    // the writer does not wait for the WAL flush of every batch.
    db.batch_execute("SET synchronous_commit = off").await?;
    let stmt = db.prepare(write_sql).await?;
    let mut total = Passes::default();
    loop {
        let remaining: i64 = reader.query_one(&count_sql, &[]).await?.get(0);
        run.metrics.rows_remaining.set(remaining);
        if remaining == 0 {
            return Ok(total);
        }
        if job.pass > run.max_passes {
            crate::job::finish(
                reader,
                &job.id,
                "incomplete",
                &serde_json::json!({ "remaining": remaining, "written": total.written }),
            )
            .await?;
            return Err(FleError::Incomplete {
                rows: remaining,
                passes: run.max_passes,
            });
        }
        tracing::info!(what, pass = job.pass, rows = remaining, "pass");
        let sink = Writer {
            db,
            stmt: stmt.clone(),
            job: job.id.clone(),
            metrics: run.metrics.clone(),
            progress: crate::metrics::Progress::new(what, remaining as u64, run.quiet),
            rate: run.rows_per_sec,
            latency: run.latency_budget.map(crate::LatencyBudget::new),
            started: std::time::Instant::now(),
            written: 0,
            skipped: 0,
            _batch: std::marker::PhantomData,
        };
        let (sink, read) = self::run(
            reader,
            &scan,
            job.last_pk.take(),
            run.batch,
            run.in_flight,
            &process,
            sink,
        )
        .await?;
        sink.progress.finish();
        run.metrics.rows_read.inc_by(read);
        total.written += sink.written;
        total.skipped += sink.skipped;
        total.passes += 1;
        db = sink.db;
        crate::job::next_pass(reader, &job.id).await?;
        job.pass += 1;
    }
}
