//! `host-proxy fraud …`: replay a log file offline, run the drill.

use std::io;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::crawlers::{Budget, CrawlerList, CrawlerListError, DnsServers, Resolver, ResolverError};
use crate::pipeline::{Cidr, Pipeline, PipelineConfig};
use crate::replay::ReplayError;
use crate::rules::{Mode, RuleError, RuleSet};
use crate::tokenize::TokenizeError;
use crate::ua::{PatternError, UaClassifier};

mod offline;

#[derive(Subcommand, Debug)]
pub enum FraudCmd {
    /// Run an NDJSON gateway log through the features and rules offline and
    /// write one decision per key (`-` reads stdin / writes stdout).
    /// Subjects are replaced by pseudonyms keyed for this run only.
    Replay(ReplayArgs),
    /// Generate seeded human and bot traffic, run it through the pipeline and
    /// report precision, recall and false positives per bot kind.
    Drill(DrillArgs),
    /// Run the online ingest: POST /v1/fraud/ingest and Kafka `gateway-logs`
    /// in, subjects tokenized by the enclave (through the sidecar's Transform
    /// API), signals out to Kafka `fraud-signals` with a disk spool.
    Ingest(Box<IngestArgs>),
    /// Turn signals into WAF block lists (nginx map, AWS WAFv2 IP sets):
    /// dry run by default, printing the diff; --apply writes it.
    WafSync(Box<crate::waf::sync::WafSyncArgs>),
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// TOML file with any of the options below (flags and environment win).
    #[arg(long, env = "PII_FRAUD_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP address for /v1/fraud/ingest, /metrics, /healthz [default: 127.0.0.1:8230].
    #[arg(long, env = "PII_FRAUD_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// The sidecar (or any Vault-compatible address) for tokenization [default: http://127.0.0.1:8210].
    #[arg(long, env = "VAULT_ADDR")]
    pub vault_addr: Option<String>,
    /// File holding the token for transform/encode (policy: update on that path only).
    #[arg(long, env = "PII_FRAUD_VAULT_TOKEN_FILE")]
    pub vault_token_file: Option<PathBuf>,
    /// Transform role [default: fraud].
    #[arg(long, env = "PII_FRAUD_ROLE")]
    pub role: Option<String>,
    /// Deterministic tokenization transformation [default: fraud-subject].
    #[arg(long, env = "PII_FRAUD_TRANSFORMATION")]
    pub transformation: Option<String>,
    /// File with the bearer tokens allowed to POST logs, one per line (stored hashed in memory).
    #[arg(long, env = "PII_FRAUD_INGEST_TOKENS_FILE")]
    pub ingest_tokens_file: Option<PathBuf>,
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, env = "PII_FRAUD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Extra librdkafka setting for every Kafka client, KEY=VALUE (repeatable):
    /// e.g. security.protocol=SASL_PLAINTEXT, sasl.mechanism=SCRAM-SHA-512.
    #[arg(long = "kafka-option", value_parser = crate::sink::parse_kv)]
    pub kafka_options: Vec<(String, String)>,
    /// Topic to consume gateway logs from; empty disables the consumer [default: gateway-logs].
    #[arg(long, env = "PII_FRAUD_INPUT_TOPIC")]
    pub input_topic: Option<String>,
    /// Consumer group [default: pii-fraud].
    #[arg(long, env = "PII_FRAUD_GROUP")]
    pub group: Option<String>,
    /// Topic for signals [default: fraud-signals].
    #[arg(long, env = "PII_FRAUD_SIGNALS_TOPIC")]
    pub signals_topic: Option<String>,
    /// Spool directory for signals while the broker is down [default: /var/lib/pii-fraud/spool].
    #[arg(long, env = "PII_FRAUD_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Spool size cap in bytes [default: 1 GiB].
    #[arg(long, env = "PII_FRAUD_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// Tokenize client addresses too (no address or subnet keys leave then).
    #[arg(long, env = "PII_FRAUD_TOKENIZE_IP")]
    pub tokenize_ip: bool,
    /// Where crawler claims are checked by reverse and forward DNS: `system`
    /// (/etc/resolv.conf), `off`, or servers ADDR:PORT[,...] [default:
    /// system; off with --tokenize-ip, as the queries name the address].
    #[arg(long, env = "PII_FRAUD_CRAWLER_DNS")]
    pub crawler_dns: Option<DnsServers>,
    #[command(flatten)]
    pub rules: RulesArgs,
}

