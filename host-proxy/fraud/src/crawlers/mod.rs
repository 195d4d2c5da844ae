//! Verified crawlers: a user agent that names a search engine's crawler is
//! believed only when the address's reverse DNS name lies in that engine's
//! domains and the name's forward lookup gives the address back, the check
//! Google, Bing, Apple, Yandex and Baidu document for their crawlers. A
//! verified crawler is never scored (allowlists always win); a claim whose
//! check fails is an impostor, and that is evidence against it
//! (`ua_in = ["fake_crawler"]`).
//!
//! The pipeline stays pure: [`CrawlerGate`] says which (address, crawler)
//! pairs need a check and remembers what a check found; the DNS work happens
//! outside it, between batches, within a count and time budget
//! ([`verify_batch`]). Every answer the check reads comes from DNS, which
//! whoever owns an address's reverse zone controls: the PTR name is only a
//! candidate, and only the crawler operator's forward zone can confirm it.
//!
//! Why this size: 447 lines of code, the rest its unit tests (forward-confirmed reverse DNS has many hostile cases).

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use aho_corasick::AhoCorasick;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;

use crate::table::BoundedTable;

mod dns;
pub use dns::{
    BlockingChecks, CrawlerChecks, DnsServers, DnsServersError, Resolver, ResolverError, Zone,
};

/// The crawlers pii-fraud ships with (`data/verified-crawlers.toml`).
pub const BUILTIN: &str = include_str!("../../data/verified-crawlers.toml");
/// PTR names read per address; real crawlers have one.
pub(crate) const MAX_PTR: usize = 4;
/// Names inside a crawler's domains whose forward lookup is tried.
const MAX_FORWARD: usize = 2;
/// How long an answer is kept: a verdict for hours, a failed lookup
/// (timeout, SERVFAIL, the budget ran out) for a minute.
const DECIDED_MS: i64 = 6 * 3600 * 1000;
const UNRESOLVED_MS: i64 = 5 * 60 * 1000;
/// Longest wait for a background check's answer.
pub const PENDING_MS: i64 = 10 * 1000;
/// Checks asked per /24 (IPv4) or /64 (IPv6) in one batch: an address
/// block full of claimants cannot take the whole budget.
const PER_PREFIX: usize = 4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    crawler: Vec<CrawlerFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CrawlerFile {
    name: String,
    user_agent_contains: Vec<String>,
    domains: Vec<String>,
}

/// One crawler operator: the user-agent tokens that claim it and the
/// domains its reverse names lie in (lowercase, no trailing dot).
#[derive(Debug, Clone)]
pub struct Crawler {
    pub name: String,
    domains: Vec<String>,
}

impl Crawler {
    /// Whether a DNS name is one of the crawler's domains or below one, on
    /// a label boundary (`evilgooglebot.com` is not below `googlebot.com`).
    pub fn owns(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.domains.iter().any(|d| {
            name == *d
                || (name.len() > d.len()
                    && name.ends_with(d.as_str())
                    && name.as_bytes()[name.len() - d.len() - 1] == b'.')
        })
    }
}

