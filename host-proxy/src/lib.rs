//! # host-proxy — the only way in and out of the enclave
//!
//! Runs on the (untrusted) parent instance beside `pii-svc`:
//!
//! * [`http`]: the Vault-compatible sidecar API (`/v1/transit/…`), plus
//!   `/v1/sys/health`, `/healthz`, `/readyz` and `/metrics`;
//! * [`pool`]: a pool of multiplexed connections to the enclave that
//!   reconnects when the enclave restarts and fails in-flight calls fast;
//! * [`store`]: storage for the sealed keyring blobs the enclave hands out,
//!   with compare-and-swap so several enclave replicas can share one keyring.
//!
//! What it does **not** do: hold, derive or see key material; decide who may
//! do what (the enclave authorizes every call); or parse API bodies.
#![forbid(unsafe_code)]

pub mod audit;
pub mod config;
pub mod dev;
pub mod http;
pub mod kms;
pub mod metrics;
pub mod pool;
pub mod relay;
pub mod store;
pub mod tokens;
#[cfg(feature = "vault-admin")]
pub mod vault;

pub use config::Config;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use pii_transport::PeerConfig;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::pool::{HostHandler, Pool, PoolConfig};
use crate::store::{FileStore, KeyringStore};

/// A running proxy: its bound address and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub http_addr: SocketAddr,
    pub pool: Arc<Pool>,
    /// The load shedder (`reconfigure` applies a reloaded `[loadshed]`).
    pub shed: pii_loadshed::Gate,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop serving (in-flight HTTP requests finish first).
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Resolves when a stop was requested.
    pub async fn stopped(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Start the proxy: keyring store, enclave pool, HTTP listeners.
pub async fn start(cfg: &Config) -> anyhow::Result<Running> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn KeyringStore> = Arc::new(
        FileStore::open(&cfg.keyring_dir)
            .with_context(|| format!("opening keyring store {}", cfg.keyring_dir.display()))?,
    );
    let audit = Arc::new(
        audit::AuditStore::open(&cfg.audit_dir, cfg.audit_fsync)
            .with_context(|| format!("opening audit directory {}", cfg.audit_dir.display()))?,
    );
    let tokens = tokens::open(&cfg.token_store)
        .await
        .with_context(|| format!("opening token store {}", redact_url(&cfg.token_store)))?;
    let handler = Arc::new(HostHandler {
        store: store.clone(),
        audit,
        tokens,
        metrics: metrics.clone(),
    });
    let pool = Pool::start(
        PoolConfig {
            addr: cfg.enclave.parse().map_err(anyhow::Error::msg)?,
            connections: cfg.connections,
            peer: PeerConfig {
                max_frame: cfg.max_frame_bytes,
                ..PeerConfig::default()
            },
        },
        handler,
        metrics.clone(),
    );
    let shed = pii_loadshed::Gate::new(cfg.loadshed.clone());
    let state = http::AppState {
        pool: pool.clone(),
        metrics: metrics.clone(),
        max_request_bytes: cfg.max_request_bytes,
        request_timeout: cfg.request_timeout,
        shed: shed.clone(),
        client_hasher: Default::default(),
    };
    let app = http::router(state);
    let (stop, _) = watch::channel(false);
    let mut tasks = vec![];

    if let Some(rc) = &cfg.relay {
        let relay = Arc::new(relay::Relay::new(rc, metrics.clone()).map_err(anyhow::Error::msg)?);
        let addr: pii_transport::Addr = rc.listen.parse().map_err(anyhow::Error::msg)?;
        if let pii_transport::Addr::Unix(p) = &addr {
            if p.exists() {
                std::fs::remove_file(p)
                    .with_context(|| format!("removing stale {}", p.display()))?;
            }
        }
        let listener = pii_transport::Listener::bind(&addr)
            .with_context(|| format!("binding the egress relay on {addr}"))?;
        tracing::info!(%addr, "egress relay listening");
        let mut rx = stop.subscribe();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                r = relay.serve_on(listener) => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "egress relay failed");
                    }
                }
                _ = rx.wait_for(|s| *s) => {}
            }
        }));
    }

    let tcp = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let http_addr = tcp.local_addr()?;
    let mut rx = stop.subscribe();
    let a = app.clone();
    tasks.push(tokio::spawn(async move {
        let r = axum::serve(tcp, a)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    }));
    if let Some(path) = &cfg.listen_unix {
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        let ul = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("binding {}", path.display()))?;
        let mut rx = stop.subscribe();
        let a = app.clone();
        tasks.push(tokio::spawn(async move {
            let r = axum::serve(ul, a)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server (unix) failed");
            }
        }));
    }
    let watcher = tokio::spawn(pool::watch_store(pool.clone(), store, cfg.keyring_poll));
    let mut rx = stop.subscribe();
    tasks.push(tokio::spawn(async move {
        let _ = rx.wait_for(|s| *s).await;
        watcher.abort();
    }));
    tracing::info!(%http_addr, unix = ?cfg.listen_unix, enclave = %cfg.enclave, loadshed = ?cfg.loadshed.mode, "host-proxy serving");
    Ok(Running {
        http_addr,
        shed,
        pool,
        metrics,
        stop,
        tasks,
    })
}

/// Re-reads `[loadshed]` from the configuration file (and the
/// `PII_PROXY_LOADSHED_*` variables over it) every `every`, and applies it
/// when it changed. A file that does not parse or check keeps the settings
/// in force (and says so once per change).
pub async fn follow_loadshed(
    path: std::path::PathBuf,
    gate: pii_loadshed::Gate,
    every: std::time::Duration,
) {
    let mut last_error = None;
    loop {
        tokio::time::sleep(every).await;
        let loaded = Config::load(&path).and_then(|mut c| {
            c.loadshed_from_env()?;
            Ok(c.loadshed)
        });
        match loaded {
            Ok(new) => {
                last_error = None;
                if new != gate.config() {
                    tracing::info!(mode = ?new.mode, shed_threshold_ms = new.shed_threshold_ms, max_drop_percent = new.max_drop_percent, "loadshed settings reloaded");
                    gate.reconfigure(new);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "loadshed settings not reloaded; keeping the ones in force");
                    last_error = Some(msg);
                }
            }
        }
    }
}

/// A store URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
