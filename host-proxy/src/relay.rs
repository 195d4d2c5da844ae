//! Egress relay: the enclave's only way to the network.
//!
//! The enclave connects (vsock, or a Unix socket in dev), names an upstream
//! in one preamble line (`pii_transport::relay`), and the relay — after the
//! allow/deny rules, DNS and per-upstream limits — connects and copies bytes
//! both ways. The bytes are the enclave's own TLS: the host never sees
//! plaintext. No worker cap: every connection is its own task.
//!
//! Rules: deny rules are checked first and win; then the first matching allow
//! rule. A host pattern is an exact name or IP, `*.example.com` (any name
//! below example.com) or `*`. Names that resolve to loopback, link-local,
//! private or unspecified addresses are refused unless the rule says
//! `allow_private = true` or names the IP itself (IMDS, local Vault in dev).
//!
//! Why this size: 543 lines of code, the rest its unit tests; the rules, the DNS checks and the splice are one request path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pii_transport::relay::{
    encode_reply, normalize_host, parse_request, read_line, splice_bounded, Refusal, SpliceEnd,
    Target,
};
use pii_transport::{Addr, Listener};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, RelayLabels};

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_dns_ttl() -> Duration {
    Duration::from_secs(30)
}
fn default_max() -> usize {
    16_384
}
fn default_idle() -> Duration {
    Duration::from_secs(300)
}
fn default_lifetime() -> Duration {
    Duration::from_secs(3600)
}

/// `[relay]` in the proxy's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Where the enclave connects: `vsock://any:8000` or `unix:/path`.
    pub listen: String,
    #[serde(default)]
    pub allow: Vec<Rule>,
    #[serde(default)]
    pub deny: Vec<Rule>,
    /// Also allow what an AWS `vsock-proxy` allowlist YAML allows.
    #[serde(default)]
    pub vsock_proxy_allowlist: Option<PathBuf>,
    #[serde(default = "default_timeout", with = "humantime_de")]
    pub connect_timeout: Duration,
    /// How long a DNS answer is reused (the system resolver does not report
    /// record TTLs, so this is the TTL the relay applies).
    #[serde(default = "default_dns_ttl", with = "humantime_de")]
    pub dns_cache_ttl: Duration,
    /// Concurrent relayed connections in total.
    #[serde(default = "default_max")]
    pub max_connections: usize,
    /// A spliced connection with no byte either way for this long is closed.
    #[serde(default = "default_idle", with = "humantime_de")]
    pub idle_timeout: Duration,
    /// Any spliced connection is closed after this long (clients reconnect).
    #[serde(default = "default_lifetime", with = "humantime_de")]
    pub max_lifetime: Duration,
}

mod humantime_de {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub host: String,
    /// Any port when absent.
    #[serde(default)]
    pub port: Option<u16>,
    /// Concurrent connections through this rule.
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub allow_private: bool,
}

/// A relay rule whose host pattern cannot be normalised.
#[derive(Debug, thiserror::Error)]
#[error("relay rule host {host:?}: {source}")]
pub struct BadRule {
    pub host: String,
    pub source: pii_transport::relay::TargetError,
}