/// The verifiable crawlers, with one automaton over all their tokens.
#[derive(Debug, Clone)]
pub struct CrawlerList {
    crawlers: Vec<Crawler>,
    tokens: AhoCorasick,
    /// Token index to crawler index.
    owner: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum CrawlerListError {
    #[error("verified crawler list: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("verified crawler list: {crawler:?}: {what}")]
    Invalid { crawler: String, what: &'static str },
    #[error("verified crawler list: the tokens do not compile: {0}")]
    Build(#[from] aho_corasick::BuildError),
}

impl CrawlerList {
    pub fn builtin() -> Result<Self, CrawlerListError> {
        Self::parse(BUILTIN)
    }

    pub fn parse(text: &str) -> Result<Self, CrawlerListError> {
        let file: ListFile = toml::from_str(text)?;
        let mut crawlers = Vec::new();
        let mut tokens = Vec::new();
        let mut owner = Vec::new();
        if file.crawler.len() > usize::from(u16::MAX) {
            return Err(CrawlerListError::Invalid {
                crawler: String::new(),
                what: "more than 65535 crawlers",
            });
        }
        for (i, c) in file.crawler.into_iter().enumerate() {
            let bad = |what| CrawlerListError::Invalid {
                crawler: c.name.clone(),
                what,
            };
            if c.name.trim().is_empty() {
                return Err(bad("empty name"));
            }
            if c.user_agent_contains.is_empty() || c.domains.is_empty() {
                return Err(bad("needs user_agent_contains and domains"));
            }
            // A short token would claim half the browsers in the world.
            if c.user_agent_contains
                .iter()
                .any(|t| t.len() < 4 || !t.is_ascii())
            {
                return Err(bad(
                    "a user-agent token is shorter than 4 characters or not ASCII",
                ));
            }
            let mut domains = Vec::new();
            for d in &c.domains {
                let d = d.trim().trim_matches('.').to_ascii_lowercase();
                let valid = d.contains('.')
                    && d.len() <= 253
                    && d.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !valid {
                    return Err(bad("a domain is not a DNS name with at least two labels"));
                }
                domains.push(d);
            }
            for t in c.user_agent_contains {
                tokens.push(t);
                owner.push(i as u16);
            }
            crawlers.push(Crawler {
                name: c.name,
                domains,
            });
        }
        let tokens = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&tokens)?;
        Ok(CrawlerList {
            crawlers,
            tokens,
            owner,
        })
    }

    /// The crawler a user agent claims to be, if any.
    pub fn claim(&self, user_agent: &str) -> Option<u16> {
        self.tokens
            .find(user_agent)
            .and_then(|m| self.owner.get(m.pattern().as_usize()).copied())
    }

    pub fn get(&self, i: u16) -> Option<&Crawler> {
        self.crawlers.get(usize::from(i))
    }

    pub fn len(&self) -> usize {
        self.crawlers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.crawlers.is_empty()
    }
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Reverse name in the crawler's domains, forward lookup gives the address.
    Verified,
    /// No reverse name, none in the crawler's domains, or none that leads back.
    Impostor,
    /// DNS did not answer (timeout, SERVFAIL, out of budget): no verdict.
    Unresolved,
    /// Asked, not answered yet (the online ingest checks in the background):
    /// the address's own decisions wait, for at most [`PENDING_MS`].
    Pending,
}

/// One check to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lookup {
    pub ip: IpAddr,
    pub crawler: u16,
}

#[derive(Clone, Copy)]
struct Cached {
    crawler: u16,
    check: Check,
    until_ms: i64,
}

/// The pipeline's side of verification: the list and a bounded cache of answers.
pub struct CrawlerGate {
    list: Arc<CrawlerList>,
    cache: BoundedTable<IpAddr, Cached>,
}

impl CrawlerGate {
    pub fn new(list: Arc<CrawlerList>, capacity: usize) -> Self {
        CrawlerGate {
            list,
            cache: BoundedTable::new(capacity),
        }
    }

    pub fn list(&self) -> &Arc<CrawlerList> {
        &self.list
    }

    pub fn reserved_bytes(&self) -> usize {
        self.cache.reserved_bytes()
    }

    fn cached(&self, l: Lookup, now_ms: i64) -> Option<Check> {
        self.cache
            .get(&l.ip)
            .filter(|c| c.crawler == l.crawler && now_ms < c.until_ms)
            .map(|c| c.check)
    }

    /// The distinct checks that `claims` (address, user agent) need: claims
    /// of a listed crawler with no fresh answer, at most [`PER_PREFIX`] per
    /// address block.
    pub fn wanted<'a>(
        &self,
        claims: impl Iterator<Item = (IpAddr, &'a str)>,
        now_ms: i64,
    ) -> Vec<Lookup> {
        let mut seen = HashSet::new();
        let mut per_prefix: std::collections::HashMap<u128, usize> = Default::default();
        claims
            .filter_map(|(ip, ua)| {
                let l = Lookup {
                    ip: ip.to_canonical(),
                    crawler: self.list.claim(ua)?,
                };
                if self.cached(l, now_ms).is_some() || seen.contains(&l) {
                    return None;
                }
                let n = per_prefix.entry(prefix(l.ip)).or_default();
                if *n >= PER_PREFIX {
                    return None;
                }
                *n += 1;
                seen.insert(l);
                Some(l)
            })
            .collect()
    }

    /// Marks checks as asked and not yet answered.
    pub fn pending(&mut self, asked: &[Lookup], now_ms: i64) {
        for &l in asked {
            let v = Cached {
                crawler: l.crawler,
                check: Check::Pending,
                until_ms: now_ms.saturating_add(PENDING_MS),
            };
            let (slot, _) = self.cache.entry(&l.ip, || v);
            *slot = v;
        }
    }

    /// Remembers what checks found.
    pub fn record(&mut self, results: &[(Lookup, Check)], now_ms: i64) {
        for &(l, check) in results {
            let ttl = match check {
                Check::Unresolved => UNRESOLVED_MS,
                Check::Pending => PENDING_MS,
                Check::Verified | Check::Impostor => DECIDED_MS,
            };
            let v = Cached {
                crawler: l.crawler,
                check,
                until_ms: now_ms.saturating_add(ttl),
            };
            let (slot, _) = self.cache.entry(&l.ip, || v);
            *slot = v;
        }
    }

