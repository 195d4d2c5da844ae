//! The offline commands: `fraud replay` and `fraud drill` (synchronous;
//! run on a blocking thread).

use std::fs::File;
use std::io::{self, BufReader, Write};

use super::{file_error, CliError, DrillArgs, ReplayArgs};
use crate::crawlers::{BlockingChecks, Budget, CrawlerChecks, DnsServers, Resolver};
use crate::drill::{self, DrillConfig};
use crate::replay::replay;
use crate::tokenize::LocalPseudonyms;

pub(super) fn replay_cmd(a: ReplayArgs) -> Result<(), CliError> {
    let check = a.crawler_dns != DnsServers::Off;
    let mut pipeline = a.rules.pipeline(check)?;
    let mut dns = match check {
        true => {
            let budget = Budget::default();
            let r = Resolver::new(&a.crawler_dns, budget.deadline)?;
            Some(BlockingChecks::new(r, budget).map_err(CliError::Runtime)?)
        }
        false => None,
    };
    let mut tok = LocalPseudonyms::random()?;
    let input: Box<dyn io::BufRead> = if a.input.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        let f = File::open(&a.input).map_err(file_error(&a.input))?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    };
    let output: Box<dyn Write> = if a.output.as_os_str() == "-" {
        Box::new(io::stdout().lock())
    } else {
        Box::new(File::create(&a.output).map_err(file_error(&a.output))?)
    };
    let checks = dns.as_mut().map(|d| d as &mut dyn CrawlerChecks);
    let (report, _) = replay(input, output, &mut pipeline, &mut tok, checks)?;
    let c = &report.counters;
    eprintln!(
        "fraud replay: {} records, {} rejected, {} own responses skipped, {} allowlisted, {} from verified crawlers, {} from fake crawlers; {} keys: {} block, {} challenge; evictions ip {} subnet {} subject {} pair {}",
        c.records, c.rejected_total(), c.own_responses, c.allowlisted, c.verified_crawlers, c.fake_crawlers,
        report.keys, report.blocked, report.challenged,
        c.evictions_ip, c.evictions_subnet, c.evictions_subject, c.evictions_pair
    );
    for (r, n) in crate::record::Reject::ALL.iter().zip(c.rejected) {
        if n > 0 {
            eprintln!("  rejected {}: {n} ({r})", r.label());
        }
    }
    Ok(())
}

pub(super) fn drill_cmd(a: DrillArgs) -> Result<(), CliError> {
    let cfg = DrillConfig {
        seed: a.seed,
        humans: a.humans,
        nat_humans: a.nat_humans,
        bots_per_kind: a.bots_per_kind,
        minutes: a.minutes,
    };
    let traffic = drill::generate(&cfg);
    if let Some(p) = &a.write_log {
        let mut f = io::BufWriter::new(File::create(p).map_err(file_error(p))?);
        for l in &traffic.lines {
            writeln!(f, "{l}").map_err(file_error(p))?;
        }
        f.flush().map_err(file_error(p))?;
    }
    if let Some(p) = &a.write_clients {
        let clients: Vec<serde_json::Value> = traffic
            .clients
            .iter()
            .map(|c| {
                serde_json::json!({"kind": c.kind.label(), "bot": c.kind.is_bot(),
                    "ips": c.ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "subjects": c.subjects})
            })
            .collect();
        let text = serde_json::to_string(&clients).unwrap_or_default();
        std::fs::write(p, text).map_err(file_error(p))?;
    }
    if let Some(p) = &a.write_zone {
        std::fs::write(p, traffic.zone.dnsmasq_conf()).map_err(file_error(p))?;
    }
    let mut pipeline = a.rules.pipeline(true)?;
    let mut tok = LocalPseudonyms::with_key([0x5a; 32]);
    // The drill's crawler claims are checked against its own zone.
    let mut dns =
        BlockingChecks::new(traffic.zone.clone(), Budget::default()).map_err(CliError::Runtime)?;
    let log = traffic.lines.join("\n");
    let (_, decisions) = replay(
        log.as_bytes(),
        io::sink(),
        &mut pipeline,
        &mut tok,
        Some(&mut dns),
    )?;
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
        write!(out, "{}", report.markdown(&cfg, traffic.lines.len())).map_err(CliError::Output)?;
    }
    Ok(())
}