/// `--config` file: the same options as the flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestFile {
    listen: Option<std::net::SocketAddr>,
    vault_addr: Option<String>,
    vault_token_file: Option<PathBuf>,
    role: Option<String>,
    transformation: Option<String>,
    ingest_tokens_file: Option<PathBuf>,
    kafka_brokers: Option<String>,
    input_topic: Option<String>,
    group: Option<String>,
    signals_topic: Option<String>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<u64>,
    tokenize_ip: Option<bool>,
    rules: Option<PathBuf>,
    allow: Option<Vec<String>>,
    crawler_dns: Option<String>,
    verified_crawlers: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RulesArgs {
    /// Rules file (TOML); the shipped rules when absent.
    #[arg(long, env = "PII_FRAUD_RULES")]
    pub rules: Option<PathBuf>,
    /// Override every rule's mode (off, shadow, enforce).
    #[arg(long, value_parser = parse_mode)]
    pub mode: Option<Mode>,
    /// Never score these addresses or CIDR blocks (repeatable).
    #[arg(long = "allow")]
    pub allow: Vec<Cidr>,
    /// Crawlers verified by reverse and forward DNS (TOML, as
    /// data/verified-crawlers.toml) [default: the shipped list].
    #[arg(long, env = "PII_FRAUD_VERIFIED_CRAWLERS")]
    pub verified_crawlers: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub output: PathBuf,
    /// Check crawler claims by reverse and forward DNS: `off`, `system`, or
    /// servers ADDR:PORT[,...] [default: off, so a replay needs no network].
    #[arg(long, default_value = "off")]
    pub crawler_dns: DnsServers,
    #[command(flatten)]
    pub rules: RulesArgs,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long, default_value_t = 1500)]
    pub humans: usize,
    #[arg(long, default_value_t = 30)]
    pub nat_humans: usize,
    #[arg(long, default_value_t = 8)]
    pub bots_per_kind: usize,
    #[arg(long, default_value_t = 20)]
    pub minutes: u32,
    /// Also write the generated log here (NDJSON), to replay it elsewhere.
    #[arg(long)]
    pub write_log: Option<PathBuf>,
    /// Also write who sent the traffic here (JSON: kind, bot or not,
    /// addresses, subjects), to score decisions made elsewhere.
    #[arg(long)]
    pub write_clients: Option<PathBuf>,
    /// Also write the drill's DNS zone here as dnsmasq configuration
    /// (`dnsmasq --conf-file FILE`), to verify its crawlers online.
    #[arg(long)]
    pub write_zone: Option<PathBuf>,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub rules: RulesArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    Patterns(#[from] PatternError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error("writing the report: {0}")]
    Output(io::Error),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("waf-sync: {0}")]
    WafSync(crate::waf::sync::SyncError),
    #[error(transparent)]
    Crawlers(#[from] CrawlerListError),
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    #[error("starting the DNS checks: {0}")]
    Runtime(io::Error),
}

/// `map_err` for an I/O error on a named file.
pub(crate) fn file_error(path: &Path) -> impl FnOnce(io::Error) -> CliError + '_ {
    move |source| CliError::File {
        path: path.to_owned(),
        source,
    }
}

fn read_secret(path: &PathBuf) -> Result<String, CliError> {
    let s = std::fs::read_to_string(path).map_err(file_error(path))?;
    Ok(s.trim().to_owned())
}

