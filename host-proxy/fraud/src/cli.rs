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
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "off" => Ok(Mode::Off),
        "shadow" => Ok(Mode::Shadow),
        "enforce" => Ok(Mode::Enforce),
        _ => Err(format!("{s:?}: off, shadow or enforce")),
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

pub fn run(cmd: FraudCmd) -> Result<(), CliError> {
    match cmd {
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
