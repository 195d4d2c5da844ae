//! `host-proxy`: the sidecar beside `pii-svc`, and the dev stack.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use host_proxy::dev::{locate_enclave_binary, DevEnclave};
use host_proxy::Config;

/// pii-enclave host proxy: Vault-compatible sidecar API in front of the enclave.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the sidecar API in front of a running enclave.
    Serve(ServeArgs),
    /// Run the whole stack locally: starts the enclave over a Unix socket with
    /// the DANGEROUS development seal and root token. Not for real data.
    Dev(DevArgs),
    /// Vault/OpenBao administration for the enclave's Transit seal.
    #[command(subcommand)]
    Vault(VaultCmd),
    /// AWS KMS helpers for the enclave's KMS seal.
    #[command(subcommand)]
    Kms(KmsCmd),
    /// Fraud signals: replay a gateway log through the rules, run the drill.
    #[command(subcommand)]
    Fraud(pii_fraud::cli::FraudCmd),
}

#[derive(Subcommand, Debug)]
enum VaultCmd {
    /// Create the Transit mount and key-encryption key, a least-privilege
    /// policy and an AppRole, and print the role_id and a response-wrapped
    /// secret_id for the enclave (operator token from $VAULT_TOKEN).
    /// Needs a build with `--features vault-admin`.
    #[cfg(feature = "vault-admin")]
    Bootstrap(host_proxy::vault::BootstrapArgs),
    #[cfg(not(feature = "vault-admin"))]
    Bootstrap {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KmsCmd {
    /// Print a KMS key policy whose Decrypt/GenerateDataKey grant is bound to
    /// the measurements of a release (kms:RecipientAttestation conditions).
    Policy(host_proxy::kms::PolicyArgs),
}

#[derive(Args, Debug)]
struct Common {
    /// TCP address for the API [default: 127.0.0.1:8210].
    #[arg(long, env = "PII_PROXY_LISTEN")]
    listen: Option<String>,
    /// Also serve the API on this Unix socket.
    #[arg(long, env = "PII_PROXY_LISTEN_UNIX")]
    listen_unix: Option<PathBuf>,
    /// Largest request body in bytes [default: 33554432].
    #[arg(long, env = "PII_PROXY_MAX_REQUEST_BYTES")]
    max_request_bytes: Option<usize>,
    /// Enclave connections in the pool [default: 4].
    #[arg(long, env = "PII_PROXY_CONNECTIONS")]
    connections: Option<usize>,
    /// Log format: json or text.
    #[arg(long, env = "PII_PROXY_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Configuration file (TOML); flags and PII_PROXY_* variables override it.
    #[arg(long, short, env = "PII_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Enclave address: vsock://CID:PORT, unix:/path or hvsock:/uds:PORT.
    #[arg(long, env = "PII_PROXY_ENCLAVE")]
    enclave: Option<String>,
    /// Directory of the sealed keyring store.
    #[arg(long, env = "PII_PROXY_KEYRING_DIR")]
    keyring_dir: Option<PathBuf>,
    /// Directory of the signed audit log.
    #[arg(long, env = "PII_PROXY_AUDIT_DIR")]
    audit_dir: Option<PathBuf>,
    /// Stored-token mappings: sqlite:PATH or postgres://user@host/db.
    #[arg(long, env = "PII_PROXY_TOKEN_STORE")]
    token_store: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct DevArgs {
    /// Directory for the dev stack's socket and sealed keyring.
    #[arg(long, env = "PII_DEV_DIR", default_value = ".pii-dev")]
    data_dir: PathBuf,
    /// Root token the dev enclave accepts.
    #[arg(long, env = "PII_DEV_ROOT_TOKEN", default_value = "dev-root-token")]
    root_token: String,
    /// Passphrase of the DANGEROUS development seal.
    #[arg(
        long,
        env = "PII_DEV_SEAL_PASSPHRASE",
        default_value = "pii-enclave-dev"
    )]
    seal_passphrase: String,
    /// Path of the development enclave binary, pii-enclave-dangerous-dev
    /// (found next to host-proxy, or built automatically).
    #[arg(long, env = "PII_DEV_ENCLAVE_BIN")]
    enclave_bin: Option<PathBuf>,
    /// Stored-token mappings [default: sqlite in the data directory].
    #[arg(long, env = "PII_PROXY_TOKEN_STORE")]
    token_store: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PII_PROXY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        b.init();
    } else {
        b.json().init();
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("host-proxy: {msg}");
    std::process::exit(64)
}

fn apply(cfg: &mut Config, c: &Common) {
    if let Some(v) = &c.listen {
        cfg.listen = v.clone();
    }
    if let Some(v) = &c.listen_unix {
        cfg.listen_unix = Some(v.clone());
    }
    if let Some(v) = c.max_request_bytes {
        cfg.max_request_bytes = v;
        cfg.max_frame_bytes = cfg
            .max_frame_bytes
            .max(v + 1024 * 1024)
            .min(pii_proto::HARD_MAX_FRAME_LEN);
    }
    if let Some(v) = c.connections {
        cfg.connections = v;
    }
    if let Err(e) = cfg.loadshed_from_env() {
        fail(e);
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => {
            init_logs(&a.common.log_format);
            let mut cfg = match &a.config {
                Some(p) => Config::load(p).unwrap_or_else(|e| fail(e)),
                None => Config::default(),
            };
            apply(&mut cfg, &a.common);
            if let Some(e) = a.enclave {
                cfg.enclave = e;
            }
            if let Some(d) = a.keyring_dir {
                cfg.keyring_dir = d;
            }
            if let Some(d) = a.audit_dir {
                cfg.audit_dir = d;
            }
            if let Some(t) = a.token_store {
                cfg.token_store = t;
            }
            cfg.validate().unwrap_or_else(|e| fail(e));
            let running = host_proxy::start(&cfg)
                .await
                .unwrap_or_else(|e| fail(format!("{e:#}")));
            // `[loadshed]` follows the file (a ConfigMap update, remediation
            // B) without a restart.
            let reload = a.config.clone().map(|p| {
                tokio::spawn(host_proxy::follow_loadshed(
                    p,
                    running.shed.clone(),
                    std::time::Duration::from_secs(5),
                ))
            });
            shutdown_signal().await;
            if let Some(r) = reload {
                r.abort();
            }
            tracing::info!("shutting down");
            running.stop().await;
        }
        #[cfg(feature = "vault-admin")]
        Cmd::Vault(VaultCmd::Bootstrap(a)) => match host_proxy::vault::bootstrap(&a).await {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(e) => fail(format!("vault bootstrap: {e:#}")),
        },
        #[cfg(not(feature = "vault-admin"))]
        Cmd::Vault(VaultCmd::Bootstrap { .. }) => {
            eprintln!("host-proxy: this build has no Vault admin client (the sidecar links no TLS/crypto library); rebuild with `cargo run -p host-proxy --features vault-admin -- vault bootstrap …`");
            std::process::exit(2);
        }
        Cmd::Fraud(c) => {
            init_logs("json");
            if let Err(e) = pii_fraud::cli::run(c).await {
                fail(format!("fraud: {e}"));
            }
        }
        Cmd::Kms(KmsCmd::Policy(a)) => match host_proxy::kms::policy(&a) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
            Err(e) => fail(format!("kms policy: {e}")),
        },
        Cmd::Dev(a) => {
            init_logs(if a.common.log_format == "json" {
                "text"
            } else {
                &a.common.log_format
            });
            if let Err(e) = dev(a).await {
                fail(format!("{e:#}"));
            }
        }
    }
}

