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
    #[error("postgres: {}", chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("token store: {0}")]
    Other(String),
    #[error("postgres TLS: {0}")]
    Tls(#[from] PgTlsError),
}

/// An error with its causes (tokio-postgres keeps the TLS reason in them).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// A PostgreSQL TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgTlsError {
    #[error("sslmode={0:?} is not one of disable, verify-full")]
    UnknownMode(String),
    #[error(
        "sslmode={0} encrypts without checking whose certificate it is (anyone on the path \
         could answer); use sslmode=verify-full with sslrootcert=<CA file> (or \
         sslrootcert=system)"
    )]
    Unverified(String),
    #[error("sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("parameter {0:?} is not supported (client certificates are not)")]
    Unsupported(String),
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

/// How the PostgreSQL store is reached.
#[derive(Clone)]
enum PgTls {
    Disable,
    /// TLS, the chain checked against these roots and the name against the
    /// URL's host (libpq's `verify-full`).
    VerifyFull(Arc<rustls::ClientConfig>),
}

/// Split `sslmode` and `sslrootcert` off a `postgres://` URL (tokio-postgres
/// knows neither `verify-full` nor root files) and build the TLS setting.
/// Without `sslmode`: `disable` when every host is loopback or a Unix
/// socket, `verify-full` otherwise.
fn pg_tls(url: &str) -> Result<(tokio_postgres::Config, PgTls), TokenStoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = vec![];
    let (mut mode, mut root) = (None, None);
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "sslmode" => mode = Some(v.to_owned()),
            "sslrootcert" => root = Some(v.to_owned()),
            "sslcert" | "sslkey" | "sslcrl" | "sslpassword" => {
                return Err(PgTlsError::Unsupported(k.to_owned()).into())
            }
            _ => kept.push(kv),
        }
    }
    let stripped = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let cfg: tokio_postgres::Config = stripped.parse()?;
    let local = cfg.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    });
    let mode = mode.unwrap_or_else(|| if local { "disable" } else { "verify-full" }.into());
    let tls = match mode.as_str() {
        "disable" => PgTls::Disable,
        "verify-full" => PgTls::VerifyFull(Arc::new(client_config(root)?)),
        "allow" | "prefer" | "require" | "verify-ca" => {
            return Err(PgTlsError::Unverified(mode).into())
        }
        _ => return Err(PgTlsError::UnknownMode(mode).into()),
    };
    Ok((cfg, tls))
}

fn client_config(root: Option<String>) -> Result<rustls::ClientConfig, PgTlsError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let path = root.unwrap_or_else(|| "system".into());
    let bad = |reason: String| PgTlsError::RootCert {
        path: path.clone(),
        reason,
    };
    if path == "system" {
        let found = rustls_native_certs::load_native_certs();
        for c in found.certs {
            let _ = roots.add(c);
        }
    } else {
        for c in rustls_pki_types::CertificateDer::pem_file_iter(&path)
            .map_err(|e| bad(e.to_string()))?
        {
            roots
                .add(c.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(bad("no CA certificates in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub struct PgStore {
    cfg: tokio_postgres::Config,
    tls: PgTls,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<PgStore, TokenStoreError> {
        let (cfg, tls) = pg_tls(url)?;
        let s = PgStore {
            cfg,
            tls,
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
        let mut cfg = self.cfg.clone();
        let client = match &self.tls {
            PgTls::Disable => {
                let (client, conn) = cfg
                    .ssl_mode(tokio_postgres::config::SslMode::Disable)
                    .connect(tokio_postgres::NoTls)
                    .await?;
                tokio::spawn(watch_connection(conn));
                client
            }
            PgTls::VerifyFull(tls) => {
                let make = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, conn) = cfg
                    .ssl_mode(tokio_postgres::config::SslMode::Require)
                    .connect(make)
                    .await?;
                tokio::spawn(watch_connection(conn));
                client
            }
        };
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

async fn watch_connection<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = conn.await {
        tracing::warn!(error = %e, "postgres token store connection closed");
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
