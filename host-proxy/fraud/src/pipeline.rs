//! Records in, decisions out: the allowlist and verified crawlers, our own
//! responses set aside, four bounded tables (address, subnet, subject
//! token, and address with subject token), features, rules.
//!
//! The pipeline never sees a raw subject: the caller passes the enclave's
//! token for `jwt_sub` (see [`crate::tokenize`]), and [`LogRecord::jwt_sub`]
//! is ignored here.
//!
//! Why this size: 532 lines of code, the rest its unit tests; the per-record path through the four tables is kept in one file so its order (allowlists, our own responses, then evidence) reads top to bottom.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::crawlers::{Check, CrawlerGate, CrawlerList, Lookup};
use crate::record::{LogRecord, Reject};
use crate::rules::{Action, KeyType, Mode, RuleSet, Severity};
use crate::state::{fnv1a, EntityState, Observation, WINDOW_S};
use crate::table::BoundedTable;
use crate::ua::{UaClass, UaClassifier};

/// A decision is sent again at the same severity after this long, so a
/// block's TTL is refreshed while the abuse goes on.
pub const REFRESH_MS: i64 = 60_000;
/// Subject tokens longer than this are not keyed (a 256-byte subject's
/// base58 token is about 400 characters).
pub const MAX_TOKEN: usize = 512;
const LABEL: usize = 120;
/// How long an unmarked 403 to an address we block counts as ours.
pub const OWN_BLOCK_MS: i64 = 15 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subnet {
    V4([u8; 3]),
    V6([u8; 8]),
}

impl Subnet {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => {
                let o = a.octets();
                Subnet::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(a) => {
                let mut p = [0; 8];
                p.copy_from_slice(&a.octets()[..8]);
                Subnet::V6(p)
            }
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subnet::V4(o) => write!(f, "{}.{}.{}.0/24", o[0], o[1], o[2]),
            Subnet::V6(p) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
        }
    }
}

/// The address as the log wrote it (or, with --tokenize-ip, its token),
/// inline: at most 120 bytes, no allocation per entry.
#[derive(Clone, Copy)]
struct Label {
    len: u8,
    bytes: [u8; LABEL],
}

impl Label {
    fn new(s: &str) -> Self {
        let mut bytes = [0; LABEL];
        // Cut at a character boundary (labels are ASCII in practice).
        let mut n = s.len().min(LABEL);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        bytes[..n].copy_from_slice(&s.as_bytes()[..n]);
        Label {
            len: n as u8,
            bytes,
        }
    }
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

/// A table entry: the key's state, the most severe decision emitted for
/// it so far (and when), and for addresses their text as logged.
struct Entry {
    state: EntityState,
    emitted: Option<(Severity, i64)>,
    label: Label,
}

impl Entry {
    fn new(ts_ms: i64, label: &str) -> Self {
        Entry {
            state: EntityState::new(ts_ms),
            emitted: None,
            label: Label::new(label),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub ip_capacity: usize,
    pub subnet_capacity: usize,
    pub subject_capacity: usize,
    pub pair_capacity: usize,
    /// Path prefixes whose POSTs are login attempts.
    pub login_paths: Vec<String>,
    /// Addresses that are never scored.
    pub allow: Vec<Cidr>,
    /// Crawlers verified by DNS are never scored either; None: claims are
    /// not checked (scored as any other user agent).
    pub crawlers: Option<Arc<CrawlerList>>,
    /// Addresses whose crawler check is remembered.
    pub crawler_capacity: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            ip_capacity: 200_000,
            subnet_capacity: 50_000,
            subject_capacity: 200_000,
            pair_capacity: 200_000,
            login_paths: [
                "/login",
                "/signin",
                "/api/login",
                "/api/auth/login",
                "/oauth/token",
                "/session",
                "/users/sign_in",
            ]
            .map(String::from)
            .to_vec(),
            allow: Vec::new(),
            crawlers: None,
            crawler_capacity: 65_536,
        }
    }
}

/// An address block of an allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an address or CIDR block (203.0.113.0/24, 2001:db8::/32)")]
pub struct CidrError(pub String);

impl std::str::FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError(s.to_owned());
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let written: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(bad)?,
        };
        let addr = written.to_canonical();
        // An IPv4-mapped block (::ffff:a.b.c.d/N) is the IPv4 block /N-96;
        // one shorter than /96 reaches outside the mapped range: refused.
        let prefix = match (written, addr) {
            (IpAddr::V6(_), IpAddr::V4(_)) => prefix.checked_sub(96).ok_or_else(bad)?,
            _ => prefix,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
            IpAddr::V6(a) => (u128::from(a), 128u32),
        };
        let ((a, la), (b, lb)) = (bits(self.addr), bits(ip.to_canonical()));
        if la != lb {
            return false;
        }
        let p = u32::from(self.prefix).min(la);
        if p == 0 {
            return true;
        }
        let shift = la - p;
        (a >> shift) == (b >> shift)
    }
}