/// Why a `[relay]` configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayConfigError {
    /// `vsock_proxy_allowlist` cannot be read.
    #[error("{path}: {source}")]
    ReadAllowlist {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The allowlist is not `vsock-proxy` YAML (the error has the location).
    #[error("vsock-proxy allowlist: {0}")]
    Allowlist(#[source] serde_yaml_ng::Error),
    #[error(transparent)]
    Rule(#[from] BadRule),
    #[error("relay max_connections must be at least 1")]
    MaxConnections,
}

/// Why the rules admit no connection to a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denied {
    /// A deny rule matches (deny rules win).
    #[error("{target} matches deny rule {rule:?}")]
    DenyRule { target: Target, rule: String },
    #[error("{target} matches no allow rule")]
    NoAllowRule { target: Target },
}

impl Rule {
    /// The rule with its host pattern in [`normalize_host`]'s form (`*`,
    /// `*.` + a name, or a name or IP), as requests are.
    fn normalized(&self) -> Result<Rule, BadRule> {
        let err = |source| BadRule {
            host: self.host.clone(),
            source,
        };
        let host = match self.host.as_str() {
            "*" => "*".to_owned(),
            h => match h.strip_prefix("*.") {
                Some(suffix) => format!("*.{}", normalize_host(suffix).map_err(err)?),
                None => normalize_host(h).map_err(err)?,
            },
        };
        Ok(Rule {
            host,
            ..self.clone()
        })
    }

    /// The IP a rule names, if it names one (canonical: IPv4-mapped IPv6
    /// is the IPv4 address).
    fn ip(&self) -> Option<IpAddr> {
        self.host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
    }

    fn matches(&self, t: &Target) -> bool {
        if self.port.is_some_and(|p| p != t.port) {
            return false;
        }
        let pat = self.host.as_str();
        if pat == "*" {
            return true;
        }
        if let Some(suffix) = pat.strip_prefix("*.") {
            return t.host.len() > suffix.len() + 1
                && t.host.ends_with(suffix)
                && t.host.as_bytes()[t.host.len() - suffix.len() - 1] == b'.';
        }
        pat == t.host
    }
}

#[derive(Debug, Deserialize)]
struct VsockProxyYaml {
    allowlist: Vec<VsockProxyEntry>,
}

#[derive(Debug, Deserialize)]
struct VsockProxyEntry {
    address: String,
    port: u16,
}

/// Parse an AWS `vsock-proxy` allowlist (`allowlist: [{address, port}]`).
pub fn parse_vsock_proxy_yaml(text: &str) -> Result<Vec<Rule>, RelayConfigError> {
    let y: VsockProxyYaml = serde_yaml_ng::from_str(text).map_err(RelayConfigError::Allowlist)?;
    Ok(y.allowlist
        .into_iter()
        .map(|e| Rule {
            host: e.address,
            port: Some(e.port),
            max_connections: None,
            allow_private: false,
        })
        .collect())
}

/// `a.b.c.d/len` ranges of IANA's IPv4 Special-Purpose Address Registry,
/// plus multicast: none is an upstream a rule for a name means.
const V4_SPECIAL: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link local (IMDS)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments (DS-Lite, NAT64 discovery)
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 31, 196, 0], 24), // AS112-v4
    ([192, 52, 193, 0], 24), // AMT
    ([192, 88, 99, 0], 24),  // deprecated 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([192, 175, 48, 0], 24), // direct delegation AS112
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and 255.255.255.255 broadcast
];

/// `prefix/len` ranges of IANA's IPv6 Special-Purpose Address Registry
/// (and multicast, site-local, IPv4-compatible). NAT64's well-known prefix
/// and IPv4-mapped addresses are judged by the IPv4 address inside them.
const V6_SPECIAL: &[([u16; 8], u8)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 96), // unspecified, loopback, IPv4-compatible
    ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), // local-use NAT64 (RFC 8215)
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64), // discard-only
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), // IETF protocol assignments (Teredo, ORCHID, …)
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), // 6to4
    ([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48), // direct delegation AS112
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), // documentation (RFC 9637)
    ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), // SRv6 SIDs
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), // unique local
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), // link local
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), // site local (deprecated)
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), // multicast
];

fn in_v4(ip: std::net::Ipv4Addr, net: [u8; 4], len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(std::net::Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: std::net::Ipv6Addr, net: [u16; 8], len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(std::net::Ipv6Addr::from(net)) & mask
}

/// Whether `ip` is loopback, private, link-local, multicast, reserved or any
/// other special-purpose address (IANA's registries), including IPv4 inside
/// IPv4-mapped and NAT64 (64:ff9b::/96) addresses.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => V4_SPECIAL.iter().any(|(n, l)| in_v4(v, *n, *l)),
        IpAddr::V6(v) => {
            if let Some(m) = v.to_ipv4_mapped() {
                return is_private(IpAddr::V4(m));
            }
            if in_v6(v, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
                let o = v.octets();
                return is_private(IpAddr::V4(std::net::Ipv4Addr::new(
                    o[12], o[13], o[14], o[15],
                )));
            }
            V6_SPECIAL.iter().any(|(n, l)| in_v6(v, *n, *l))
        }
    }
}