async fn dev(a: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.data_dir)?;
    let dir = std::fs::canonicalize(&a.data_dir)?;
    let binary = locate_enclave_binary(a.enclave_bin.clone())?;
    let socket = dir.join("enclave.sock");
    let mut cfg = Config {
        enclave: format!("unix:{}", socket.display()),
        keyring_dir: dir.join("keyring"),
        audit_dir: dir.join("audit"),
        token_store: format!("sqlite:{}", dir.join("tokens.db").display()),
        keyring_poll: std::time::Duration::from_secs(1),
        ..Config::default()
    };
    apply(&mut cfg, &a.common);
    if let Some(t) = &a.token_store {
        cfg.token_store = t.clone();
    }
    cfg.validate().map_err(anyhow::Error::msg)?;
    let enclave = DevEnclave {
        binary,
        socket,
        root_token: a.root_token.clone(),
        seal_passphrase: a.seal_passphrase.clone(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sup = tokio::spawn(enclave.supervise(async move {
        let _ = stop_rx.await;
    }));
    let running = host_proxy::start(&cfg).await?;
    let ready = running
        .pool
        .wait_live(std::time::Duration::from_secs(15))
        .await;
    let addr = running.http_addr;
    // The banner goes to stdout; logs (which never carry tokens) go to stderr.
    println!();
    println!(
        "  pii-enclave dev stack {}",
        if ready {
            "ready"
        } else {
            "started (enclave not connected yet)"
        }
    );
    println!("  DANGEROUS: development seal and root token; do not use with real data.");
    println!();
    println!("    export VAULT_ADDR=http://{addr}");
    println!("    export VAULT_TOKEN={}", a.root_token);
    println!("    curl -s -H \"X-Vault-Token: $VAULT_TOKEN\" -X POST $VAULT_ADDR/v1/transit/encrypt/pii -d '{{\"plaintext\":\"aGVsbG8=\"}}'");
    println!();
    println!("  data: {}   (Ctrl-C to stop)", dir.display());
    shutdown_signal().await;
    eprintln!("host-proxy dev: stopping");
    running.stop().await;
    let _ = stop_tx.send(());
    let _ = sup.await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