    /// The verdict on a request: None when its user agent claims no listed
    /// crawler, Unresolved when the claim has no answer (yet).
    pub fn judge(&self, ip: IpAddr, user_agent: &str, now_ms: i64) -> Option<Check> {
        let crawler = self.list.claim(user_agent)?;
        let l = Lookup {
            ip: ip.to_canonical(),
            crawler,
        };
        Some(self.cached(l, now_ms).unwrap_or(Check::Unresolved))
    }
}

/// The /24 or /64 an address is in, as one number.
fn prefix(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a) >> 8),
        IpAddr::V6(a) => (u128::from(a) >> 64) | (1 << 127),
    }
}

/// How a lookup failed: no such record, or no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsError {
    NotFound,
    Failed,
}

/// The two lookups a check makes.
pub trait Dns: Send + Sync {
    /// PTR names of an address.
    fn reverse(&self, ip: IpAddr) -> impl Future<Output = Result<Vec<String>, DnsError>> + Send;
    /// The addresses of a name in one family: A records when `v6` is
    /// false, AAAA when true (one query, so its failure is not mistaken
    /// for the other family's empty answer).
    fn forward(
        &self,
        name: &str,
        v6: bool,
    ) -> impl Future<Output = Result<Vec<IpAddr>, DnsError>> + Send;
}

/// Reverse, then forward: the documented check, on hostile answers.
pub async fn verify<D: Dns>(dns: &D, crawler: &Crawler, ip: IpAddr) -> Check {
    let ip = ip.to_canonical();
    let names = match dns.reverse(ip).await {
        Ok(n) => n,
        Err(DnsError::NotFound) => return Check::Impostor,
        Err(DnsError::Failed) => return Check::Unresolved,
    };
    let mut failed = false;
    for name in names
        .iter()
        .take(MAX_PTR)
        .filter(|n| crawler.owns(n))
        .take(MAX_FORWARD)
    {
        // Fully qualified: no search domain is ever appended.
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match dns.forward(&fqdn, ip.is_ipv6()).await {
            Ok(addrs) if addrs.iter().any(|a| a.to_canonical() == ip) => return Check::Verified,
            Ok(_) | Err(DnsError::NotFound) => {}
            Err(DnsError::Failed) => failed = true,
        }
    }
    if failed {
        Check::Unresolved
    } else {
        Check::Impostor
    }
}

/// How much DNS one batch may cost.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Checks started per batch; the rest wait for a later batch.
    pub lookups: usize,
    pub concurrency: usize,
    /// For all the batch's checks together; what it cuts short is Unresolved.
    pub deadline: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            lookups: 64,
            concurrency: 16,
            deadline: Duration::from_millis(1500),
        }
    }
}