async fn ingest(a: IngestArgs) -> Result<(), CliError> {
    use sha2::{Digest, Sha256};
    use std::sync::Arc;
    let file: IngestFile = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(file_error(p))?;
            toml::from_str(&text).map_err(|e| CliError::Config(format!("{}: {e}", p.display())))?
        }
        None => IngestFile::default(),
    };
    let mut rules = a.rules;
    if rules.rules.is_none() {
        rules.rules = file.rules.clone();
    }
    if rules.verified_crawlers.is_none() {
        rules.verified_crawlers = file.verified_crawlers.clone();
    }
    let crawler_dns = match (a.crawler_dns, &file.crawler_dns) {
        (Some(d), _) => d,
        (None, Some(text)) => text
            .parse()
            .map_err(|e: crate::crawlers::DnsServersError| CliError::Config(e.to_string()))?,
        // Reverse lookups name the client's address to the resolver: not by
        // default when addresses are to be tokenized.
        (None, None) if a.tokenize_ip || file.tokenize_ip == Some(true) => DnsServers::Off,
        (None, None) => DnsServers::System,
    };
    for c in file.allow.iter().flatten() {
        rules.allow.push(
            c.parse()
                .map_err(|e: crate::pipeline::CidrError| CliError::Config(e.to_string()))?,
        );
    }
    let listen = a
        .listen
        .or(file.listen)
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8230)));
    let vault_addr = a
        .vault_addr
        .or(file.vault_addr)
        .unwrap_or_else(|| "http://127.0.0.1:8210".into());
    let token = match a.vault_token_file.or(file.vault_token_file) {
        Some(p) => read_secret(&p)?,
        None => std::env::var("VAULT_TOKEN").map_err(|_| {
            CliError::Config(
                "a token for transform/encode: --vault-token-file or VAULT_TOKEN".into(),
            )
        })?,
    };
    let role = a.role.or(file.role).unwrap_or_else(|| "fraud".into());
    let transformation = a
        .transformation
        .or(file.transformation)
        .unwrap_or_else(|| "fraud-subject".into());
    let tokens_file = a
        .ingest_tokens_file
        .or(file.ingest_tokens_file)
        .ok_or_else(|| {
            CliError::Config("--ingest-tokens-file: the bearer tokens log shippers use".into())
        })?;
    let ingest_tokens: Vec<[u8; 32]> = std::fs::read_to_string(&tokens_file)
        .map_err(file_error(&tokens_file))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Sha256::digest(l.as_bytes()).into())
        .collect();
    if ingest_tokens.is_empty() {
        return Err(CliError::Config(format!(
            "{}: no tokens",
            tokens_file.display()
        )));
    }
    let brokers = a
        .kafka_brokers
        .or(file.kafka_brokers)
        .ok_or_else(|| CliError::Config("--kafka-brokers: signals go to Kafka".into()))?;
    let input_topic = a
        .input_topic
        .or(file.input_topic)
        .unwrap_or_else(|| "gateway-logs".into());
    let group = a.group.or(file.group).unwrap_or_else(|| "pii-fraud".into());
    let signals_topic = a
        .signals_topic
        .or(file.signals_topic)
        .unwrap_or_else(|| "fraud-signals".into());
    let spool_dir = a
        .spool_dir
        .or(file.spool_dir)
        .unwrap_or_else(|| "/var/lib/pii-fraud/spool".into());
    let spool_cap = a
        .spool_max_bytes
        .or(file.spool_max_bytes)
        .unwrap_or(1 << 30);
    let tokenize_ip = a.tokenize_ip || file.tokenize_ip.unwrap_or(false);

    let client =
        crate::tokenize::TransformClient::new(&vault_addr, &role, &transformation, &token)?;
    let transport = crate::sink::KafkaTransport::new(&brokers, &a.kafka_options, &signals_topic)
        .map_err(|e| CliError::Config(format!("kafka producer: {e}")))?;
    let sink = crate::sink::Sink::start(transport, &spool_dir, spool_cap, 256)?;
    let mut service = crate::ingest::Ingest::new(
        rules.pipeline(crawler_dns != DnsServers::Off)?,
        client,
        sink,
        tokenize_ip,
    );
    if crawler_dns != DnsServers::Off {
        let budget = Budget::default();
        match Resolver::new(&crawler_dns, budget.deadline) {
            Ok(r) => service = service.with_crawler_dns(r, budget),
            // No resolver configuration (no /etc/resolv.conf): claims stay
            // unverified, and the ingest runs.
            Err(e) if crawler_dns == DnsServers::System => {
                tracing::warn!(error = %e, "crawler claims will not be verified");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let service = Arc::new(service);
    let cfg = crate::ingest::IngestConfig {
        listen,
        ingest_tokens_sha256: ingest_tokens,
        tokenize_ip,
        kafka_in: (!input_topic.is_empty()).then(|| crate::ingest::KafkaConfig {
            brokers: brokers.clone(),
            options: a.kafka_options.clone(),
            input_topic,
            group,
        }),
        kafka_batch: 500,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = crate::ingest::serve_http(service.clone(), &cfg, async {
        let _ = stop_rx.await;
    })
    .await?;
    tracing::info!(%addr, signals = %signals_topic, "fraud ingest listening");
    eprintln!(
        "fraud ingest: http://{addr}/v1/fraud/ingest, signals to {signals_topic} on {brokers}"
    );
    let consumer = cfg.kafka_in.clone().map(|k| {
        let s = service.clone();
        let batch = cfg.kafka_batch;
        tokio::spawn(async move { crate::ingest::consume(s, &k, batch).await })
    });
    let result = match consumer {
        Some(c) => tokio::select! {
            r = c => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "gateway-logs consumer stopped; shutting down");
                    Err(e.into())
                }
                Err(e) => Err(CliError::Config(format!("consumer task: {e}"))),
            },
            () = shutdown() => Ok(()),
        },
        None => {
            shutdown().await;
            Ok(())
        }
    };
    // Requests in flight finish (their answers wait for durable signals).
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), server).await;
    result
}

