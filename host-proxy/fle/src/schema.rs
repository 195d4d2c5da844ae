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
    #[error(
        "--context-column {0}: the context must be another column than the plaintext, \
         ciphertext or blind index (cut-over drops the plaintext, and every row would lose \
         the context its ciphertext needs); the primary key is the usual choice"
    )]
    BadContext(String),
    #[error(
        "encrypted column {0}: it holds values that are not Transit ciphertexts, or is the \
         plaintext, context or primary key column; name a new column with --enc-column"
    )]
    BadEncColumn(String),
    #[error(
        "{object} belongs to role {owner:?}, not to this role or the table's owner ({why}); \
         another role made it first, so pii-fle will not use it: drop it or have its owner check it"
    )]
    ForeignObject {
        object: String,
        owner: String,
        why: &'static str,
    },
    #[error("{object}: {why}; pii-fle will not use it")]
    Tampered { object: String, why: &'static str },
    #[error("{table}.{column} does not exist: run `pii-fle backfill` first")]
    NotMigrated { table: String, column: String },
    #[error("postgres: {}{}", pii_pg::chain(.0), crate::search_path_hint(.0))]
    Db(#[from] tokio_postgres::Error),
}

/// The columns of one migration, resolved against the catalog.
#[derive(Clone, Debug)]
pub struct Plan {
    pub table: Table,
    /// The table's catalog oid (ownership checks).
    pub oid: u32,
    /// `--table` was typed without a schema: objects made by pii-fle before
    /// names were schema-resolved carry the unqualified name's hash (their
    /// legacy names, dropped when the current ones are created).
    pub typed_unqualified: bool,
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
    /// Job name: `kind:schema.table.column`, in the table's schema's job table.
    pub fn job(&self, kind: &str) -> crate::job::JobId {
        crate::job::JobId {
            table: self.jobs_table(),
            id: format!("{kind}:{}.{}", self.table.label(), self.column.name()),
        }
    }

    /// The job table, in the migrated table's schema.
    pub fn jobs_table(&self) -> String {
        match &self.table.schema {
            Some(s) => format!("{s}.pii_fle_jobs"),
            None => "pii_fle_jobs".into(),
        }
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

    /// The name of one of this column's database objects: readable, unique
    /// per (schema, table, column) and within PostgreSQL's 63 bytes (a
    /// truncated name could collide with another column's object).
    fn object(&self, what: &str) -> Result<Ident, SchemaError> {
        self.object_in(
            self.table.schema.as_ref().map(Ident::name).unwrap_or(""),
            what,
        )
    }

    /// The name [`Plan::object`] gave before unqualified tables were
    /// resolved to their schema, if it differs from today's.
    fn legacy_object(&self, what: &str) -> Result<Option<Ident>, SchemaError> {
        if !self.typed_unqualified {
            return Ok(None);
        }
        let old = self.object_in("", what)?;
        Ok((old != self.object(what)?).then_some(old))
    }

    fn object_in(&self, schema: &str, what: &str) -> Result<Ident, SchemaError> {
        let base = format!("{}_{}", self.table.name.name(), self.column.name());
        let id = format!(
            "{}\0{}\0{}",
            schema,
            self.table.name.name(),
            self.column.name()
        );
        let readable: String = base.chars().take(34).collect();
        Ok(Ident::new(&format!(
            "pii_fle_{readable}_{:08x}_{what}",
            fnv1a32(id.as_bytes())
        ))?)
    }

    /// The SQL every write command applies first (idempotent).
    pub fn migration_sql(&self) -> Result<String, SchemaError> {
        let mut sql = render(JOBS_SQL, &[("jobs", self.jobs_table())]);
        sql += &self.drop_legacy_sql()?;
        let context_changed = self
            .context
            .as_ref()
            .map(|c| format!(" OR NEW.{c}::text IS DISTINCT FROM OLD.{c}::text"))
            .unwrap_or_default();
        let f = self.object("stale")?;
        sql += &render(
            ENC_SQL,
            &[
                ("table", self.table.to_string()),
                ("column", self.column.to_string()),
                ("derived", self.enc.to_string()),
                ("context_changed", context_changed),
                ("function", schema_qualified(&self.table, &f)),
                ("trigger", f.to_string()),
            ],
        );
        if let Some(b) = &self.bidx {
            let f = self.object("bidx_stale")?;
            sql += &render(
                ENC_SQL,
                &[
                    ("table", self.table.to_string()),
                    ("column", self.column.to_string()),
                    ("derived", b.to_string()),
                    ("context_changed", String::new()),
                    ("function", schema_qualified(&self.table, &f)),
                    ("trigger", f.to_string()),
                ],
            );
            sql += &render(
                BIDX_SQL,
                &[
                    ("table", self.table.to_string()),
                    ("bidx", b.to_string()),
                    ("index", self.object("bidx_idx")?.to_string()),
                ],
            );
        }
        Ok(sql)
    }

    /// SQL that drops the triggers, functions and index an earlier pii-fle
    /// made under their legacy names (empty when there are none).
    fn drop_legacy_sql(&self) -> Result<String, SchemaError> {
        let mut sql = String::new();
        for what in ["stale", "bidx_stale"] {
            if let Some(n) = self.legacy_object(what)? {
                sql += &format!(
                    "DROP TRIGGER IF EXISTS {n} ON {t};\nDROP FUNCTION IF EXISTS {f}();\n",
                    t = self.table,
                    f = schema_qualified(&self.table, &n)
                );
            }
        }
        if let Some(n) = self.legacy_object("bidx_idx")? {
            sql += &format!(
                "DROP INDEX IF EXISTS {};\n",
                schema_qualified(&self.table, &n)
            );
        }
        Ok(sql)
    }

    /// SQL that removes the plaintext column and the triggers guarding it.
    pub fn drop_plaintext_sql(&self) -> Result<String, SchemaError> {
        let mut sql = self.drop_legacy_sql()?;
        for what in ["stale", "bidx_stale"] {
            let n = self.object(what)?;
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

/// FNV-1a (32 bits): a short, stable tag for object names (not security).
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
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
    // An unqualified table is the one in the session's first schema
    // (`current_schema()` of the role's default search_path, read before the
    // tool's sessions pin theirs to pg_catalog); from here on every name
    // the tool writes into SQL carries that schema.
    let row = db
        .query_opt(
            "SELECT c.oid, n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relname = $1 AND c.relkind IN ('r', 'p')
               AND n.nspname = COALESCE($2, current_schema())",
            &[&table.name.name(), &schema],
        )
        .await?;
    let Some(row) = row else {
        return Err(SchemaError::NoTable(table.label()));
    };
    let oid: u32 = row.try_get(0)?;
    let typed_unqualified = table.schema.is_none();
    let table = &Table {
        schema: Some(Ident::new(&row.try_get::<_, String>(1)?)?),
        name: table.name.clone(),
    };
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
        // The context must outlive the plaintext (cut-over drops that) and
        // must not be a column the tool writes.
        if c == column || *c == enc || bidx.as_ref() == Some(c) {
            return Err(SchemaError::BadContext(c.name().to_owned()));
        }
    }
    if enc == *column || context.as_ref() == Some(&enc) || enc.name() == pk[0].get::<_, String>(0) {
        return Err(SchemaError::BadEncColumn(enc.name().to_owned()));
    }
    let mut migrated = text_col(&enc)?;
    if migrated {
        // An existing <column>_enc holds ciphertexts or nothing: a data
        // column named by mistake would be overwritten and, through the
        // trigger, cleared by every application write.
        let foreign: i64 = db
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {enc} IS NOT NULL \
                     AND {enc} !~ '^vault:v[0-9]+:' LIMIT 1) x"
                ),
                &[],
            )
            .await?
            .get(0);
        if foreign > 0 {
            return Err(SchemaError::BadEncColumn(enc.name().to_owned()));
        }
    }
    if let Some(b) = &bidx {
        migrated &= text_col(b)?;
    }
    Ok(Plan {
        table: table.clone(),
        oid,
        typed_unqualified,
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
pub async fn ensure_jobs(db: &impl GenericClient, plan: &Plan) -> Result<(), SchemaError> {
    db.batch_execute(&render(JOBS_SQL, &[("jobs", plan.jobs_table())]))
        .await?;
    check_jobs_table(db, plan).await
}

/// Applies the migration in one transaction (idempotent), and refuses
/// (rolling it back) when an object it would rely on is another role's.
pub async fn migrate(db: &mut tokio_postgres::Client, plan: &mut Plan) -> Result<(), SchemaError> {
    let sql = plan.migration_sql()?;
    let tx = db.transaction().await?;
    tx.batch_execute(&sql).await?;
    check_jobs_table(&tx, plan).await?;
    check_objects(&tx, plan).await?;
    tx.commit().await?;
    plan.migrated = true;
    Ok(())
}

/// The roles whose objects pii-fle trusts: itself and the table's owner.
async fn trusted(db: &impl GenericClient, plan: &Plan) -> Result<[String; 2], SchemaError> {
    let r = db
        .query_one(
            "SELECT current_user::text, pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = $1",
            &[&plan.oid],
        )
        .await?;
    Ok([r.try_get(0)?, r.try_get(1)?])
}

/// The owner of the table's schema can drop and recreate anything in it
/// (the job table after its check, the trigger functions, the table
/// itself), so pii-fle has to trust it, and says so when it is neither this
/// role, the table's owner nor a superuser. For `public` on PostgreSQL 15
/// and later that is `pg_database_owner`: the database's owner. A warning,
/// not a refusal: on managed databases the database's owner is often an
/// administrator the operator trusts anyway.
pub async fn warn_untrusted_schema_owner(
    db: &impl GenericClient,
    plan: &Plan,
) -> Result<(), SchemaError> {
    let r = db
        .query_one(
            "SELECT n.nspname::text,
                    pg_get_userbyid(CASE WHEN o.rolname = 'pg_database_owner' THEN d.datdba
                                         ELSE n.nspowner END)::text,
                    (SELECT rolsuper FROM pg_roles
                      WHERE oid = CASE WHEN o.rolname = 'pg_database_owner' THEN d.datdba
                                       ELSE n.nspowner END)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_roles o ON o.oid = n.nspowner
             JOIN pg_database d ON d.datname = current_database()
             WHERE c.oid = $1",
            &[&plan.oid],
        )
        .await?;
    let (schema, owner): (String, String) = (r.try_get(0)?, r.try_get(1)?);
    let superuser: Option<bool> = r.try_get(2)?;
    if !superuser.unwrap_or(false) && !trusted(db, plan).await?.contains(&owner) {
        tracing::warn!(
            schema,
            owner,
            "the table's schema belongs to another role, which can drop and recreate the objects \
             pii-fle checks (job table, trigger functions): it must be trusted as much as this role"
        );
    }
    Ok(())
}

/// `CREATE TABLE IF NOT EXISTS` keeps a job table someone else made first
/// (in a schema where other roles may create objects): its triggers or
/// rules would then run, as this role, on every checkpoint, inside the
/// transaction that writes a batch. The job table must be an ordinary table
/// of a trusted role with no trigger, rule or row security.
async fn check_jobs_table(db: &impl GenericClient, plan: &Plan) -> Result<(), SchemaError> {
    let object = plan.jobs_table();
    let r = db
        .query_one(
            "SELECT c.relkind::text, pg_get_userbyid(c.relowner)::text,
                    EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid),
                    c.relrowsecurity,
                    (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
             FROM pg_class c WHERE c.oid = to_regclass($1)",
            &[&object],
        )
        .await?;
    let (kind, owner): (String, String) = (r.try_get(0)?, r.try_get(1)?);
    let (rules, rls, triggers): (bool, bool, i64) = (r.try_get(2)?, r.try_get(3)?, r.try_get(4)?);
    if !trusted(db, plan).await?.contains(&owner) {
        return Err(SchemaError::ForeignObject {
            object,
            owner,
            why: "the job table",
        });
    }
    let why = if kind != "r" {
        Some("not an ordinary table")
    } else if rules || rls || triggers > 0 {
        Some("it has triggers, rules or row security")
    } else {
        None
    };
    match why {
        Some(why) => Err(SchemaError::Tampered { object, why }),
        None => Ok(()),
    }
}

/// `CREATE OR REPLACE FUNCTION` keeps the owner of a function someone else
/// made first under the same (predictable) name, who could then redefine
/// it to see every plaintext an application writes; `CREATE INDEX IF NOT
/// EXISTS` skips when any relation has the index's name. The trigger
/// functions must be a trusted role's, the index must be on the table.
async fn check_objects(db: &impl GenericClient, plan: &Plan) -> Result<(), SchemaError> {
    let trusted = trusted(db, plan).await?;
    let mut functions = vec![plan.object("stale")?];
    if plan.bidx.is_some() {
        functions.push(plan.object("bidx_stale")?);
    }
    for f in functions {
        let object = format!("{}()", schema_qualified(&plan.table, &f));
        let owner: Option<String> = db
            .query_one(
                "SELECT pg_get_userbyid(proowner)::text FROM pg_proc WHERE oid = to_regprocedure($1)",
                &[&object],
            )
            .await?
            .try_get(0)?;
        let owner = owner.unwrap_or_default();
        if !trusted.contains(&owner) {
            return Err(SchemaError::ForeignObject {
                object,
                owner,
                why: "a trigger function",
            });
        }
    }
    if plan.bidx.is_some() {
        let object = schema_qualified(&plan.table, &plan.object("bidx_idx")?);
        let on: Option<u32> = db
            .query_opt(
                "SELECT indrelid FROM pg_index WHERE indexrelid = to_regclass($1)",
                &[&object],
            )
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if on != Some(plan.oid) {
            return Err(SchemaError::Tampered {
                object,
                why: "a relation of this name exists and is not the blind index of the table",
            });
        }
    }
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

    /// `table.email` → `email_enc` and `email_bidx`, keyed by `id`.
    fn users(table: &str) -> Plan {
        Plan {
            table: Table::parse(table).expect("ok"),
            oid: 0,
            typed_unqualified: false,
            pk: Ident::new("id").expect("ok"),
            pk_type: "bigint".into(),
            column: Ident::new("email").expect("ok"),
            enc: Ident::new("email_enc").expect("ok"),
            bidx: Some(Ident::new("email_bidx").expect("ok")),
            context: None,
            migrated: false,
        }
    }

    #[test]
    fn migration_sql_quotes_every_name_and_fills_every_placeholder() {
        let plan = users("app.users");
        let sql = plan.migration_sql().expect("sql");
        assert!(!sql.contains("{{"), "{sql}");
        assert!(sql
            .contains("ALTER TABLE \"app\".\"users\" ADD COLUMN IF NOT EXISTS \"email_enc\" text"));
        let stale = plan.object("stale").expect("name");
        assert!(sql.contains(&format!("\"app\".{stale}()")), "{sql}");
        assert!(stale.name().starts_with("pii_fle_users_email_"));
        assert!(sql.contains("\"email_bidx\""));
        let drop = plan.drop_plaintext_sql().expect("sql");
        assert!(drop.contains(&format!("DROP TRIGGER IF EXISTS {stale} ON")));
        assert!(drop.contains(&plan.object("bidx_stale").expect("name").to_string()));
        assert!(drop.ends_with("ALTER TABLE \"app\".\"users\" DROP COLUMN \"email\";\n"));
        // A context column is watched by the ciphertext's trigger only.
        let with_ctx = Plan {
            context: Some(Ident::new("id").expect("ok")),
            ..plan.clone()
        };
        let sql = with_ctx.migration_sql().expect("sql");
        assert_eq!(
            sql.matches("OR NEW.\"id\"::text IS DISTINCT FROM").count(),
            1,
            "{sql}"
        );
    }

    #[test]
    fn objects_made_under_legacy_names_are_dropped() {
        let plan = |typed_unqualified| Plan {
            typed_unqualified,
            ..users("public.users")
        };
        // Before names were schema-resolved, `--table users` hashed "".
        let old = plan(true).object_in("", "stale").expect("name");
        assert_ne!(old, plan(true).object("stale").expect("name"));
        for sql in [
            plan(true).migration_sql().expect("sql"),
            plan(true).drop_plaintext_sql().expect("sql"),
        ] {
            assert!(
                sql.contains(&format!("DROP TRIGGER IF EXISTS {old} ON")),
                "{sql}"
            );
            assert!(sql.contains(&format!("DROP FUNCTION IF EXISTS \"public\".{old}()")));
        }
        let idx = plan(true).object_in("", "bidx_idx").expect("name");
        assert!(plan(true)
            .migration_sql()
            .expect("sql")
            .contains(&format!("DROP INDEX IF EXISTS \"public\".{idx}")));
        // Typed with its schema: nothing legacy.
        assert!(!plan(false)
            .migration_sql()
            .expect("sql")
            .contains(&old.to_string()));
    }

    #[test]
    fn object_names_never_collide_or_overflow() {
        let plan = |t: &str, c: &str| Plan {
            column: Ident::new(c).expect("ok"),
            enc: Ident::new("x_enc").expect("ok"),
            bidx: None,
            ..users(t)
        };
        // Same underscore-joined text, different (table, column).
        let a = plan("a_b", "c").object("stale").expect("name");
        let b = plan("a", "b_c").object("stale").expect("name");
        assert_ne!(a, b);
        // Long names: the ciphertext's and the blind index's objects differ
        // and fit in 63 bytes.
        let long = plan(&"t".repeat(60), &"c".repeat(60));
        let (s, bs) = (
            long.object("stale").expect("n"),
            long.object("bidx_stale").expect("n"),
        );
        assert_ne!(s, bs);
        assert!(s.name().len() <= 63 && bs.name().len() <= 63);
        assert_ne!(
            plan("s1.users", "email").object("stale").expect("n"),
            plan("s2.users", "email").object("stale").expect("n")
        );
    }
}