/// Runs a batch's checks within `budget`. Checks past the count budget are
/// left out (asked again with a later batch); checks the deadline cut short
/// come back Unresolved.
pub async fn verify_batch<D: Dns>(
    dns: &D,
    list: &CrawlerList,
    wanted: &[Lookup],
    budget: Budget,
) -> Vec<(Lookup, Check)> {
    let started: Vec<Lookup> = wanted
        .iter()
        .copied()
        .filter(|l| list.get(l.crawler).is_some())
        .take(budget.lookups)
        .collect();
    let mut done: Vec<(Lookup, Check)> = Vec::with_capacity(started.len());
    {
        let work = stream::iter(started.iter().copied())
            .map(|l| async move {
                let check = match list.get(l.crawler) {
                    Some(c) => verify(dns, c, l.ip).await,
                    None => Check::Unresolved,
                };
                (l, check)
            })
            .buffer_unordered(budget.concurrency.max(1));
        let _ = tokio::time::timeout(
            budget.deadline,
            work.for_each(|r| {
                done.push(r);
                std::future::ready(())
            }),
        )
        .await;
    }
    let answered: HashSet<Lookup> = done.iter().map(|(l, _)| *l).collect();
    for l in started {
        if !answered.contains(&l) {
            done.push((l, Check::Unresolved));
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn google_zone() -> Zone {
        let mut z = Zone::default();
        z.ptr(ip("66.249.66.1"), "crawl-66-249-66-1.googlebot.com.");
        z.addr("crawl-66-249-66-1.googlebot.com", ip("66.249.66.1"));
        // An impostor owns its reverse zone and names Google in it; Google's
        // forward zone does not know it.
        z.ptr(ip("203.0.113.9"), "crawl-66-249-66-1.googlebot.com.");
        z.ptr(ip("203.0.113.10"), "crawl-203-0-113-10.evilgooglebot.com.");
        z.addr("crawl-203-0-113-10.evilgooglebot.com", ip("203.0.113.10"));
        z.ptr(ip("203.0.113.11"), "googlebot.com.attacker.example.");
        z.addr("googlebot.com.attacker.example", ip("203.0.113.11"));
        // A cloud VM: its reverse name is below Google's domain and resolves back.
        z.ptr(ip("203.0.113.12"), "12.113.0.203.bc.googleusercontent.com.");
        z.addr("12.113.0.203.bc.googleusercontent.com", ip("203.0.113.12"));
        // An IPv6 crawler whose name also has an A record of someone else's.
        z.ptr(
            ip("2001:4860:4801::1"),
            "crawl-2001-4860-4801--1.googlebot.com.",
        );
        z.addr("crawl-2001-4860-4801--1.googlebot.com", ip("192.0.2.99"));
        z.addr(
            "crawl-2001-4860-4801--1.googlebot.com",
            ip("2001:4860:4801::1"),
        );
        z
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    #[test]
    fn the_builtin_list_parses_and_claims_by_token_in_any_case() {
        let l = CrawlerList::builtin().expect("list");
        assert!(l.len() >= 5);
        let g = l.claim(GOOGLEBOT).and_then(|i| l.get(i)).expect("claim");
        assert_eq!(g.name, "googlebot");
        let b = l
            .claim("Mozilla/5.0 (compatible; BINGBOT/2.0; +http://www.bing.com/bingbot.htm)")
            .and_then(|i| l.get(i))
            .expect("claim");
        assert_eq!(b.name, "bing");
        assert_eq!(
            l.claim("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"),
            None
        );
    }

    #[test]
    fn domains_match_on_label_boundaries_only() {
        let l = CrawlerList::builtin().expect("list");
        let g = l.get(l.claim(GOOGLEBOT).expect("claim")).expect("google");
        assert!(g.owns("crawl-66-249-66-1.googlebot.com."));
        assert!(g.owns("CRAWL.GOOGLEBOT.COM"));
        // Google Cloud VMs' reverse names (which resolve back) are not Google's crawlers.
        assert!(!g.owns("4.3.2.1.bc.googleusercontent.com"));
        assert!(!g.owns("evilgooglebot.com"));
        assert!(!g.owns("googlebot.com.attacker.example"));
        assert!(!g.owns("com"));
    }

    #[test]
    fn reverse_then_forward_and_every_hostile_answer_fails() {
        let l = CrawlerList::builtin().expect("list");
        let g = l.get(l.claim(GOOGLEBOT).expect("claim")).expect("google");
        let z = google_zone();
        assert_eq!(run(verify(&z, g, ip("66.249.66.1"))), Check::Verified);
        // IPv4-mapped IPv6 is the same address.
        assert_eq!(
            run(verify(&z, g, ip("::ffff:66.249.66.1"))),
            Check::Verified
        );
        for bad in [
            "203.0.113.9",
            "203.0.113.10",
            "203.0.113.11",
            "198.51.100.1",
        ] {
            assert_eq!(run(verify(&z, g, ip(bad))), Check::Impostor, "{bad}");
        }
    }

    #[test]
    fn a_dns_that_fails_gives_no_verdict() {
        struct Down;
        impl Dns for Down {
            async fn reverse(&self, _: IpAddr) -> Result<Vec<String>, DnsError> {
                Err(DnsError::Failed)
            }
            async fn forward(&self, _: &str, _: bool) -> Result<Vec<IpAddr>, DnsError> {
                Err(DnsError::Failed)
            }
        }
        let l = CrawlerList::builtin().expect("list");
        let g = l.get(0).expect("google");
        assert_eq!(run(verify(&Down, g, ip("66.249.66.1"))), Check::Unresolved);
    }

    #[test]
    fn a_slow_dns_is_cut_at_the_deadline_and_the_count_budget_holds() {
        struct Slow;
        impl Dns for Slow {
            async fn reverse(&self, _: IpAddr) -> Result<Vec<String>, DnsError> {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Err(DnsError::NotFound)
            }
            async fn forward(&self, _: &str, _: bool) -> Result<Vec<IpAddr>, DnsError> {
                Err(DnsError::NotFound)
            }
        }
        let l = CrawlerList::builtin().expect("list");
        let wanted: Vec<Lookup> = (0..100u8)
            .map(|i| Lookup {
                ip: IpAddr::from([198, 51, 100, i]),
                crawler: 0,
            })
            .collect();
        let budget = Budget {
            lookups: 10,
            concurrency: 4,
            deadline: Duration::from_millis(50),
        };
        let t = std::time::Instant::now();
        let got = run(verify_batch(&Slow, &l, &wanted, budget));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|(_, c)| *c == Check::Unresolved));
    }

    #[test]
    fn the_gate_caches_answers_per_crawler_and_forgets_failures_soon() {
        let list = Arc::new(CrawlerList::builtin().expect("list"));
        let mut g = CrawlerGate::new(list.clone(), 16);
        let a = ip("66.249.66.1");
        let claims = [(a, GOOGLEBOT), (a, GOOGLEBOT), (ip("10.0.0.1"), "curl/8.0")];
        let wanted = g.wanted(claims.into_iter(), 0);
        assert_eq!(wanted.len(), 1);
        assert_eq!(g.judge(a, GOOGLEBOT, 0), Some(Check::Unresolved));
        g.record(&[(wanted[0], Check::Verified)], 0);
        assert_eq!(g.judge(a, GOOGLEBOT, 1000), Some(Check::Verified));
        assert!(g.wanted([(a, GOOGLEBOT)].into_iter(), 1000).is_empty());
        // Claiming another crawler from the same address is a new question.
        let bing = "Mozilla/5.0 (compatible; bingbot/2.0)";
        assert_eq!(g.judge(a, bing, 1000), Some(Check::Unresolved));
        assert_eq!(g.judge(a, "curl/8.0", 1000), None);
        // A failed lookup is asked again after five minutes.
        let b = ip("66.249.66.2");
        let w = g.wanted([(b, GOOGLEBOT)].into_iter(), 0);
        g.record(&[(w[0], Check::Unresolved)], 0);
        assert!(g.wanted([(b, GOOGLEBOT)].into_iter(), 200_000).is_empty());
        assert_eq!(g.wanted([(b, GOOGLEBOT)].into_iter(), 301_000).len(), 1);
        // Asked in the background: pending for at most ten seconds.
        let c = ip("66.249.66.3");
        let w = g.wanted([(c, GOOGLEBOT)].into_iter(), 0);
        g.pending(&w, 0);
        assert_eq!(g.judge(c, GOOGLEBOT, 5_000), Some(Check::Pending));
        assert!(g.wanted([(c, GOOGLEBOT)].into_iter(), 5_000).is_empty());
        assert_eq!(g.judge(c, GOOGLEBOT, 11_000), Some(Check::Unresolved));
    }

    #[test]
    fn one_address_block_gets_a_few_checks_per_batch() {
        let list = Arc::new(CrawlerList::builtin().expect("list"));
        let g = CrawlerGate::new(list, 1024);
        let claims: Vec<(IpAddr, &str)> = (1..=200u8)
            .map(|i| (IpAddr::from([198, 51, 100, i]), GOOGLEBOT))
            .chain((1..=3u8).map(|i| (IpAddr::from([66, 249, 66, i]), GOOGLEBOT)))
            .collect();
        let w = g.wanted(claims.into_iter(), 0);
        assert_eq!(w.len(), PER_PREFIX + 3, "{w:?}");
    }

    #[test]
    fn lists_with_short_tokens_or_bad_domains_are_refused() {
        for bad in [
            "[[crawler]]\nname = \"x\"\nuser_agent_contains = [\"bot\"]\ndomains = [\"x.com\"]",
            "[[crawler]]\nname = \"x\"\nuser_agent_contains = [\"xbot1\"]\ndomains = [\"com\"]",
            "[[crawler]]\nname = \"x\"\nuser_agent_contains = [\"xbot1\"]\ndomains = [\"*.x.com\"]",
            "[[crawler]]\nname = \"\"\nuser_agent_contains = [\"xbot1\"]\ndomains = [\"x.com\"]",
            "[[crawler]]\nname = \"x\"\nuser_agent_contains = []\ndomains = [\"x.com\"]",
        ] {
            assert!(CrawlerList::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_server_lists_parse() {
        assert_eq!("off".parse::<DnsServers>().ok(), Some(DnsServers::Off));
        assert_eq!(
            "system".parse::<DnsServers>().ok(),
            Some(DnsServers::System)
        );
        assert_eq!(
            "127.0.0.1:5353, [::1]:53".parse::<DnsServers>().ok(),
            Some(DnsServers::Servers(vec![
                "127.0.0.1:5353".parse().expect("a"),
                "[::1]:53".parse().expect("a")
            ]))
        );
        assert!("127.0.0.1".parse::<DnsServers>().is_err());
        assert!("".parse::<DnsServers>().is_err());
    }
}
