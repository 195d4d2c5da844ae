//! The `pii-enclave` command line, shared by the two binaries:
//!
//! - `pii-enclave` ([`Mode::Production`]), the one that goes into images. It
//!   has no development seal, no development root token and no development
//!   NSM, whatever features the library was built with, and refuses config,
//!   flags or environment that ask for them.
//! - `pii-enclave-dangerous-dev` ([`Mode::DangerousDev`], only in builds with
//!   the `dangerous-dev` feature): the same service plus those switches, for
//!   `host-proxy dev` and tests. Its name says what it is, and building it
//!   never overwrites a production `pii-enclave`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::auth::{token_hash, Auth};
use crate::config::{Config, SealConfig};
use crate::server::Server;
use crate::service::Engine;
use pii_custody::seal::Seal;
use pii_engine::clock::{Clock, SystemClock};
use pii_transport::{Addr, Listener, PeerConfig};

/// Which binary is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    Production,
    /// Development switches available (feature `dangerous-dev`).
    #[cfg(feature = "dangerous-dev")]
    DangerousDev,
}

/// The pii-enclave crypto service (runs inside the enclave).
#[derive(Parser, Debug)]
#[command(name = "pii-enclave", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// DANGEROUS development build of the pii-enclave service: the development
/// seal, root token and NSM are available. Never put it in an image.
#[cfg(feature = "dangerous-dev")]
#[derive(Parser, Debug)]
#[command(name = "pii-enclave-dangerous-dev", version, about, long_about = None)]
struct DevCli {
    #[command(subcommand)]
    cmd: DevCmd,
}

#[cfg(feature = "dangerous-dev")]
#[derive(Subcommand, Debug)]
enum DevCmd {
    /// Serve, with the development switches.
    Serve(DevServeArgs),
    /// Print the keyed hash under which a token is configured (`token_hmac`).
    HashToken {
        /// The token; read from stdin when omitted.
        token: Option<String>,
    },
    /// Make a token (256 random bits) and print it with its `token_hmac`.
    NewToken,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the host proxy over vsock (or a Unix socket in development).
    Serve(ServeArgs),
    /// Print the keyed hash under which a token is configured
    /// (`[[auth.tokens]] token_hmac`); refuses tokens below 128 bits.
    HashToken {
        /// The token; read from stdin when omitted.
        token: Option<String>,
    },
    /// Make a token (256 random bits) and print it with its `token_hmac`.
    NewToken,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Configuration file (TOML). Built into the enclave image in production.
    #[arg(long, env = "PII_ENCLAVE_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, overriding the file: vsock://any:5000 or unix:/path.
    #[arg(long, env = "PII_ENCLAVE_LISTEN")]
    listen: Option<String>,
    /// Log format: json or text.
    #[arg(long, env = "PII_ENCLAVE_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

/// `serve` of the dangerous development binary.
#[cfg(feature = "dangerous-dev")]
#[derive(clap::Args, Debug)]
struct DevServeArgs {
    #[command(flatten)]
    base: ServeArgs,
    /// DANGEROUS, development only: seal the keyring with a key derived from
    /// this passphrase. Whoever knows it (the host does) can read every key.
    #[arg(long, env = "PII_ENCLAVE_DANGEROUS_DEV_SEAL_PASSPHRASE")]
    dangerous_dev_seal_passphrase: Option<String>,
    /// DANGEROUS, development only: accept this token with the root policy.
    #[arg(long, env = "PII_ENCLAVE_DANGEROUS_DEV_ROOT_TOKEN")]
    dangerous_dev_root_token: Option<String>,
    /// DANGEROUS, development only: emulate the NSM with a self-made PKI.
    #[arg(long, env = "PII_ENCLAVE_DANGEROUS_DEV_NSM")]
    dangerous_dev_nsm: bool,
}

/// The development switches asked for (always none in production).
#[derive(Default)]
struct Dangerous {
    seal_passphrase: Option<String>,
    #[cfg_attr(not(feature = "dangerous-dev"), allow(dead_code))]
    root_token: Option<String>,
    nsm: bool,
}

/// Environment variables only the development binary reads. A production
/// binary that finds one refuses to start rather than silently ignore it.
const DANGEROUS_ENV: [&str; 3] = [
    "PII_ENCLAVE_DANGEROUS_DEV_SEAL_PASSPHRASE",
    "PII_ENCLAVE_DANGEROUS_DEV_ROOT_TOKEN",
    "PII_ENCLAVE_DANGEROUS_DEV_NSM",
];

const NOT_IN_PRODUCTION: &str = "exists only in the pii-enclave-dangerous-dev binary \
    (a build with the dangerous-dev feature); this pii-enclave has no path to it";

#[allow(unused_variables)]
fn nsm(dev: bool, config: &[u8]) -> Option<Arc<dyn pii_custody::nsm::Nsm>> {
    #[cfg(feature = "dangerous-dev")]
    if dev {
        let image = std::env::current_exe()
            .and_then(std::fs::read)
            .unwrap_or_default();
        let n = pii_custody::nsm::DangerousDevNsm::new(&image, config).unwrap_or_else(|e| fail(e));
        tracing::warn!(
            "DANGEROUS: attestation documents come from the development NSM, not AWS hardware"
        );
        return Some(Arc::new(n));
    }
    #[cfg(target_os = "linux")]
    if let Some(n) = pii_custody::nsm::RealNsm::open() {
        use pii_custody::nsm::Nsm as _;
        tracing::info!("NSM: /dev/nsm");
        // Mix the NSM's hardware randomness into the kernel pool that
        // aws-lc's DRBG draws from (writing to /dev/urandom mixes, never
        // replaces).
        match n.random(64).and_then(|b| {
            std::fs::write("/dev/urandom", b).map_err(|e| pii_custody::nsm::NsmError(e.to_string()))
        }) {
            Ok(()) => tracing::info!("mixed 64 bytes of NSM randomness into the kernel pool"),
            Err(e) => tracing::warn!(error = %e, "could not mix NSM randomness"),
        }
        return Some(Arc::new(n));
    }
    tracing::warn!("no NSM (/dev/nsm absent): attestation is unavailable");
    None
}

/// The first `dangerous_…` test switch a seal config turns on.
fn dangerous_seal_switch(seal: &SealConfig) -> Option<&'static str> {
    match seal {
        SealConfig::VaultTransit(v) if v.dangerous_allow_http => Some("dangerous_allow_http"),
        SealConfig::VaultTransit(v) if v.dangerous_no_anchor => Some("dangerous_no_anchor"),
        SealConfig::VaultTransit(v) if v.dangerous_wrapped_secret_id.is_some() => {
            Some("dangerous_wrapped_secret_id")
        }
        SealConfig::AwsKms(k) if k.dangerous_allow_http => Some("dangerous_allow_http"),
        SealConfig::AwsKms(k) if k.dangerous_no_anchor => Some("dangerous_no_anchor"),
        _ => None,
    }
}