/// The relay's decision engine and state.
pub struct Relay {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    limits: Vec<Option<Arc<Semaphore>>>,
    total: Arc<Semaphore>,
    connect_timeout: Duration,
    dns_ttl: Duration,
    dns: Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>,
    metrics: Arc<Metrics>,
    idle: Duration,
    lifetime: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(cfg: &RelayConfig, metrics: Arc<Metrics>) -> Result<Self, RelayConfigError> {
        let mut allow = cfg.allow.clone();
        if let Some(p) = &cfg.vsock_proxy_allowlist {
            let text =
                std::fs::read_to_string(p).map_err(|source| RelayConfigError::ReadAllowlist {
                    path: p.clone(),
                    source,
                })?;
            allow.extend(parse_vsock_proxy_yaml(&text)?);
        }
        let normalize = |rules: &[Rule]| {
            rules
                .iter()
                .map(Rule::normalized)
                .collect::<Result<Vec<_>, _>>()
        };
        let (allow, deny) = (normalize(&allow)?, normalize(&cfg.deny)?);
        if cfg.max_connections == 0 {
            return Err(RelayConfigError::MaxConnections);
        }
        Ok(Relay {
            limits: allow
                .iter()
                .map(|r| r.max_connections.map(|n| Arc::new(Semaphore::new(n))))
                .collect(),
            allow,
            deny,
            idle: cfg.idle_timeout,
            lifetime: cfg.max_lifetime,
            total: Arc::new(Semaphore::new(cfg.max_connections)),
            connect_timeout: cfg.connect_timeout,
            dns_ttl: cfg.dns_cache_ttl,
            dns: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Which allow rule admits `t`, or why none does.
    pub fn decide(&self, t: &Target) -> Result<usize, Denied> {
        if let Some(d) = self.deny.iter().find(|r| r.matches(t)) {
            return Err(Denied::DenyRule {
                target: t.clone(),
                rule: d.host.clone(),
            });
        }
        self.allow
            .iter()
            .position(|r| r.matches(t))
            .ok_or_else(|| Denied::NoAllowRule { target: t.clone() })
    }

    async fn resolve(&self, t: &Target, rule: &Rule) -> Result<Vec<SocketAddr>, (Refusal, String)> {
        if let Ok(ip) = t.host.parse::<IpAddr>() {
            // An IP literal is only reachable through a rule that names it
            // (or allows private addresses explicitly).
            if is_private(ip) && !rule.allow_private && rule.ip() != Some(ip) {
                return Err((
                    Refusal::Denied,
                    format!("{ip} is a private or special-purpose address"),
                ));
            }
            return Ok(vec![SocketAddr::new(ip, t.port)]);
        }
        let cached = {
            let g = self.dns.lock().unwrap_or_else(|e| e.into_inner());
            g.get(&t.host)
                .filter(|(at, _)| at.elapsed() < self.dns_ttl)
                .map(|(_, ips)| ips.clone())
        };
        let ips = match cached {
            Some(ips) => ips,
            None => {
                let found: Vec<IpAddr> = tokio::time::timeout(
                    self.connect_timeout,
                    tokio::net::lookup_host((t.host.as_str(), t.port)),
                )
                .await
                .map_err(|_| (Refusal::Dns, format!("DNS lookup of {} timed out", t.host)))?
                .map_err(|e| (Refusal::Dns, format!("DNS lookup of {}: {e}", t.host)))?
                .map(|sa| sa.ip())
                .collect();
                if found.is_empty() {
                    return Err((Refusal::Dns, format!("{} has no addresses", t.host)));
                }
                let mut g = self.dns.lock().unwrap_or_else(|e| e.into_inner());
                if g.len() > 4096 {
                    g.clear();
                }
                g.insert(t.host.clone(), (Instant::now(), found.clone()));
                found
            }
        };
        if !rule.allow_private && ips.iter().any(|ip| is_private(*ip)) {
            return Err((
                Refusal::Denied,
                format!(
                    "{} resolves to a private or special-purpose address",
                    t.host
                ),
            ));
        }
        // A deny rule naming an IP also denies every name resolving to it.
        if let Some((ip, d)) = ips.iter().find_map(|ip| {
            self.deny
                .iter()
                .find(|d| d.ip() == Some(ip.to_canonical()) && d.port.is_none_or(|p| p == t.port))
                .map(|d| (ip, d))
        }) {
            return Err((
                Refusal::Denied,
                format!("{} resolves to {ip}, denied by rule {:?}", t.host, d.host),
            ));
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, t.port))
            .collect())
    }

    /// Handle one enclave connection.
    pub async fn handle(self: Arc<Self>, mut enclave: pii_transport::BoxIo) {
        let line = match tokio::time::timeout(self.connect_timeout, read_line(&mut enclave)).await {
            Ok(Ok(l)) => l,
            _ => {
                let _ = enclave
                    .write_all(&encode_reply(Err((Refusal::BadRequest, "no preamble"))))
                    .await;
                return;
            }
        };
        let target = match parse_request(&line) {
            Ok(t) => t,
            Err(e) => {
                self.count("-", "bad-request");
                let _ = enclave
                    .write_all(&encode_reply(Err((Refusal::BadRequest, &e.to_string()))))
                    .await;
                return;
            }
        };
        let label = target.to_string();
        let (mut upstream, _permits) = match self.connect(&target).await {
            Ok(x) => x,
            Err((code, reason)) => {
                tracing::warn!(upstream = %label, code = code.code(), %reason, "relay refused");
                self.count(&label, code.code());
                let _ = enclave.write_all(&encode_reply(Err((code, &reason)))).await;
                return;
            }
        };
        if enclave.write_all(&encode_reply(Ok(()))).await.is_err() {
            return;
        }
        self.count(&label, "ok");
        self.metrics.relay_active.inc();
        let res = splice_bounded(&mut enclave, &mut upstream, self.idle, self.lifetime).await;
        self.metrics.relay_active.dec();
        if let Ok((up, down, end)) = res {
            if end != SpliceEnd::Closed {
                tracing::info!(upstream = %label, reason = ?end, "relay closed the connection");
            }
            self.metrics
                .relay_bytes
                .get_or_create(&crate::metrics::DirLabels {
                    direction: "to_upstream".into(),
                })
                .inc_by(up);
            self.metrics
                .relay_bytes
                .get_or_create(&crate::metrics::DirLabels {
                    direction: "to_enclave".into(),
                })
                .inc_by(down);
        }
    }

    fn count(&self, upstream: &str, result: &str) {
        self.metrics
            .relay_connections
            .get_or_create(&RelayLabels {
                upstream: upstream.into(),
                result: result.into(),
            })
            .inc();
    }

    async fn connect(
        &self,
        t: &Target,
    ) -> Result<(tokio::net::TcpStream, Vec<OwnedSemaphorePermit>), (Refusal, String)> {
        let idx = self
            .decide(t)
            .map_err(|e| (Refusal::Denied, e.to_string()))?;
        let rule = &self.allow[idx];
        let mut permits = vec![self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| (Refusal::Limit, "relay connection limit reached".to_string()))?];
        if let Some(sem) = &self.limits[idx] {
            permits.push(sem.clone().try_acquire_owned().map_err(|_| {
                (
                    Refusal::Limit,
                    format!("connection limit of rule {:?} reached", rule.host),
                )
            })?);
        }
        let addrs = self.resolve(t, rule).await?;
        let mut last = String::new();
        for a in addrs {
            match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(a))
                .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok((s, permits));
                }
                Ok(Err(e)) => last = format!("{a}: {e}"),
                Err(_) => last = format!("{a}: connect timed out"),
            }
        }
        Err((Refusal::Connect, last))
    }

    /// Accept enclave connections on `addr` forever.
    pub async fn serve(self: Arc<Self>, addr: &Addr) -> std::io::Result<()> {
        let listener = Listener::bind(addr)?;
        tracing::info!(%addr, rules = self.allow.len(), "egress relay listening");
        self.serve_on(listener).await
    }

    pub async fn serve_on(self: Arc<Self>, listener: Listener) -> std::io::Result<()> {
        loop {
            let (io, _) = listener.accept().await?;
            tokio::spawn(self.clone().handle(io));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: &str, port: Option<u16>) -> Rule {
        Rule {
            host: host.into(),
            port,
            max_connections: None,
            allow_private: false,
        }
    }

    fn config() -> RelayConfig {
        RelayConfig {
            listen: "unix:/nonexistent".into(),
            allow: vec![],
            deny: vec![],
            vsock_proxy_allowlist: None,
            connect_timeout: Duration::from_secs(1),
            dns_cache_ttl: Duration::from_secs(30),
            max_connections: 10,
            idle_timeout: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(3600),
        }
    }

    fn relay(allow: Vec<Rule>, deny: Vec<Rule>) -> Relay {
        let cfg = RelayConfig {
            allow,
            deny,
            ..config()
        };
        Relay::new(&cfg, Arc::new(Metrics::new())).unwrap()
    }

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn wildcards_ports_and_deny_precedence() {
        let r = relay(
            vec![
                rule("*.amazonaws.com", Some(443)),
                rule("vault.internal", None),
            ],
            vec![rule("evil.amazonaws.com", None)],
        );
        assert_eq!(r.decide(&t("kms.eu-west-1.amazonaws.com:443")), Ok(0));
        assert!(
            r.decide(&t("amazonaws.com:443")).is_err(),
            "wildcard needs a label"
        );
        assert!(r.decide(&t("xamazonaws.com:443")).is_err());
        assert!(r.decide(&t("kms.eu-west-1.amazonaws.com:80")).is_err());
        assert_eq!(r.decide(&t("vault.internal:8200")), Ok(1));
        let e = r.decide(&t("evil.amazonaws.com:443")).unwrap_err();
        assert_eq!(
            e,
            Denied::DenyRule {
                target: t("evil.amazonaws.com:443"),
                rule: "evil.amazonaws.com".into()
            }
        );
        assert!(e.to_string().contains("deny rule"), "{e}");
        let e = r.decide(&t("example.com:443")).unwrap_err();
        assert_eq!(
            e,
            Denied::NoAllowRule {
                target: t("example.com:443")
            }
        );
        assert!(e.to_string().contains("no allow rule"), "{e}");
    }

    #[test]
    fn names_are_normalised_before_matching() {
        let r = relay(
            vec![
                rule("*.example.com", Some(443)),
                rule("Bücher.example", None),
            ],
            vec![
                rule("*.internal.example.com", None),
                rule("VAULT.example.com.", None),
            ],
        );
        // A trailing dot or capitals do not dodge a deny rule.
        for host in [
            "x.internal.example.com.:443",
            "X.INTERNAL.example.com:443",
            "vault.example.com.:443",
        ] {
            let e = r.decide(&t(host)).unwrap_err();
            assert!(matches!(e, Denied::DenyRule { .. }), "{host}: {e}");
        }
        assert_eq!(r.decide(&t("kms.example.com.:443")), Ok(0));
        // A rule written in Unicode matches its punycode form.
        assert_eq!(r.decide(&t("xn--bcher-kva.example:443")), Ok(1));
        // IPv4-mapped IPv6 is the IPv4 address, for deny rules too.
        let r2 = relay(vec![rule("*", None)], vec![rule("10.1.2.3", None)]);
        assert!(r2.decide(&t("[::ffff:10.1.2.3]:443")).is_err());
        // Numeric names that resolvers read as addresses never get this far.
        assert!("2130706433:443".parse::<Target>().is_err());
        // A rule that cannot be normalised is a configuration error.
        let cfg = RelayConfig {
            allow: vec![rule("bad..name", None)],
            ..config()
        };
        let e = Relay::new(&cfg, Arc::new(Metrics::new())).unwrap_err();
        assert!(
            matches!(&e, RelayConfigError::Rule(BadRule { host, .. }) if host == "bad..name"),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("relay rule host \"bad..name\": "),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_deny_rule_for_an_ip_also_denies_names_resolving_to_it() {
        let mut allow = rule("localhost", None);
        allow.allow_private = true;
        let r = relay(
            vec![allow],
            vec![rule("127.0.0.1", None), rule("::1", None)],
        );
        let e = r.connect(&t("localhost:1")).await.unwrap_err();
        assert_eq!(e.0, Refusal::Denied, "{e:?}");
        assert!(e.1.contains("denied by rule"), "{e:?}");
    }

    #[tokio::test]
    async fn idle_and_long_lived_connections_are_closed() {
        use tokio::io::AsyncReadExt;
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = up.local_addr().unwrap().port();
        // The upstream accepts and then says nothing.
        tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = up.accept().await {
                held.push(s);
            }
        });
        let mut cfg = config();
        cfg.allow = vec![rule("127.0.0.1", None)];
        cfg.idle_timeout = Duration::from_millis(300);
        let r = Arc::new(Relay::new(&cfg, Arc::new(Metrics::new())).unwrap());
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let task = tokio::spawn(r.clone().handle(Box::new(theirs)));
        ours.write_all(format!("PIIRELAY/1 CONNECT 127.0.0.1:{port}\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 3];
        ours.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"OK\n");
        let t0 = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("an idle splice ends")
            .unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t0.elapsed()
        );
        // Busy but past its lifetime: closed too.
        cfg.idle_timeout = Duration::from_secs(60);
        cfg.max_lifetime = Duration::from_millis(400);
        let r = Arc::new(Relay::new(&cfg, Arc::new(Metrics::new())).unwrap());
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let task = tokio::spawn(r.handle(Box::new(theirs)));
        ours.write_all(format!("PIIRELAY/1 CONNECT 127.0.0.1:{port}\n").as_bytes())
            .await
            .unwrap();
        ours.read_exact(&mut buf).await.unwrap();
        let chatter = tokio::spawn(async move {
            for _ in 0..100 {
                if ours.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("a splice past its lifetime ends")
            .unwrap();
        chatter.abort();
    }

    #[test]
    fn vsock_proxy_yaml_is_accepted() {
        let y = "allowlist:\n- {address: kms.us-east-1.amazonaws.com, port: 443}\n- address: vault.example.com\n  port: 8200\n";
        let rules = parse_vsock_proxy_yaml(y).unwrap();
        assert_eq!(
            rules,
            vec![
                rule("kms.us-east-1.amazonaws.com", Some(443)),
                rule("vault.example.com", Some(8200))
            ]
        );
        for bad in ["allowlist: 3", ": : :"] {
            let e = parse_vsock_proxy_yaml(bad).unwrap_err();
            assert!(matches!(e, RelayConfigError::Allowlist(_)), "{e:?}");
            assert!(e.to_string().starts_with("vsock-proxy allowlist: "), "{e}");
        }
        // From a file, as the config names it; and a relay without capacity.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowlist.yaml");
        let cfg = RelayConfig {
            vsock_proxy_allowlist: Some(path.clone()),
            ..config()
        };
        let e = Relay::new(&cfg, Arc::new(Metrics::new())).unwrap_err();
        assert!(matches!(&e, RelayConfigError::ReadAllowlist { path: p, .. } if *p == path));
        std::fs::write(&path, y).unwrap();
        let r = Relay::new(&cfg, Arc::new(Metrics::new())).unwrap();
        assert_eq!(r.decide(&t("vault.example.com:8200")), Ok(1));
        let cfg = RelayConfig {
            max_connections: 0,
            ..config()
        };
        assert!(matches!(
            Relay::new(&cfg, Arc::new(Metrics::new())),
            Err(RelayConfigError::MaxConnections)
        ));
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "192.168.0.1",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            // The rest of IANA's special-purpose registries, and multicast.
            "192.0.0.170",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "192.88.99.1",
            "224.0.0.251",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "64:ff9b::a00:1", // NAT64 of 10.0.0.1
            "64:ff9b:1::1",   // local-use NAT64
            "100::1",
            "2001::1", // Teredo
            "2001:db8::1",
            "2002:a00:1::1", // 6to4
            "3fff::1",
            "5f00::1",
            "fec0::1",
            "ff02::1",
            "::127.0.0.1", // IPv4-compatible
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "52.94.1.1",
            "2600:1f18::1",
            "64:ff9b::3400:1",
            "8.8.8.8",
            "2606:4700::1111",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_need_allow_private() {
        let r = relay(
            vec![rule("localhost", None), rule("127.0.0.1", None)],
            vec![],
        );
        let e = r.connect(&t("localhost:1")).await.unwrap_err();
        assert_eq!(e.0, Refusal::Denied, "{e:?}");
        // The literal IP named by a rule is allowed (and here refused by the
        // closed port, which is a connect error, not a policy one).
        let e = r.connect(&t("127.0.0.1:1")).await.unwrap_err();
        assert_eq!(e.0, Refusal::Connect, "{e:?}");
    }
}
