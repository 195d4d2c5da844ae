//! Storage for stored-token mappings: keyed hashes → enclave ciphertexts.
//!
//! The host never sees a token's value: the enclave sends an opaque key (a
//! keyed hash of the token id) and a ciphertext. Writes are durable before the
//! enclave is told they are stored (SQLite: `synchronous=FULL` in WAL mode;
//! PostgreSQL: a committed statement), so no token is handed out whose mapping
//! could be lost.
//!
//! Backends: embedded SQLite (`sqlite:/path/tokens.db`, the default) and
//! PostgreSQL (`postgres://user@host:port/db`).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use pii_proto::TokenEntry;

#[derive(Debug, thiserror::Error)]
pub enum TokenStoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {}", pii_pg::chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("token store: {0}")]
    Other(String),
    #[error(transparent)]
    Connect(#[from] pii_pg::PgError),
}

pub type Fut<'a, T> = Pin<Box<dyn Future<Output = Result<T, TokenStoreError>> + Send + 'a>>;

pub trait TokenStore: Send + Sync + 'static {
    fn put(&self, entries: Vec<TokenEntry>) -> Fut<'_, ()>;
    fn get(&self, keys: Vec<String>) -> Fut<'_, Vec<Option<Vec<u8>>>>;
    fn tidy(&self, now: u64) -> Fut<'_, u64>;
}

/// Open the store named by `url` (`sqlite:PATH` or `postgres://…`).
pub async fn open(url: &str) -> Result<Arc<dyn TokenStore>, TokenStoreError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        return Ok(Arc::new(SqliteStore::open(PathBuf::from(path))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PgStore::connect(url).await?));
    }
    Err(TokenStoreError::Other(format!(
        "unknown token store {url:?}: use sqlite:PATH or postgres://…"
    )))
}

// ---------------------------------------------------------------------------
// SQLite

pub struct SqliteStore {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

impl SqliteStore {
    pub fn open(path: PathBuf) -> Result<SqliteStore, TokenStoreError> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| TokenStoreError::Other(e.to_string()))?;
        }
        let conn = rusqlite::Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS pii_tokens (
                key TEXT PRIMARY KEY,
                value BLOB NOT NULL,
                expires_at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS pii_tokens_expiry ON pii_tokens (expires_at) WHERE expires_at > 0;",
        )?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<T, TokenStoreError> + Send + 'static,
    ) -> Fut<'_, T> {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut c = conn
                    .lock()
                    .map_err(|_| TokenStoreError::Other("poisoned".into()))?;
                f(&mut c)
            })
            .await
            .map_err(|e| TokenStoreError::Other(e.to_string()))?
        })
    }
}