#[allow(unused_variables)]
fn dev_seal(mode: Mode, passphrase: &str) -> Arc<dyn Seal> {
    match mode {
        #[cfg(feature = "dangerous-dev")]
        Mode::DangerousDev => {
            tracing::warn!(
                "DANGEROUS: keyring sealed with the development seal; the host can read every key"
            );
            Arc::new(pii_custody::seal::DangerousDevSeal::from_passphrase(
                passphrase,
            ))
        }
        _ => fail(format!(
            "config [seal] type = \"dangerous-dev\": the development seal {NOT_IN_PRODUCTION}"
        )),
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PII_ENCLAVE_LOG")
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
    eprintln!("pii-enclave: {msg}");
    std::process::exit(64)
}

fn hash_token(token: Option<String>) {
    let t = match token {
        Some(t) => t,
        None => {
            let mut s = String::new();
            if std::io::stdin().read_line(&mut s).is_err() {
                fail("cannot read the token from stdin");
            }
            s.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if let Err(e) = crate::auth::check_token_strength(&t) {
        fail(e);
    }
    println!("{}", hex::encode(token_hash(&t)));
}

fn new_token() {
    let Some(t) = crate::auth::new_token() else {
        fail("the random number generator failed");
    };
    println!("token      = {t}");
    println!("token_hmac = {}", hex::encode(token_hash(&t)));
}

/// The entry point of both binaries.
pub fn main(mode: Mode) {
    match mode {
        Mode::Production => {
            for v in DANGEROUS_ENV {
                if std::env::var_os(v).is_some() {
                    fail(format!(
                        "{v} is set, but the development switch {NOT_IN_PRODUCTION}"
                    ));
                }
            }
            match Cli::parse().cmd {
                Cmd::HashToken { token } => hash_token(token),
                Cmd::NewToken => new_token(),
                Cmd::Serve(args) => serve(args, Dangerous::default(), mode),
            }
        }
        #[cfg(feature = "dangerous-dev")]
        Mode::DangerousDev => match DevCli::parse().cmd {
            DevCmd::HashToken { token } => hash_token(token),
            DevCmd::NewToken => new_token(),
            DevCmd::Serve(a) => serve(
                a.base,
                Dangerous {
                    seal_passphrase: a.dangerous_dev_seal_passphrase,
                    root_token: a.dangerous_dev_root_token,
                    nsm: a.dangerous_dev_nsm,
                },
                mode,
            ),
        },
    }
}

fn serve(args: ServeArgs, dangerous: Dangerous, mode: Mode) {
    init_logs(&args.log_format);
    let config_bytes = args
        .config
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .unwrap_or_default();
    let mut cfg = match &args.config {
        Some(p) => Config::load(p).unwrap_or_else(|e| fail(e)),
        None => Config::default(),
    };
    let nsm = nsm(dangerous.nsm, &config_bytes);
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(p) = dangerous.seal_passphrase {
        cfg.seal = SealConfig::DangerousDev { passphrase: p };
    }
    if mode == Mode::Production {
        if let Some(switch) = dangerous_seal_switch(&cfg.seal) {
            fail(format!(
                "config [seal] {switch} = true: that test switch {NOT_IN_PRODUCTION}"
            ));
        }
    }
    // The one clock of this process: the seals and the engine read it.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let seal: Arc<dyn Seal> = match &cfg.seal {
        SealConfig::DangerousDev { passphrase } => dev_seal(mode, passphrase),
        SealConfig::VaultTransit(v) => Arc::new(
            pii_custody::vault_seal::VaultTransitSeal::new(v.clone())
                .unwrap_or_else(|e| fail(e))
                .with_clock(clock.clone()),
        ),
        SealConfig::AwsKms(k) => {
            let Some(n) = nsm.clone() else {
                fail("the aws-kms seal needs an NSM for attestation (run in an enclave, or the development NSM of pii-enclave-dangerous-dev)")
            };
            Arc::new(
                pii_custody::kms_seal::KmsSeal::new(k.clone(), n)
                    .unwrap_or_else(|e| fail(e))
                    .with_clock(clock.clone()),
            )
        }
        SealConfig::None => fail("no seal configured: set [seal] in the config file"),
    };
    #[allow(unused_mut)]
    let mut auth = Auth::from_config(&cfg.auth).unwrap_or_else(|e| fail(e));
    #[cfg(feature = "dangerous-dev")]
    if let Some(t) = &dangerous.root_token {
        tracing::warn!("DANGEROUS: a development root token is accepted");
        auth.add_root_token(t);
    }
    let addr: Addr = cfg.listen.parse().unwrap_or_else(|e| fail(e));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    rt.block_on(async move {
        if let Some(eg) = &cfg.egress {
            start_egress(eg)
                .await
                .unwrap_or_else(|e| fail(format!("{e:#}")));
        }
        let listener =
            Listener::bind(&addr).unwrap_or_else(|e| fail(format!("cannot listen on {addr}: {e}")));
        tracing::info!(%addr, seal = seal.id(), "pii-enclave listening");
        let engine = Engine::with_clock(seal, clock);
        engine.set_audit_checkpoint_secs(cfg.audit.checkpoint_secs);
        let server = Arc::new(Server {
            engine,
            auth,
            attestor: pii_custody::attest::Attestor::new(nsm),
        });
        let peer_cfg = PeerConfig {
            max_frame: cfg.max_frame_bytes,
            name: "host".into(),
            ..PeerConfig::default()
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            stop_tx.send_replace(true);
        });
        if let Err(e) = server.serve(listener, peer_cfg, stop_rx).await {
            fail(e)
        }
    });
}

/// Local endpoints that tunnel through the host's egress relay.
async fn start_egress(eg: &crate::config::EgressConfig) -> anyhow::Result<()> {
    use pii_transport::relay::{serve_connect_proxy, serve_fixed, Target};
    let relay: Addr = eg
        .relay
        .parse()
        .map_err(|e| anyhow::anyhow!("egress.relay: {e}"))?;
    let timeout = std::time::Duration::from_secs(10);
    for f in &eg.fixed {
        let target: Target = f
            .upstream
            .parse()
            .map_err(|e| anyhow::anyhow!("egress upstream {:?}: {e}", f.upstream))?;
        let l = tokio::net::TcpListener::bind(&f.listen)
            .await
            .with_context(|| format!("egress listen {}", f.listen))?;
        tracing::info!(listen = %f.listen, upstream = %target, "egress tunnel");
        tokio::spawn(serve_fixed(l, relay.clone(), target, timeout));
    }
    if let Some(p) = &eg.connect_proxy {
        let l = tokio::net::TcpListener::bind(p)
            .await
            .with_context(|| format!("egress connect_proxy {p}"))?;
        tracing::info!(listen = %p, "egress CONNECT proxy");
        tokio::spawn(serve_connect_proxy(l, relay.clone(), timeout));
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
}
