//! Checkpoints in `pii_fle_jobs`: read at start, advanced in the same
//! transaction as each batch's row writes.

use tokio_postgres::GenericClient;

/// Which job: its row's key, and the job table it lives in, schema-qualified
/// (the tool's sessions resolve no name through `search_path`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobId {
    /// `"schema".pii_fle_jobs`, quoted.
    pub table: String,
    /// `kind:schema.table.column`.
    pub id: String,
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.id)
    }
}

/// A job's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub state: String,
    pub last_pk: Option<String>,
    pub pass: i32,
    pub rows_done: i64,
    pub rows_skipped: i64,
    pub from_version: Option<i32>,
    pub to_version: Option<i32>,
}

pub async fn load(
    db: &impl GenericClient,
    id: &JobId,
) -> Result<Option<Job>, tokio_postgres::Error> {
    let row = db
        .query_opt(
            &format!(
                "SELECT state, last_pk, pass, rows_done, rows_skipped, from_version, to_version
                 FROM {} WHERE job = $1",
                id.table
            ),
            &[&id.id],
        )
        .await?;
    // try_get: a job table altered by hand (other types) is an error, not a panic.
    row.map(|r| {
        Ok(Job {
            id: id.clone(),
            state: r.try_get(0)?,
            last_pk: r.try_get(1)?,
            pass: r.try_get(2)?,
            rows_done: r.try_get(3)?,
            rows_skipped: r.try_get(4)?,
            from_version: r.try_get(5)?,
            to_version: r.try_get(6)?,
        })
    })
    .transpose()
}

/// Starts the job afresh (a new run after a finished one, or the first).
pub async fn start(
    db: &impl GenericClient,
    id: &JobId,
    kind: &str,
    from_version: Option<i32>,
) -> Result<Job, tokio_postgres::Error> {
    db.execute(
        &format!(
            "INSERT INTO {} (job, kind, state, from_version)
             VALUES ($1, $2, 'running', $3)
             ON CONFLICT (job) DO UPDATE SET state = 'running', last_pk = NULL, pass = 1,
                 rows_done = 0, rows_skipped = 0, from_version = $3, to_version = NULL,
                 detail = NULL, started_at = now(), updated_at = now(), finished_at = NULL",
            id.table
        ),
        &[&id.id, &kind, &from_version],
    )
    .await?;
    Ok(Job {
        id: id.clone(),
        state: "running".into(),
        last_pk: None,
        pass: 1,
        rows_done: 0,
        rows_skipped: 0,
        from_version,
        to_version: None,
    })
}

/// Records a batch: inside the transaction that wrote its rows.
pub async fn advance(
    tx: &impl GenericClient,
    id: &JobId,
    last_pk: &str,
    done: i64,
    skipped: i64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        &format!(
            "UPDATE {} SET last_pk = $2, rows_done = rows_done + $3,
                 rows_skipped = rows_skipped + $4, updated_at = now() WHERE job = $1",
            id.table
        ),
        &[&id.id, &last_pk, &done, &skipped],
    )
    .await
    .map(drop)
}

/// A new pass from the first row (rows skipped in the last one are retried).
pub async fn next_pass(db: &impl GenericClient, id: &JobId) -> Result<(), tokio_postgres::Error> {
    db.execute(
        &format!(
            "UPDATE {} SET last_pk = NULL, pass = pass + 1, updated_at = now() WHERE job = $1",
            id.table
        ),
        &[&id.id],
    )
    .await
    .map(drop)
}

pub async fn set_to_version(
    db: &impl GenericClient,
    id: &JobId,
    v: i32,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        &format!(
            "UPDATE {} SET to_version = $2, updated_at = now() WHERE job = $1",
            id.table
        ),
        &[&id.id, &v],
    )
    .await
    .map(drop)
}

/// Ends the job with `state` (`done`, `passed`, `failed`, `incomplete`) and a
/// JSON summary (counts and primary keys, never values).
pub async fn finish(
    db: &impl GenericClient,
    id: &JobId,
    state: &str,
    detail: &serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    let detail = detail.to_string();
    db.execute(
        &format!(
            "UPDATE {} SET state = $2, detail = $3::text::jsonb, updated_at = now(),
                 finished_at = now() WHERE job = $1",
            id.table
        ),
        &[&id.id, &state, &detail],
    )
    .await
    .map(drop)
}