impl Cidr {
    /// Whether the two blocks share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One decision about one key, with what produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub key_type: KeyType,
    pub key: String,
    pub score: f64,
    pub action: Action,
    pub mode: Mode,
    pub reasons: Vec<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub window_s: u32,
}

impl Decision {
    pub fn severity(&self) -> Severity {
        Severity::of(self.action, self.mode)
    }
}

/// What the pipeline has counted since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub records: u64,
    pub rejected: [u64; Reject::ALL.len()],
    /// Responses our own blocking or shedding produced: never evidence.
    pub own_responses: u64,
    pub allowlisted: u64,
    /// Records from crawlers verified by reverse and forward DNS (not scored).
    pub verified_crawlers: u64,
    /// Records whose user agent claims a crawler that DNS disowns.
    pub fake_crawlers: u64,
    pub decisions: u64,
    pub evictions_ip: u64,
    pub evictions_subnet: u64,
    pub evictions_subject: u64,
    pub evictions_pair: u64,
}

impl Counters {
    pub fn reject(&mut self, r: Reject) {
        if let Some(i) = Reject::ALL.iter().position(|&x| x == r) {
            self.rejected[i] += 1;
        }
    }
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }
}

pub struct Pipeline {
    rules: RuleSet,
    ua: UaClassifier,
    login_paths: Vec<String>,
    allow: Vec<Cidr>,
    crawlers: Option<CrawlerGate>,
    ips: BoundedTable<IpAddr, Entry>,
    subnets: BoundedTable<Subnet, Entry>,
    subjects: BoundedTable<Box<str>, Entry>,
    /// "<address label> <subject token>"
    pairs: BoundedTable<Box<str>, Entry>,
    counters: Counters,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, rules: RuleSet, ua: UaClassifier) -> Self {
        Pipeline {
            rules,
            ua,
            login_paths: cfg.login_paths,
            allow: cfg.allow,
            crawlers: cfg
                .crawlers
                .map(|l| CrawlerGate::new(l, cfg.crawler_capacity)),
            ips: BoundedTable::new(cfg.ip_capacity),
            subnets: BoundedTable::new(cfg.subnet_capacity),
            subjects: BoundedTable::new(cfg.subject_capacity),
            pairs: BoundedTable::new(cfg.pair_capacity),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        Counters {
            evictions_ip: self.ips.evictions(),
            evictions_subnet: self.subnets.evictions(),
            evictions_subject: self.subjects.evictions(),
            evictions_pair: self.pairs.evictions(),
            ..self.counters.clone()
        }
    }

    /// Counts a line that did not parse.
    pub fn rejected(&mut self, r: Reject) {
        self.counters.reject(r);
    }

    /// Bytes the tables reserved when they were made (they do not grow).
    pub fn reserved_bytes(&self) -> usize {
        self.ips.reserved_bytes()
            + self.subnets.reserved_bytes()
            + self.subjects.reserved_bytes()
            + self.pairs.reserved_bytes()
            + self
                .crawlers
                .as_ref()
                .map_or(0, CrawlerGate::reserved_bytes)
    }

    /// The crawler list, when claims are checked.
    pub fn crawler_list(&self) -> Option<Arc<CrawlerList>> {
        self.crawlers.as_ref().map(|g| g.list().clone())
    }

    /// The crawler checks `records` need before they are observed (none
    /// when claims are not checked).
    pub fn crawler_checks<'a>(
        &self,
        records: impl Iterator<Item = &'a LogRecord>,
        now_ms: i64,
    ) -> Vec<Lookup> {
        match &self.crawlers {
            Some(g) => g.wanted(
                records
                    .filter(|r| !self.allowed(r.ip))
                    .map(|r| (r.ip, r.user_agent.as_str())),
                now_ms,
            ),
            None => Vec::new(),
        }
    }

    /// Marks crawler checks as asked in the background, not yet answered.
    pub fn crawler_pending(&mut self, asked: &[Lookup], now_ms: i64) {
        if let Some(g) = &mut self.crawlers {
            g.pending(asked, now_ms);
        }
    }

    /// Remembers what crawler checks found.
    pub fn crawler_checked(&mut self, results: &[(Lookup, Check)], now_ms: i64) {
        if let Some(g) = &mut self.crawlers {
            g.record(results, now_ms);
        }
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// On the allowlist: never scored, never checked.
    fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip))
    }

    /// Observes one record; `subject` is the enclave's token for its
    /// `jwt_sub` (None when anonymous). Decisions that escalate (or refresh)
    /// a key are appended to `out`.
    pub fn observe(&mut self, rec: &LogRecord, subject: Option<&str>, out: &mut Vec<Decision>) {
        self.counters.records += 1;
        let before = out.len();
        if self.allowed(rec.ip) {
            self.counters.allowlisted += 1;
            return;
        }
        let path = rec.path.split(['?', '#']).next().unwrap_or("");
        let login_attempt = rec.method == "POST"
            && self
                .login_paths
                .iter()
                .any(|p| path.starts_with(p.as_str()));
        let subject = subject.filter(|s| !s.is_empty() && s.len() <= MAX_TOKEN);
        let crawler = self
            .crawlers
            .as_ref()
            .and_then(|g| g.judge(rec.ip, &rec.user_agent, rec.ts_ms));
        match crawler {
            // A crawler does not sign in: a verified address's signed-in
            // requests and login attempts are scored as anyone's.
            Some(Check::Verified) if subject.is_none() && !login_attempt => {
                self.counters.verified_crawlers += 1;
                return;
            }
            Some(Check::Impostor) => self.counters.fake_crawlers += 1,
            _ => {}
        }
        // A 403 to an address we enforce a block on is ours, marked or not,
        // for as long as a first block lasts at the WAF (15 min).
        let ip_blocked = self
            .ips
            .get(&rec.ip)
            .and_then(|e| e.emitted)
            .is_some_and(|(s, at)| {
                s >= Severity::of(Action::Block, Mode::Enforce)
                    && rec.ts_ms.saturating_sub(at) < OWN_BLOCK_MS
            });
        // Markers count only with the status their component answers.
        let marked = matches!(
            (rec.blocked_by.as_deref(), rec.status),
            (Some("pii-fraud"), 403) | (Some("pii-shed"), 429 | 503)
        );
        let ours = marked || (rec.status == 403 && ip_blocked);
        if ours {
            self.counters.own_responses += 1;
            return;
        }
        let ua = match crawler {
            Some(Check::Impostor) => UaClass::FakeCrawler,
            _ => self.ua.classify(&rec.user_agent),
        };
        let o = Observation {
            ts_ms: rec.ts_ms,
            // A 429 says the service was busy, not that the client misbehaved.
            status: if rec.status == 429 { 200 } else { rec.status },
            path_hash: fnv1a(path.as_bytes()),
            subject_hash: subject.map(|s| fnv1a(s.as_bytes())),
            ip_hash: ip_hash(rec.ip),
            ua_hash: fnv1a(rec.user_agent.as_bytes()),
            ua,
            login_attempt,
        };
        let now = rec.ts_ms;
        let rules = &self.rules;
        let (e, _) = self.ips.entry(&rec.ip, || Entry::new(now, &rec.ip_text));
        e.state.observe(&o, subject.is_none());
        let label = e.label;
        // While the address's crawler claim is being checked, its own
        // decisions wait (a real crawler is not blocked before its answer).
        if crawler != Some(Check::Pending) {
            decide(rules, KeyType::Ip, &label.as_str(), e, now, out);
        }
        let net = Subnet::of(rec.ip);
        let (e, _) = self.subnets.entry(&net, || Entry::new(now, ""));
        e.state.observe(&o, subject.is_none());
        decide(rules, KeyType::Subnet, &net, e, now, out);
        if let Some(tok) = subject {
            let key: Box<str> = tok.into();
            let (e, _) = self.subjects.entry(&key, || Entry::new(now, ""));
            e.state.observe(&o, true);
            decide(rules, KeyType::Subject, &tok, e, now, out);
            // The account from this address: its own behaviour, apart from
            // the account's other devices and the address's other users.
            let pair: Box<str> = format!("{} {tok}", label.as_str()).into();
            let (e, _) = self.pairs.entry(&pair, || Entry::new(now, ""));
            e.state.observe(&o, true);
            decide(rules, KeyType::IpSubject, &pair, e, now, out);
        }
        self.counters.decisions += (out.len() - before) as u64;
    }

    /// The class the pipeline gives a user agent.
    pub fn classify(&self, ua: &str) -> UaClass {
        self.ua.classify(ua)
    }
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => fnv1a(&a.octets()),
        IpAddr::V6(a) => fnv1a(&a.octets()),
    }
}

