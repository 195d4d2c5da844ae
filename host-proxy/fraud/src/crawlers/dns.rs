//! The DNS side of crawler checks: hickory's stub resolver for real
//! servers, a fixed zone for the drill and tests, and a blocking wrapper for
//! synchronous callers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{verify_batch, Budget, Check, CrawlerList, Dns, DnsError, Lookup, MAX_PTR};

/// Where checks send their queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsServers {
    /// No checks: claims are scored as any other user agent.
    Off,
    /// The system's resolvers (/etc/resolv.conf).
    System,
    /// These servers, UDP then TCP.
    Servers(Vec<SocketAddr>),
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?}: off, system, or DNS servers as ADDR:PORT[,ADDR:PORT...]")]
pub struct DnsServersError(String);

impl std::str::FromStr for DnsServers {
    type Err = DnsServersError;
    fn from_str(s: &str) -> Result<Self, DnsServersError> {
        match s.trim() {
            "off" => Ok(DnsServers::Off),
            "system" => Ok(DnsServers::System),
            list => list
                .split(',')
                .map(|a| a.trim().parse::<SocketAddr>())
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|v| !v.is_empty())
                .map(DnsServers::Servers)
                .ok_or_else(|| DnsServersError(s.to_owned())),
        }
    }
}

/// [`Dns`] through hickory's stub resolver.
#[derive(Clone)]
pub struct Resolver {
    inner: hickory_resolver::TokioResolver,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("DNS checks are off")]
    Off,
    #[error("reading the system's DNS configuration: {0}")]
    System(String),
    #[error("building the DNS resolver: {0}")]
    Build(String),
}

impl Resolver {
    /// A resolver with a per-query timeout and one attempt (the batch's
    /// deadline bounds the whole check), never reading /etc/hosts.
    pub fn new(servers: &DnsServers, query_timeout: Duration) -> Result<Self, ResolverError> {
        use hickory_resolver::config::{
            ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig,
        };
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let mut builder = match servers {
            DnsServers::Off => return Err(ResolverError::Off),
            DnsServers::System => hickory_resolver::TokioResolver::builder_tokio()
                .map_err(|e| ResolverError::System(e.to_string()))?,
            DnsServers::Servers(list) => {
                let ns = list
                    .iter()
                    .map(|a| {
                        let mut udp = ConnectionConfig::udp();
                        udp.port = a.port();
                        let mut tcp = ConnectionConfig::tcp();
                        tcp.port = a.port();
                        NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                    })
                    .collect();
                hickory_resolver::TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(ns),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let opts = builder.options_mut();
        opts.timeout = query_timeout;
        opts.attempts = 1;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.cache_size = 4096;
        let inner = builder
            .build()
            .map_err(|e| ResolverError::Build(e.to_string()))?;
        Ok(Resolver { inner })
    }
}

fn dns_error(e: &hickory_resolver::net::NetError) -> DnsError {
    if e.is_no_records_found() {
        DnsError::NotFound
    } else {
        DnsError::Failed
    }
}

impl Dns for Resolver {
    async fn reverse(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        use hickory_resolver::proto::rr::RData;
        let l = self
            .inner
            .reverse_lookup(ip)
            .await
            .map_err(|e| dns_error(&e))?;
        let names: Vec<String> = l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .take(MAX_PTR)
            .collect();
        if names.is_empty() {
            Err(DnsError::NotFound)
        } else {
            Ok(names)
        }
    }

    async fn forward(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        use hickory_resolver::proto::rr::RData;
        let l = match v6 {
            false => self.inner.ipv4_lookup(name).await,
            true => self.inner.ipv6_lookup(name).await,
        }
        .map_err(|e| dns_error(&e))?;
        Ok(l.answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) if !v6 => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) if v6 => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect())
    }
}

/// A fixed zone (the drill's, and tests'): PTR and address records by hand.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    ptr: std::collections::HashMap<IpAddr, Vec<String>>,
    addrs: std::collections::HashMap<String, Vec<IpAddr>>,
}

impl Zone {
    pub fn ptr(&mut self, ip: IpAddr, name: &str) {
        self.ptr
            .entry(ip.to_canonical())
            .or_default()
            .push(name.to_owned());
    }

    pub fn addr(&mut self, name: &str, ip: IpAddr) {
        self.addrs
            .entry(name.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .push(ip);
    }
}

impl Zone {
    /// The zone as dnsmasq configuration lines (`ptr-record`, `host-record`
    /// for names with addresses), so a real DNS server can serve it.
    pub fn dnsmasq_conf(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut ptrs: Vec<_> = self.ptr.iter().collect();
        ptrs.sort();
        for (ip, names) in ptrs {
            for n in names {
                let arpa = hickory_resolver::proto::rr::Name::from(*ip).to_ascii();
                let _ = writeln!(
                    out,
                    "ptr-record={},{}",
                    arpa.trim_end_matches('.'),
                    n.trim_end_matches('.')
                );
            }
        }
        let mut names: Vec<_> = self.addrs.iter().collect();
        names.sort();
        for (n, ips) in names {
            for ip in ips {
                let _ = writeln!(out, "address=/{n}/{ip}");
            }
        }
        out
    }
}

impl Dns for Zone {
    async fn reverse(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        self.ptr.get(&ip).cloned().ok_or(DnsError::NotFound)
    }

    async fn forward(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        let all = self
            .addrs
            .get(&name.trim_end_matches('.').to_ascii_lowercase())
            .ok_or(DnsError::NotFound)?;
        let some: Vec<IpAddr> = all.iter().copied().filter(|a| a.is_ipv6() == v6).collect();
        if some.is_empty() {
            Err(DnsError::NotFound)
        } else {
            Ok(some)
        }
    }
}

/// Checks for synchronous callers (replay, the drill): one current-thread
/// runtime, the same [`verify_batch`].
pub struct BlockingChecks<D> {
    rt: tokio::runtime::Runtime,
    dns: D,
    budget: Budget,
}

impl<D: Dns> BlockingChecks<D> {
    pub fn new(dns: D, budget: Budget) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(BlockingChecks { rt, dns, budget })
    }
}

/// What the offline feeder calls between batches.
pub trait CrawlerChecks {
    fn check(&mut self, list: &CrawlerList, wanted: &[Lookup]) -> Vec<(Lookup, Check)>;
}

impl<D: Dns> CrawlerChecks for BlockingChecks<D> {
    fn check(&mut self, list: &CrawlerList, wanted: &[Lookup]) -> Vec<(Lookup, Check)> {
        self.rt
            .block_on(verify_batch(&self.dns, list, wanted, self.budget))
    }
}
