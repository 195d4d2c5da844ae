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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pii_transport::relay::{encode_reply, parse_request, read_line, splice, Refusal, Target};
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

impl Rule {
    fn matches(&self, t: &Target) -> bool {
        if self.port.is_some_and(|p| p != t.port) {
            return false;
        }
        let pat = self.host.to_ascii_lowercase();
        let pat = pat.trim_start_matches('[').trim_end_matches(']');
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
pub fn parse_vsock_proxy_yaml(text: &str) -> Result<Vec<Rule>, String> {
    let y: VsockProxyYaml =
        serde_yaml_ng::from_str(text).map_err(|e| format!("vsock-proxy allowlist: {e}"))?;
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

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_loopback()
                || v.is_private()
                || v.is_link_local()
                || v.is_unspecified()
                || v.is_broadcast()
                || v.octets()[0] == 100 && (v.octets()[1] & 0xc0) == 64 // CGNAT
        }
        IpAddr::V6(v) => {
            v.is_loopback()
                || v.is_unspecified()
                || (v.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v.to_ipv4_mapped().is_some_and(|m| is_private(IpAddr::V4(m)))
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
    pub fn new(cfg: &RelayConfig, metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut allow = cfg.allow.clone();
        if let Some(p) = &cfg.vsock_proxy_allowlist {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            allow.extend(parse_vsock_proxy_yaml(&text)?);
        }
        for r in allow.iter().chain(&cfg.deny) {
            if r.host.is_empty() || r.host.contains(char::is_whitespace) {
                return Err(format!(
                    "relay rule host {:?} is not a host pattern",
                    r.host
                ));
            }
        }
        if cfg.max_connections == 0 {
            return Err("relay max_connections must be at least 1".into());
        }
        Ok(Relay {
            limits: allow
                .iter()
                .map(|r| r.max_connections.map(|n| Arc::new(Semaphore::new(n))))
                .collect(),
            allow,
            deny: cfg.deny.clone(),
            total: Arc::new(Semaphore::new(cfg.max_connections)),
            connect_timeout: cfg.connect_timeout,
            dns_ttl: cfg.dns_cache_ttl,
            dns: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Which allow rule admits `t`, or why none does.
    pub fn decide(&self, t: &Target) -> Result<usize, String> {
        if let Some(d) = self.deny.iter().find(|r| r.matches(t)) {
            return Err(format!("{t} matches deny rule {:?}", d.host));
        }
        self.allow
            .iter()
            .position(|r| r.matches(t))
            .ok_or_else(|| format!("{t} matches no allow rule"))
    }

    async fn resolve(&self, t: &Target, rule: &Rule) -> Result<Vec<SocketAddr>, (Refusal, String)> {
        if let Ok(ip) = t.host.parse::<IpAddr>() {
            // An IP literal is only reachable through a rule that names it
            // (or allows private addresses explicitly).
            if is_private(ip) && !rule.allow_private && rule.host.trim_matches(['[', ']']) != t.host
            {
                return Err((Refusal::Denied, format!("{ip} is a private address")));
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
                format!("{} resolves to a private address", t.host),
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
                    .write_all(&encode_reply(Err((Refusal::BadRequest, &e))))
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
        let res = splice(&mut enclave, &mut upstream).await;
        self.metrics.relay_active.dec();
        if let Ok((up, down)) = res {
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
        let idx = self.decide(t).map_err(|e| (Refusal::Denied, e))?;
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

    fn relay(allow: Vec<Rule>, deny: Vec<Rule>) -> Relay {
        let cfg = RelayConfig {
            listen: "unix:/nonexistent".into(),
            allow,
            deny,
            vsock_proxy_allowlist: None,
            connect_timeout: Duration::from_secs(1),
            dns_cache_ttl: Duration::from_secs(30),
            max_connections: 10,
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
        assert!(e.contains("deny rule"), "{e}");
        assert!(r
            .decide(&t("example.com:443"))
            .unwrap_err()
            .contains("no allow rule"));
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
        assert!(parse_vsock_proxy_yaml("allowlist: 3").is_err());
        assert!(parse_vsock_proxy_yaml(": : :").is_err());
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
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["52.94.1.1", "2600:1f18::1"] {
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