fn decision(
    rules: &RuleSet,
    key_type: KeyType,
    key: String,
    s: &EntityState,
    v: crate::rules::Verdict,
) -> Decision {
    Decision {
        key_type,
        key,
        score: v.score,
        action: v.action,
        mode: v.mode,
        reasons: v
            .reasons
            .iter()
            .map(|&(i, _)| rules.rule_name(i).to_owned())
            .collect(),
        first_seen_ms: s.first_seen_ms,
        last_seen_ms: s.last_seen_ms,
        window_s: WINDOW_S,
    }
}

fn decide(
    rules: &RuleSet,
    kt: KeyType,
    key: &dyn fmt::Display,
    e: &mut Entry,
    now: i64,
    out: &mut Vec<Decision>,
) {
    let v = rules.evaluate(kt, &e.state.features(now));
    if v.action == Action::None {
        return;
    }
    let sev = Severity::of(v.action, v.mode);
    let send = match e.emitted {
        None => true,
        Some((prev, at)) => sev > prev || (sev == prev && now - at >= REFRESH_MS),
    };
    if send {
        e.emitted = Some((sev.max(e.emitted.map_or(sev, |x| x.0)), now));
        out.push(decision(rules, kt, key.to_string(), &e.state, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::parse_line;

    fn pipeline(allow: &[&str]) -> Pipeline {
        let cfg = PipelineConfig {
            allow: allow.iter().map(|c| c.parse().expect("cidr")).collect(),
            ..PipelineConfig::default()
        };
        Pipeline::new(
            cfg,
            RuleSet::default_rules(),
            UaClassifier::new().expect("ua"),
        )
    }

    fn line(ts_ms: i64, ip: &str, path: &str, status: u16, ua: &str) -> LogRecord {
        let ts = crate::record::format_ts(ts_ms);
        let l = format!(
            r#"{{"ts":"{ts}","client_ip":"{ip}","method":"GET","host":"h","path":"{path}","status":{status},"bytes":1,"duration_ms":1,"user_agent":"{ua}","referer":"","jwt_sub":""}}"#
        );
        parse_line(l.as_bytes()).expect("test line parses")
    }

    #[test]
    fn a_404_prober_is_blocked_with_its_reasons() {
        let mut p = pipeline(&[]);
        let mut out = Vec::new();
        for i in 0..40 {
            p.observe(
                &line(
                    i * 700,
                    "198.51.100.9",
                    &format!("/wp-{i}.php"),
                    404,
                    "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
                ),
                None,
                &mut out,
            );
        }
        let d = out
            .iter()
            .filter(|d| d.key_type == KeyType::Ip)
            .max_by_key(|d| d.severity())
            .expect("a decision for the address");
        assert_eq!(
            (d.key.as_str(), d.action, d.mode),
            ("198.51.100.9", Action::Block, Mode::Enforce)
        );
        assert!(
            d.reasons.iter().any(|r| r == "not_found_probing"),
            "{:?}",
            d.reasons
        );
        // Escalations are emitted once, not per line.
        assert!(
            out.iter().filter(|d| d.key_type == KeyType::Ip).count() <= 3,
            "{out:?}"
        );
    }

    #[test]
    fn allowlisted_addresses_are_never_scored() {
        let mut p = pipeline(&["198.51.100.0/24"]);
        let mut out = Vec::new();
        for i in 0..100 {
            p.observe(
                &line(i * 100, "198.51.100.9", "/x", 404, "sqlmap/1.8"),
                None,
                &mut out,
            );
        }
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(p.counters().allowlisted, 100);
    }

    #[test]
    fn our_own_403s_and_429s_are_not_evidence() {
        // A browser client that our WAF blocked keeps retrying: the 403s it
        // gets from us must not turn into more evidence (the CrowdSec
        // feedback loop), nor must 429s from shedding.
        let mut p = pipeline(&[]);
        let mut out = Vec::new();
        let ua = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0 Safari/537.36";
        for i in 0..200 {
            let mut r = line(
                i * 2000 + (i * i * 37) % 1500,
                "192.0.2.50",
                "/checkout",
                if i % 2 == 0 { 403 } else { 429 },
                ua,
            );
            r.blocked_by = Some(if i % 2 == 0 { "pii-fraud" } else { "pii-shed" }.into());
            p.observe(&r, None, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(p.counters().own_responses, 200);
        // Upstream 429s (no marker) are not client errors either.
        for i in 0..60 {
            let t = i * 2000 + (i * i * 37) % 1500;
            p.observe(&line(t, "192.0.2.51", "/checkout", 429, ua), None, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_403_to_an_address_we_block_is_ours_even_unmarked() {
        let mut p = pipeline(&[]);
        let mut out = Vec::new();
        for i in 0..40 {
            p.observe(
                &line(i * 500, "198.51.100.7", "/.env", 404, "sqlmap/1.8"),
                None,
                &mut out,
            );
        }
        assert!(out.iter().any(|d| d.key_type == KeyType::Ip
            && d.action == Action::Block
            && d.mode == Mode::Enforce));
        let before = p.counters().own_responses;
        p.observe(
            &line(40 * 500, "198.51.100.7", "/", 403, "sqlmap/1.8"),
            None,
            &mut out,
        );
        assert_eq!(p.counters().own_responses, before + 1);
    }

    #[test]
    fn memory_is_flat_under_a_million_sprayed_addresses() {
        let cfg = PipelineConfig {
            ip_capacity: 50_000,
            subnet_capacity: 10_000,
            subject_capacity: 1000,
            ..PipelineConfig::default()
        };
        let mut p = Pipeline::new(
            cfg,
            RuleSet::default_rules(),
            UaClassifier::new().expect("ua"),
        );
        let reserved = p.reserved_bytes();
        let mut out = Vec::new();
        let mut r = line(0, "10.0.0.1", "/login", 401, "python-requests/2.32");
        for i in 0..1_000_000u32 {
            r.ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7));
            r.ts_ms = i64::from(i);
            p.observe(&r, None, &mut out);
            if out.len() > 10_000 {
                out.clear();
            }
        }
        let c = p.counters();
        assert_eq!(p.reserved_bytes(), reserved, "tables never grow");
        assert_eq!(c.evictions_ip, 1_000_000 - 50_000);
        assert!(c.evictions_subnet > 0);
    }

    #[test]
    fn an_old_block_does_not_hide_new_abuse_and_foreign_markers_are_not_ours() {
        let mut p = pipeline(&[]);
        let mut out = Vec::new();
        p.observe(
            &line(0, "198.51.100.8", "/", 200, "sqlmap/1.8"),
            None,
            &mut out,
        );
        assert!(out
            .iter()
            .any(|d| d.key_type == KeyType::Ip && d.action == Action::Block));
        out.clear();
        // 20 minutes later the block has lapsed: failed logins answered 403
        // by the application are evidence again.
        let ua = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0";
        for i in 0..30 {
            let mut r = line(20 * 60_000 + i * 900, "198.51.100.8", "/login", 403, ua);
            r.method = "POST".into();
            p.observe(&r, None, &mut out);
        }
        let d = out
            .iter()
            .filter(|d| d.key_type == KeyType::Ip)
            .max_by_key(|d| d.severity())
            .expect("decision");
        assert!(
            d.reasons.iter().any(|r| r == "credential_stuffing"),
            "{d:?}"
        );
        // A marker with the wrong status, or a marker of someone else's, is evidence.
        let before = p.counters().own_responses;
        for (who, status) in [("pii-fraud", 404), ("pii-shed", 403), ("anything", 403)] {
            let mut r = line(40 * 60_000, "192.0.2.99", "/x", status, ua);
            r.blocked_by = Some(who.into());
            p.observe(&r, None, &mut out);
        }
        assert_eq!(p.counters().own_responses, before);
    }

    #[test]
    fn one_address_does_not_get_its_neighbours_blocked() {
        let mut p = pipeline(&[]);
        let mut out = Vec::new();
        p.observe(
            &line(0, "203.0.113.5", "/", 200, "sqlmap/1.8"),
            None,
            &mut out,
        );
        for i in 0..40 {
            p.observe(
                &line(
                    i * 700,
                    "203.0.113.6",
                    &format!("/wp-{i}.php"),
                    404,
                    "Mozilla/5.0 (X11) Firefox/133.0",
                ),
                None,
                &mut out,
            );
        }
        assert!(out
            .iter()
            .any(|d| d.key_type == KeyType::Ip && d.action == Action::Block));
        assert!(
            !out.iter().any(|d| d.key_type == KeyType::Subnet),
            "{out:?}"
        );
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "203.0.113.0/24".parse().expect("cidr");
        assert!(c.contains("203.0.113.200".parse().expect("ip")));
        assert!(c.contains("::ffff:203.0.113.1".parse().expect("ip")));
        assert!(!c.contains("203.0.114.1".parse().expect("ip")));
        let v6: Cidr = "2001:db8::/32".parse().expect("cidr");
        assert!(v6.contains("2001:db8:1::5".parse().expect("ip")));
        assert!(!v6.contains("203.0.113.1".parse().expect("ip")));
        assert!("0.0.0.0/0"
            .parse::<Cidr>()
            .expect("cidr")
            .contains("8.8.8.8".parse().expect("ip")));
        let mapped: Cidr = "::ffff:203.0.113.0/120".parse().expect("mapped /24");
        assert!(mapped.contains("203.0.113.9".parse().expect("ip")));
        assert!(!mapped.contains("8.8.8.8".parse().expect("ip")));
        for bad in [
            "203.0.113.0/33",
            "nope",
            "1.2.3.4/",
            "::/129",
            "::ffff:203.0.113.0/64",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            Subnet::of("2001:db8:1:2:3::4".parse().expect("ip")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            Subnet::of("203.0.113.9".parse().expect("ip")).to_string(),
            "203.0.113.0/24"
        );
    }
}
