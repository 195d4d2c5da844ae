//! `host-proxy fraud …`: replay a log file offline, run the drill.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::drill::{self, DrillConfig};
use crate::pipeline::{Cidr, Pipeline, PipelineConfig};
use crate::replay::{replay, ReplayError};
use crate::rules::{Mode, RuleError, RuleSet};
use crate::tokenize::{LocalPseudonyms, TokenizeError};
use crate::ua::{PatternError, UaClassifier};

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
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long)]
    pub output: PathBuf,
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
}

fn read_secret(path: &PathBuf) -> Result<String, CliError> {
    let s = std::fs::read_to_string(path).map_err(|source| CliError::File {
        path: path.clone(),
        source,
    })?;
    Ok(s.trim().to_owned())
}

async fn ingest(a: IngestArgs) -> Result<(), CliError> {
    use sha2::{Digest, Sha256};
    use std::sync::Arc;
    let file: IngestFile = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| CliError::File {
                path: p.clone(),
                source,
            })?;
            toml::from_str(&text).map_err(|e| CliError::Config(format!("{}: {e}", p.display())))?
        }
        None => IngestFile::default(),
    };
    let mut rules = a.rules;
    if rules.rules.is_none() {
        rules.rules = file.rules.clone();
    }
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
        .map_err(|source| CliError::File {
            path: tokens_file.clone(),
            source,
        })?
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
    let service = Arc::new(crate::ingest::Ingest::new(
        rules.pipeline()?,
        client,
        sink,
        tokenize_ip,
    ));
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
                Ok(Err(e)) => Err(e.into()),
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

/// Ctrl-C or SIGTERM (what Kubernetes sends).
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
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
                let text = std::fs::read_to_string(p).map_err(|source| CliError::File {
                    path: p.clone(),
                    source,
                })?;
                RuleSet::parse(&text)?
            }
            None => RuleSet::parse(crate::rules::DEFAULT_RULES)?,
        };
        Ok(match self.mode {
            Some(m) => set.with_mode(m),
            None => set,
        })
    }

    fn pipeline(&self) -> Result<Pipeline, CliError> {
        let cfg = PipelineConfig {
            allow: self.allow.clone(),
            ..PipelineConfig::default()
        };
        Ok(Pipeline::new(cfg, self.load()?, UaClassifier::new()?))
    }
}

pub async fn run(cmd: FraudCmd) -> Result<(), CliError> {
    match cmd {
        FraudCmd::Ingest(a) => ingest(*a).await,
        FraudCmd::WafSync(a) => crate::waf::sync::run(*a).await.map_err(CliError::WafSync),
        FraudCmd::Replay(a) => {
            let mut pipeline = a.rules.pipeline()?;
            let mut tok = LocalPseudonyms::random()?;
            let input: Box<dyn io::BufRead> = if a.input.as_os_str() == "-" {
                Box::new(io::stdin().lock())
            } else {
                let f = File::open(&a.input).map_err(|source| CliError::File {
                    path: a.input.clone(),
                    source,
                })?;
                Box::new(BufReader::with_capacity(1 << 16, f))
            };
            let output: Box<dyn Write> = if a.output.as_os_str() == "-" {
                Box::new(io::stdout().lock())
            } else {
                Box::new(File::create(&a.output).map_err(|source| CliError::File {
                    path: a.output.clone(),
                    source,
                })?)
            };
            let (report, _) = replay(input, output, &mut pipeline, &mut tok)?;
            let c = &report.counters;
            eprintln!(
                "fraud replay: {} records, {} rejected, {} own responses skipped, {} allowlisted; {} keys: {} block, {} challenge; evictions ip {} subnet {} subject {}",
                c.records, c.rejected_total(), c.own_responses, c.allowlisted, report.keys, report.blocked, report.challenged,
                c.evictions_ip, c.evictions_subnet, c.evictions_subject
            );
            for (r, n) in crate::record::Reject::ALL.iter().zip(c.rejected) {
                if n > 0 {
                    eprintln!("  rejected {}: {n} ({r})", r.label());
                }
            }
            Ok(())
        }
        FraudCmd::Drill(a) => {
            let cfg = DrillConfig {
                seed: a.seed,
                humans: a.humans,
                nat_humans: a.nat_humans,
                bots_per_kind: a.bots_per_kind,
                minutes: a.minutes,
            };
            let traffic = drill::generate(&cfg);
            if let Some(p) = &a.write_log {
                let mut f =
                    io::BufWriter::new(File::create(p).map_err(|source| CliError::File {
                        path: p.clone(),
                        source,
                    })?);
                for l in &traffic.lines {
                    writeln!(f, "{l}").map_err(|source| CliError::File {
                        path: p.clone(),
                        source,
                    })?;
                }
                f.flush().map_err(|source| CliError::File {
                    path: p.clone(),
                    source,
                })?;
            }
            let mut pipeline = a.rules.pipeline()?;
            let mut tok = LocalPseudonyms::with_key([0x5a; 32]);
            let log = traffic.lines.join("\n");
            let (_, decisions) = replay(log.as_bytes(), io::sink(), &mut pipeline, &mut tok)?;
            let report = drill::evaluate(&traffic, &decisions, &tok);
            let mut out = io::stdout().lock();
            if a.json {
                let v = serde_json::json!({
                    "seed": cfg.seed, "lines": traffic.lines.len(),
                    "recall": report.recall, "precision": report.precision,
                    "false_positive_rate": report.false_positive_rate,
                    "by_kind": report.by_kind.iter().map(|(k, s)| serde_json::json!({
                        "kind": k.label(), "clients": s.clients, "blocked": s.blocked, "challenged": s.challenged
                    })).collect::<Vec<_>>(),
                });
                writeln!(out, "{v}").map_err(CliError::Output)?;
            } else {
                write!(out, "{}", report.markdown(&cfg, traffic.lines.len()))
                    .map_err(CliError::Output)?;
            }
            Ok(())
        }
    }
}