/// Ctrl-C or SIGTERM (what Kubernetes sends), logged. SIGHUP is logged and
/// ignored: the ingest has nothing to reload, and a hangup (a closed
/// terminal, or the kernel's SIGHUP to a stopped member of a process group
/// that became orphaned) must not end it without a word.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let hangup = async {
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                while s.recv().await.is_some() {
                    tracing::warn!("SIGHUP ignored (nothing to reload); SIGTERM stops the ingest");
                }
                std::future::pending::<()>().await
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
        () = hangup => {}
    }
}

/// A `--mode` that is not off, shadow or enforce.
#[derive(Debug, thiserror::Error)]
#[error("{0:?}: off, shadow or enforce")]
pub struct ModeError(String);

fn parse_mode(s: &str) -> Result<Mode, ModeError> {
    match s {
        "off" => Ok(Mode::Off),
        "shadow" => Ok(Mode::Shadow),
        "enforce" => Ok(Mode::Enforce),
        _ => Err(ModeError(s.to_owned())),
    }
}

impl RulesArgs {
    pub fn load(&self) -> Result<RuleSet, CliError> {
        let set = match &self.rules {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(file_error(p))?;
                RuleSet::parse(&text)?
            }
            None => RuleSet::parse(crate::rules::DEFAULT_RULES)?,
        };
        Ok(match self.mode {
            Some(m) => set.with_mode(m),
            None => set,
        })
    }

    fn crawler_list(&self) -> Result<CrawlerList, CliError> {
        Ok(match &self.verified_crawlers {
            Some(p) => CrawlerList::parse(&std::fs::read_to_string(p).map_err(file_error(p))?)?,
            None => CrawlerList::builtin()?,
        })
    }

    /// The pipeline; with `check_crawlers`, crawler claims are judged by
    /// what DNS checks find (the caller makes them).
    fn pipeline(&self, check_crawlers: bool) -> Result<Pipeline, CliError> {
        let cfg = PipelineConfig {
            allow: self.allow.clone(),
            crawlers: match check_crawlers {
                true => Some(std::sync::Arc::new(self.crawler_list()?)),
                false => None,
            },
            ..PipelineConfig::default()
        };
        Ok(Pipeline::new(cfg, self.load()?, UaClassifier::new()?))
    }
}

pub async fn run(cmd: FraudCmd) -> Result<(), CliError> {
    match cmd {
        FraudCmd::Ingest(a) => ingest(*a).await,
        FraudCmd::WafSync(a) => crate::waf::sync::run(*a).await.map_err(CliError::WafSync),
        // Offline work is synchronous (and may block on its own DNS
        // runtime): it runs on a blocking thread, not on the async workers.
        FraudCmd::Replay(a) => blocking(move || offline::replay_cmd(a)).await,
        FraudCmd::Drill(a) => blocking(move || offline::drill_cmd(a)).await,
    }
}

async fn blocking(
    f: impl FnOnce() -> Result<(), CliError> + Send + 'static,
) -> Result<(), CliError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CliError::Config(format!("worker thread: {e}")))?
}
