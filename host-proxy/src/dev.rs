//! `host-proxy dev`: the whole stack on one machine, on embedded defaults.
//!
//! Starts the `pii-enclave-dangerous-dev` binary (the enclave service built
//! with the `dangerous-dev` feature, under its own name so a production
//! `pii-enclave` is never overwritten) as a child process listening on a Unix
//! socket (restarting it if it dies), with the **dangerous** development seal
//! and a development root token, then serves the sidecar API. No Vault, no
//! Kafka, no AWS.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

/// What the dev stack needs to start the enclave.
#[derive(Debug, Clone)]
pub struct DevEnclave {
    pub binary: PathBuf,
    pub socket: PathBuf,
    pub root_token: String,
    pub seal_passphrase: String,
}

/// The development enclave binary's name.
pub const DEV_ENCLAVE_BIN: &str = "pii-enclave-dangerous-dev";

/// Find `pii-enclave-dangerous-dev`: explicit path, next to this executable,
/// or build it.
pub fn locate_enclave_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p);
        }
        bail!("enclave binary {} does not exist", p.display());
    }
    let exe = std::env::current_exe().context("locating the host-proxy executable")?;
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let sibling = dir.join(DEV_ENCLAVE_BIN);
    // Rebuilding is cheap when nothing changed, and keeps a stale enclave from
    // running against a fresh proxy in a source checkout.
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf);
    if let Some(ws) =
        workspace.filter(|w| w.join("Cargo.toml").is_file() && dir.starts_with(w.join("target")))
    {
        let release = dir.ends_with("release");
        eprintln!(
            "host-proxy dev: building {DEV_ENCLAVE_BIN} ({})…",
            if release { "release" } else { "debug" }
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(&ws)
            .args(["build", "-q", "-p", "pii-enclave", "--bin", DEV_ENCLAVE_BIN])
            .args(["--features", "dangerous-dev"]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd
            .status()
            .context("running cargo build for the development enclave")?;
        if !st.success() {
            bail!("building {DEV_ENCLAVE_BIN} failed");
        }
    }
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "cannot find {DEV_ENCLAVE_BIN} next to {} — build it (cargo build --release -p pii-enclave --features dangerous-dev --bin {DEV_ENCLAVE_BIN}) or pass --enclave-bin",
        exe.display()
    )
}

impl DevEnclave {
    fn spawn(&self) -> anyhow::Result<Child> {
        Command::new(&self.binary)
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix:{}", self.socket.display()))
            .arg("--log-format")
            .arg("text")
            .env(
                "PII_ENCLAVE_DANGEROUS_DEV_SEAL_PASSPHRASE",
                &self.seal_passphrase,
            )
            .env("PII_ENCLAVE_DANGEROUS_DEV_ROOT_TOKEN", &self.root_token)
            .env("PII_ENCLAVE_DANGEROUS_DEV_NSM", "true")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))
    }

    /// Run the enclave, restarting it when it exits, until `stop` resolves.
    pub async fn supervise(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        loop {
            let mut child = self.spawn()?;
            tokio::select! {
                st = child.wait() => {
                    eprintln!("host-proxy dev: enclave exited ({}); restarting in 1s", st.map(|s| s.to_string()).unwrap_or_default());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ = &mut stop => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Ok(());
                }
            }
        }
    }
}
