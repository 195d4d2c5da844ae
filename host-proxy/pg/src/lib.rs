//! PostgreSQL connections for the host-side tools.
//!
//! A `postgres://` URL as libpq takes it, with the two `sslmode`s that mean
//! something against a hostile network: `disable` (the default when every
//! host is loopback or a Unix socket) and `verify-full` (the default
//! otherwise: the chain checked against `sslrootcert`, a CA file or
//! `system`, and the name against the URL's host). Modes that encrypt
//! without checking the peer are refused, not silently weakened.

#![forbid(unsafe_code)]

use std::sync::Arc;

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

/// Connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres TLS: {0}")]
    Tls(#[from] PgTlsError),
    #[error("postgres: {}", chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// An error with its causes (tokio-postgres keeps the TLS or I/O reason in
/// them, and its own message alone often says only "error connecting").
///
/// A server's error is rendered as severity, SQLSTATE and message only: its
/// `DETAIL` and `HINT` can quote the row that failed (`Failing row contains
/// (…)`, `Key (email_enc)=(…)`), and this text goes to logs.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    fn one(e: &(dyn std::error::Error + 'static)) -> String {
        match e.downcast_ref::<tokio_postgres::error::DbError>() {
            Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
            None => e.to_string(),
        }
    }
    let mut out = one(e);
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&one(c));
        cur = c.source();
    }
    out
}

/// How a server is reached.
#[derive(Clone)]
enum Tls {
    Disable,
    VerifyFull(Arc<rustls::ClientConfig>),
}

/// A parsed URL: where to connect and how.
#[derive(Clone)]
pub struct Target {
    cfg: tokio_postgres::Config,
    tls: Tls,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Target")
            .field("hosts", &self.cfg.get_hosts())
            .field("dbname", &self.cfg.get_dbname())
            .field("tls", &matches!(self.tls, Tls::VerifyFull(_)))
            .finish()
    }
}

impl Target {
    /// Splits `sslmode` and `sslrootcert` off a `postgres://` URL
    /// (tokio-postgres knows neither `verify-full` nor root files) and builds
    /// the TLS setting.
    pub fn parse(url: &str) -> Result<Target, PgError> {
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
        // Loopback only when every address the driver may use is: a
        // `hostaddr` is where tokio-postgres connects, whatever `host` says.
        let hosts_local = cfg.get_hosts().iter().all(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => true,
        });
        let addrs_local = cfg.get_hostaddrs().iter().all(|ip| ip.is_loopback());
        let named = !cfg.get_hosts().is_empty() || !cfg.get_hostaddrs().is_empty();
        let local = named && hosts_local && addrs_local;
        let mode = mode.unwrap_or_else(|| if local { "disable" } else { "verify-full" }.into());
        let tls = match mode.as_str() {
            "disable" => Tls::Disable,
            "verify-full" => Tls::VerifyFull(Arc::new(client_config(root)?)),
            "allow" | "prefer" | "require" | "verify-ca" => {
                return Err(PgTlsError::Unverified(mode).into())
            }
            _ => return Err(PgTlsError::UnknownMode(mode).into()),
        };
        Ok(Target { cfg, tls })
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        matches!(self.tls, Tls::VerifyFull(_))
    }

    /// A new connection; its driver runs on the current runtime and logs
    /// (as `what`) how the connection ended.
    pub async fn connect(&self, what: &'static str) -> Result<tokio_postgres::Client, PgError> {
        let mut cfg = self.cfg.clone();
        let client = match &self.tls {
            Tls::Disable => {
                let (client, conn) = cfg
                    .ssl_mode(tokio_postgres::config::SslMode::Disable)
                    .connect(tokio_postgres::NoTls)
                    .await?;
                tokio::spawn(watch(conn, what));
                client
            }
            Tls::VerifyFull(tls) => {
                let make = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, conn) = cfg
                    .ssl_mode(tokio_postgres::config::SslMode::Require)
                    .connect(make)
                    .await?;
                tokio::spawn(watch(conn, what));
                client
            }
        };
        Ok(client)
    }
}

async fn watch<F>(conn: F, what: &'static str)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = conn.await {
        tracing::warn!(error = %chain(&e), "{what}: postgres connection closed");
    }
}

fn client_config(root: Option<String>) -> Result<rustls::ClientConfig, PgTlsError> {
    // libpq's `sslrootcert=system` (and no sslrootcert) mean the platform's roots.
    let file = root.filter(|r| r != "system");
    let path = file.clone().unwrap_or_else(|| "system".into());
    let bad = |e: pii_http_client::RootsError| PgTlsError::RootCert {
        path: path.clone(),
        reason: match e {
            pii_http_client::RootsError::File { reason, .. } => reason,
            pii_http_client::RootsError::Empty { .. } => "no CA certificates in it".into(),
            other => other.to_string(),
        },
    };
    let roots =
        pii_http_client::root_store(file.as_deref().map(std::path::Path::new)).map_err(&bad)?;
    pii_http_client::tls_config(roots).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_defaults_to_plain_and_remote_to_verified() {
        let t = Target::parse("postgres://u@127.0.0.1:5432/db").expect("loopback");
        assert!(!t.tls());
        let e = Target::parse("postgres://u@db.example:5432/db?sslrootcert=/nonexistent")
            .expect_err("no CA file");
        assert!(e.to_string().contains("/nonexistent"), "{e}");
    }

    #[test]
    fn a_remote_hostaddr_is_not_loopback() {
        // tokio-postgres connects to hostaddr, whatever host says.
        for url in [
            "postgres://u:pw@localhost/db?hostaddr=203.0.113.7",
            "postgres://u:pw@/db?hostaddr=203.0.113.7",
        ] {
            let e = Target::parse(&format!("{url}&sslrootcert=/nonexistent"))
                .expect_err("defaults to verify-full, which needs the CA file");
            assert!(e.to_string().contains("/nonexistent"), "{url}: {e}");
        }
        let t = Target::parse("postgres://u@localhost/db?hostaddr=127.0.0.1").expect("loopback");
        assert!(!t.tls());
    }

    #[test]
    fn weak_modes_and_client_certs_are_refused() {
        for m in ["require", "prefer", "allow", "verify-ca"] {
            let e = Target::parse(&format!("postgres://u@h/db?sslmode={m}")).expect_err(m);
            assert!(matches!(e, PgError::Tls(PgTlsError::Unverified(_))), "{e}");
        }
        let e = Target::parse("postgres://u@h/db?sslcert=c.pem").expect_err("sslcert");
        assert!(matches!(e, PgError::Tls(PgTlsError::Unsupported(_))), "{e}");
        let e = Target::parse("postgres://u@h/db?sslmode=bogus").expect_err("bogus");
        assert!(matches!(e, PgError::Tls(PgTlsError::UnknownMode(_))), "{e}");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let t = Target::parse("postgres://u:hunter2@127.0.0.1/db").expect("parse");
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
