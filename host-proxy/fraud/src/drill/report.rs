//! Tracing enforced blocks back to the clients they hit, and the report.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use super::{Client, DrillConfig, Kind, Traffic};
use crate::pipeline::{Cidr, Decision};
use crate::rules::{Action, KeyType, Mode};
use crate::tokenize::LocalPseudonyms;

/// Per-kind outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindScore {
    pub clients: usize,
    pub blocked: usize,
    pub challenged: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DrillReport {
    pub by_kind: Vec<(Kind, KindScore)>,
    pub bots: usize,
    pub bots_blocked: usize,
    pub humans: usize,
    pub humans_blocked: usize,
    pub recall: f64,
    pub precision: f64,
    pub false_positive_rate: f64,
}

/// The keys of one action's enforced decisions.
struct Keys {
    ips: HashSet<IpAddr>,
    nets: Vec<Cidr>,
    subs: HashSet<String>,
    /// "<address> <subject token>"
    pairs: HashSet<String>,
}

/// Traces enforced blocks (and challenges) back to clients.
pub fn evaluate(
    traffic: &Traffic,
    decisions: &[Decision],
    tokens: &LocalPseudonyms,
) -> DrillReport {
    let enforced = |a: Action| move |d: &&Decision| d.action == a && d.mode == Mode::Enforce;
    let keys = |a: Action| {
        let mut ips = HashSet::new();
        let mut nets = Vec::new();
        let mut subs = HashSet::new();
        let mut pairs = HashSet::new();
        for d in decisions.iter().filter(enforced(a)) {
            match d.key_type {
                KeyType::Ip => {
                    if let Ok(ip) = d.key.parse::<IpAddr>() {
                        ips.insert(ip);
                    }
                }
                KeyType::Subnet => {
                    if let Ok(c) = d.key.parse::<Cidr>() {
                        nets.push(c);
                    }
                }
                KeyType::Subject => {
                    subs.insert(d.key.clone());
                }
                KeyType::IpSubject => {
                    pairs.insert(d.key.clone());
                }
            }
        }
        Keys {
            ips,
            nets,
            subs,
            pairs,
        }
    };
    let hit = |c: &Client, k: &Keys| {
        c.ips
            .iter()
            .any(|ip| k.ips.contains(ip) || k.nets.iter().any(|n| n.contains(*ip)))
            || c.subjects.iter().any(|s| {
                let t = tokens.one(s);
                k.subs.contains(&t)
                    || c.ips
                        .iter()
                        .any(|ip| k.pairs.contains(&format!("{ip} {t}")))
            })
    };
    let blocked = keys(Action::Block);
    let challenged = keys(Action::Challenge);
    let mut by: HashMap<Kind, KindScore> = HashMap::new();
    for c in &traffic.clients {
        let e = by.entry(c.kind).or_default();
        e.clients += 1;
        if hit(c, &blocked) {
            e.blocked += 1;
        } else if hit(c, &challenged) {
            e.challenged += 1;
        }
    }
    let mut by_kind: Vec<(Kind, KindScore)> = by.into_iter().collect();
    by_kind.sort_by_key(|(k, _)| *k);
    let sum = |bot: bool, f: fn(&KindScore) -> usize| -> usize {
        by_kind
            .iter()
            .filter(|(k, _)| k.is_bot() == bot)
            .map(|(_, s)| f(s))
            .sum()
    };
    let (bots, bots_blocked) = (sum(true, |s| s.clients), sum(true, |s| s.blocked));
    let (humans, humans_blocked) = (sum(false, |s| s.clients), sum(false, |s| s.blocked));
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    DrillReport {
        by_kind,
        bots,
        bots_blocked,
        humans,
        humans_blocked,
        recall: ratio(bots_blocked, bots),
        precision: if bots_blocked + humans_blocked == 0 {
            1.0
        } else {
            ratio(bots_blocked, bots_blocked + humans_blocked)
        },
        false_positive_rate: ratio(humans_blocked, humans),
    }
}

impl DrillReport {
    /// The Markdown table docs/fraud.md shows.
    pub fn markdown(&self, cfg: &DrillConfig, lines: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "seed {}, {} minutes, {} lines, {} humans ({} behind one NAT), {} search-engine crawlers, {} bots of each kind\n",
            cfg.seed,
            cfg.minutes,
            lines,
            cfg.humans + cfg.nat_humans,
            cfg.nat_humans,
            cfg.bots_per_kind,
            cfg.bots_per_kind
        );
        let _ = writeln!(
            s,
            "| clients | count | blocked | challenged only | share blocked |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for (k, v) in &self.by_kind {
            let share = if v.clients == 0 {
                0.0
            } else {
                100.0 * v.blocked as f64 / v.clients as f64
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} % |",
                k.label(),
                v.clients,
                v.blocked,
                v.challenged,
                share
            );
        }
        let _ = writeln!(
            s,
            "\nrecall {:.1} % ({} of {} abusive clients blocked), precision {:.1} %, false-positive rate {:.2} % ({} of {} legitimate clients blocked: humans and verified search engines)",
            100.0 * self.recall,
            self.bots_blocked,
            self.bots,
            100.0 * self.precision,
            100.0 * self.false_positive_rate,
            self.humans_blocked,
            self.humans
        );
        s
    }
}
