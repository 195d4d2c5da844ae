//! What the tool works on: a table with a single-column primary key, a
//! text column to encrypt, and the columns, trigger and job table it adds
//! (the SQL is in `db/migrations/fle/`, rendered with quoted identifiers).

use tokio_postgres::GenericClient;

use crate::ident::{Ident, IdentError, Table};

const JOBS_SQL: &str = include_str!("../../../db/migrations/fle/001_jobs.sql");
const ENC_SQL: &str = include_str!("../../../db/migrations/fle/002_encrypted_column.sql");
const BIDX_SQL: &str = include_str!("../../../db/migrations/fle/003_blind_index.sql");

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Ident(#[from] IdentError),
    #[error("table {0} does not exist (or is not a table this user can see)")]
    NoTable(String),
    #[error("table {table} has no column {column}")]
    NoColumn { table: String, column: String },
    #[error("{table}.{column} is {ty}, not a text type (text, varchar, char)")]
    NotText {
        table: String,
        column: String,
        ty: String,
    },
    #[error("table {0} has no single-column primary key (keyset pagination needs one)")]
    NoPrimaryKey(String),
    #[error(
        "{table}.{column} already holds Transit ciphertext in {rows} of the first rows read: \
         it is encrypted, not plaintext"
    )]
    AlreadyCiphertext {
        table: String,
        column: String,
        rows: i64,
    },
    #[error("{table}.{column} does not exist: run `pii-fle backfill` first")]
    NotMigrated { table: String, column: String },
    #[error("postgres: {}", pii_pg::chain(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// The columns of one migration, resolved against the catalog.
#[derive(Clone, Debug)]
pub struct Plan {
    pub table: Table,
    pub pk: Ident,
    /// The primary key's SQL type (`bigint`, `uuid`, …), from the catalog.
    pub pk_type: String,
    pub column: Ident,
    pub enc: Ident,
    pub bidx: Option<Ident>,
    /// Column whose text value is each row's derivation context.
    pub context: Option<Ident>,
    /// Whether `enc` (and `bidx`) exist yet.
    pub migrated: bool,
}

/// Options that name the columns.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub enc_column: Option<String>,
    pub blind_index: bool,
    pub context_column: Option<String>,
}

impl Plan {
    /// Job name: `kind:table.column`.
    pub fn job(&self, kind: &str) -> String {
        format!("{kind}:{}.{}", self.table.label(), self.column.name())
    }

    /// Refuses a command that needs the encrypted column before it exists.
    pub fn require_migrated(&self) -> Result<(), SchemaError> {
        if self.migrated {
            return Ok(());
        }
        Err(SchemaError::NotMigrated {
            table: self.table.label(),
            column: self.enc.name().to_owned(),
        })
    }

    /// The SQL every write command applies first (idempotent).
    pub fn migration_sql(&self) -> Result<String, SchemaError> {
        let base = format!("{}_{}", self.table.name.name(), self.column.name());
        let f = Ident::new(&short(&format!("pii_fle_{base}_stale")))?;
        let t = Ident::new(&short(&format!("pii_fle_{base}_stale")))?;
        let mut sql = JOBS_SQL.to_owned();
        sql += &render(
            ENC_SQL,
            &[
                ("table", self.table.to_string()),
                ("column", self.column.to_string()),
                ("enc", self.enc.to_string()),
                ("function", schema_qualified(&self.table, &f)),
                ("trigger", t.to_string()),
            ],
        );
        if let Some(b) = &self.bidx {
            let f = Ident::new(&short(&format!("pii_fle_{base}_bidx_stale")))?;
            let i = Ident::new(&short(&format!(
                "{}_{}_idx",
                self.table.name.name(),
                b.name()
            )))?;
            sql += &render(
                BIDX_SQL,
                &[
                    ("table", self.table.to_string()),
                    ("column", self.column.to_string()),
                    ("bidx", b.to_string()),
                    ("index", i.to_string()),
                    ("function", schema_qualified(&self.table, &f)),
                    ("trigger", f.to_string()),
                ],
            );
        }
        Ok(sql)
    }

    /// SQL that removes the plaintext column and the triggers guarding it.
    pub fn drop_plaintext_sql(&self) -> Result<String, SchemaError> {
        let base = format!("{}_{}", self.table.name.name(), self.column.name());
        let mut sql = String::new();
        for name in [
            format!("pii_fle_{base}_stale"),
            format!("pii_fle_{base}_bidx_stale"),
        ] {
            let n = Ident::new(&short(&name))?;
            sql += &format!(
                "DROP TRIGGER IF EXISTS {n} ON {t};\nDROP FUNCTION IF EXISTS {f}();\n",
                t = self.table,
                f = schema_qualified(&self.table, &n)
            );
        }
        sql += &format!("ALTER TABLE {} DROP COLUMN {};\n", self.table, self.column);
        Ok(sql)
    }
}

/// Identifiers over 63 bytes would be truncated silently by PostgreSQL.
fn short(name: &str) -> String {
    name.chars().take(crate::ident::MAX_LEN).collect()
}

fn schema_qualified(t: &Table, name: &Ident) -> String {
    match &t.schema {
        Some(s) => format!("{s}.{name}"),
        None => name.to_string(),
    }
}

fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// Resolves names against the catalog and checks the column is plaintext
/// text in a table with a single-column primary key.
pub async fn inspect(
    db: &impl GenericClient,
    table: &Table,
    column: &Ident,
    names: &Names,
) -> Result<Plan, SchemaError> {
    let schema = table.schema.as_ref().map(|s| s.name().to_owned());
    let row = db
        .query_opt(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = $1 AND c.relkind IN ('r', 'p')
               AND n.nspname = COALESCE($2, current_schema())",
            &[&table.name.name(), &schema],
        )
        .await?;
    let Some(row) = row else {
        return Err(SchemaError::NoTable(table.label()));
    };
    let oid: u32 = row.get(0);
    let cols = db
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typcategory::text
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&oid],
        )
        .await?;
    let find = |name: &str| {
        cols.iter()
            .find(|r| r.get::<_, String>(0) == name)
            .map(|r| (r.get::<_, String>(1), r.get::<_, String>(2)))
    };
    let text_col = |c: &Ident| -> Result<bool, SchemaError> {
        match find(c.name()) {
            None => Ok(false),
            Some((_, cat)) if cat == "S" => Ok(true),
            Some((ty, _)) => Err(SchemaError::NotText {
                table: table.label(),
                column: c.name().to_owned(),
                ty,
            }),
        }
    };
    if !text_col(column)? {
        return Err(SchemaError::NoColumn {
            table: table.label(),
            column: column.name().to_owned(),
        });
    }
    let pk = db
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = $1 AND i.indisprimary",
            &[&oid],
        )
        .await?;
    if pk.len() != 1 {
        return Err(SchemaError::NoPrimaryKey(table.label()));
    }
    let enc = match &names.enc_column {
        Some(n) => Ident::new(n)?,
        None => column.with_suffix("_enc")?,
    };
    let bidx = names
        .blind_index
        .then(|| column.with_suffix("_bidx"))
        .transpose()?;
    let context = names
        .context_column
        .as_deref()
        .map(Ident::new)
        .transpose()?;
    if let Some(c) = &context {
        if find(c.name()).is_none() {
            return Err(SchemaError::NoColumn {
                table: table.label(),
                column: c.name().to_owned(),
            });
        }
    }
    let mut migrated = text_col(&enc)?;
    if let Some(b) = &bidx {
        migrated &= text_col(b)?;
    }
    Ok(Plan {
        table: table.clone(),
        pk: Ident::new(&pk[0].get::<_, String>(0))?,
        pk_type: pk[0].get(1),
        column: column.clone(),
        enc,
        bidx,
        context,
        migrated,
    })
}

/// Refuses a plaintext column whose first rows already look like Transit
/// ciphertext (a second backfill over an encrypted column, or the wrong
/// column named).
pub async fn refuse_ciphertext(db: &impl GenericClient, plan: &Plan) -> Result<(), SchemaError> {
    let sql = format!(
        "SELECT count(*) FROM (SELECT {c} FROM {t} WHERE {c} IS NOT NULL LIMIT 1000) s
         WHERE {c} ~ '^vault:v[0-9]+:'",
        c = plan.column,
        t = plan.table
    );
    let rows: i64 = db.query_one(&sql, &[]).await?.get(0);
    if rows > 0 {
        return Err(SchemaError::AlreadyCiphertext {
            table: plan.table.label(),
            column: plan.column.name().to_owned(),
            rows,
        });
    }
    Ok(())
}

/// Creates the job table if it is missing (commands that only read the
/// column still record their outcome there).
pub async fn ensure_jobs(db: &impl GenericClient) -> Result<(), SchemaError> {
    db.batch_execute(JOBS_SQL).await?;
    Ok(())
}

/// Applies the migration in one transaction (idempotent).
pub async fn migrate(db: &mut tokio_postgres::Client, plan: &mut Plan) -> Result<(), SchemaError> {
    let sql = plan.migration_sql()?;
    let tx = db.transaction().await?;
    tx.batch_execute(&sql).await?;
    tx.commit().await?;
    plan.migrated = true;
    Ok(())
}

/// Rows per key version of the encrypted column (`None`: not encrypted yet,
/// though the plaintext is set), for reports before and after a rotation.
pub async fn versions(
    db: &impl GenericClient,
    plan: &Plan,
) -> Result<Vec<(Option<i32>, i64)>, SchemaError> {
    plan.require_migrated()?;
    let sql = format!(
        "SELECT CASE WHEN {e} ~ '^vault:v[0-9]{{1,9}}:' THEN substring({e} from '^vault:v([0-9]+):')::int END v,
                count(*)
         FROM {t} WHERE {e} IS NOT NULL OR {c} IS NOT NULL GROUP BY 1 ORDER BY 1 NULLS FIRST",
        e = plan.enc,
        c = plan.column,
        t = plan.table
    );
    Ok(db
        .query(&sql, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_sql_quotes_every_name_and_fills_every_placeholder() {
        let plan = Plan {
            table: Table::parse("app.users").expect("ok"),
            pk: Ident::new("id").expect("ok"),
            pk_type: "bigint".into(),
            column: Ident::new("email").expect("ok"),
            enc: Ident::new("email_enc").expect("ok"),
            bidx: Some(Ident::new("email_bidx").expect("ok")),
            context: None,
            migrated: false,
        };
        let sql = plan.migration_sql().expect("sql");
        assert!(!sql.contains("{{"), "{sql}");
        assert!(sql
            .contains("ALTER TABLE \"app\".\"users\" ADD COLUMN IF NOT EXISTS \"email_enc\" text"));
        assert!(sql.contains("\"app\".\"pii_fle_users_email_stale\"()"));
        assert!(sql.contains("\"email_bidx\""));
        let drop = plan.drop_plaintext_sql().expect("sql");
        assert!(drop.ends_with("ALTER TABLE \"app\".\"users\" DROP COLUMN \"email\";\n"));
    }
}