impl TokenStore for SqliteStore {
    fn put(&self, entries: Vec<TokenEntry>) -> Fut<'_, ()> {
        self.blocking(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO pii_tokens (key, value, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                )?;
                for e in &entries {
                    st.execute(rusqlite::params![e.key, e.value, e.expires_at as i64])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn get(&self, keys: Vec<String>) -> Fut<'_, Vec<Option<Vec<u8>>>> {
        self.blocking(move |c| {
            let mut st = c.prepare_cached("SELECT value FROM pii_tokens WHERE key = ?1")?;
            let mut out = Vec::with_capacity(keys.len());
            for k in &keys {
                let v: Option<Vec<u8>> = match st.query_row([k], |r| r.get(0)) {
                    Ok(v) => Some(v),
                    Err(rusqlite::Error::QueryReturnedNoRows) => None,
                    Err(e) => return Err(e.into()),
                };
                out.push(v);
            }
            Ok(out)
        })
    }

    fn tidy(&self, now: u64) -> Fut<'_, u64> {
        self.blocking(move |c| {
            let n = c.execute(
                "DELETE FROM pii_tokens WHERE expires_at > 0 AND expires_at < ?1",
                [now as i64],
            )?;
            Ok(n as u64)
        })
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

pub struct PgStore {
    target: pii_pg::Target,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<PgStore, TokenStoreError> {
        let s = PgStore {
            target: pii_pg::Target::parse(url)?,
            client: tokio::sync::Mutex::new(None),
        };
        s.client().await?;
        Ok(s)
    }

    /// The live client, reconnecting (and creating the table) when needed.
    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, TokenStoreError> {
        let mut g = self.client.lock().await;
        if let Some(c) = g.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let client = self.target.connect("token store").await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS pii_tokens (
                    key TEXT PRIMARY KEY,
                    value BYTEA NOT NULL,
                    expires_at BIGINT NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS pii_tokens_expiry ON pii_tokens (expires_at) WHERE expires_at > 0;",
            )
            .await?;
        let c = Arc::new(client);
        *g = Some(c.clone());
        Ok(c)
    }

    async fn reset_on<T>(&self, r: Result<T, tokio_postgres::Error>) -> Result<T, TokenStoreError> {
        if r.is_err() {
            *self.client.lock().await = None;
        }
        r.map_err(Into::into)
    }
}

impl TokenStore for PgStore {
    fn put(&self, entries: Vec<TokenEntry>) -> Fut<'_, ()> {
        Box::pin(async move {
            let c = self.client().await?;
            let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            let values: Vec<&[u8]> = entries.iter().map(|e| e.value.as_slice()).collect();
            let exp: Vec<i64> = entries.iter().map(|e| e.expires_at as i64).collect();
            // One statement, committed on return: durable before we answer.
            let r = c
                .execute(
                    "INSERT INTO pii_tokens (key, value, expires_at)
                     SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bigint[])
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
                    &[&keys, &values, &exp],
                )
                .await;
            self.reset_on(r).await.map(|_| ())
        })
    }

    fn get(&self, keys: Vec<String>) -> Fut<'_, Vec<Option<Vec<u8>>>> {
        Box::pin(async move {
            let c = self.client().await?;
            let r = c
                .query(
                    "SELECT key, value FROM pii_tokens WHERE key = ANY($1)",
                    &[&keys],
                )
                .await;
            let rows = self.reset_on(r).await?;
            let mut found: std::collections::HashMap<String, Vec<u8>> = rows
                .into_iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, Vec<u8>>(1)))
                .collect();
            Ok(keys.iter().map(|k| found.remove(k)).collect())
        })
    }

    fn tidy(&self, now: u64) -> Fut<'_, u64> {
        Box::pin(async move {
            let c = self.client().await?;
            let r = c
                .execute(
                    "DELETE FROM pii_tokens WHERE expires_at > 0 AND expires_at < $1",
                    &[&(now as i64)],
                )
                .await;
            self.reset_on(r).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str, v: &[u8], exp: u64) -> TokenEntry {
        TokenEntry {
            key: k.into(),
            value: v.to_vec(),
            expires_at: exp,
        }
    }

    #[tokio::test]
    async fn sqlite_put_get_tidy() {
        let d = tempfile::tempdir().unwrap();
        let s = open(&format!("sqlite:{}", d.path().join("t.db").display()))
            .await
            .unwrap();
        s.put(vec![e("a", b"1", 0), e("b", b"2", 100)])
            .await
            .unwrap();
        s.put(vec![e("a", b"1b", 0)]).await.unwrap();
        assert_eq!(
            s.get(vec!["a".into(), "zz".into(), "b".into()])
                .await
                .unwrap(),
            vec![Some(b"1b".to_vec()), None, Some(b"2".to_vec())]
        );
        assert_eq!(s.tidy(50).await.unwrap(), 0);
        assert_eq!(s.tidy(101).await.unwrap(), 1);
        assert_eq!(s.get(vec!["b".into()]).await.unwrap(), vec![None]);
        assert!(open("mysql://nope").await.is_err());
    }
}
