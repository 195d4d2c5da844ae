//! Verified crawlers against a real DNS server (dnsmasq from Debian, on
//! loopback): a Googlebot or Bingbot whose reverse name lies in its
//! operator's domain and whose forward lookup gives the address back is
//! never scored; an address that names googlebot.com in its own reverse
//! zone, or sits below a look-alike domain, or has no PTR at all, is a fake
//! crawler and gets blocked; a DNS server that does not answer gives no
//! verdict and costs a bounded wait. Both the offline replay (the real
//! `host-proxy fraud replay`) and the online ingest's batch path are driven.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pii_fraud::crawlers::{Budget, CrawlerList, DnsServers, Resolver};
use pii_fraud::pipeline::{Pipeline, PipelineConfig};
use pii_fraud::rules::RuleSet;
use pii_fraud::ua::UaClassifier;
use serde_json::{json, Value};

const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const BINGBOT: &str = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)";

/// The addresses of the test, and what DNS says of each.
const VERIFIED_V4: &str = "66.249.66.1";
const VERIFIED_V6: &str = "2001:db8:4860::1";
const VERIFIED_BING: &str = "157.55.39.1";
/// Names crawl-66-249-66-1.googlebot.com in its own reverse zone.
const SPOOFED_PTR: &str = "203.0.113.9";
/// Reverse name below a look-alike domain that resolves back to it.
const LOOKALIKE: &str = "203.0.113.10";
/// No PTR record at all.
const NO_PTR: &str = "198.51.100.7";

struct Dnsmasq {
    child: Child,
    port: u16,
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dnsmasq {
    /// dnsmasq answering only from its own records (NXDOMAIN for the rest).
    fn start() -> Dnsmasq {
        let bin = pii_tests::which("dnsmasq")
            .or_else(|| {
                Some("/usr/sbin/dnsmasq".into()).filter(|p: &std::path::PathBuf| p.exists())
            })
            .expect("dnsmasq (Debian's dnsmasq-base; ci/setup.sh installs it)");
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new(&bin)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--pid-file=",
                    "--log-facility=-",
                    "--local=/in-addr.arpa/",
                    "--local=/ip6.arpa/",
                    "--local=/com/",
                    "--local=/example/",
                    &format!("--port={port}"),
                    &format!("--host-record=crawl-66-249-66-1.googlebot.com,{VERIFIED_V4}"),
                    &format!("--host-record=crawl-2001-db8-4860--1.googlebot.com,{VERIFIED_V6}"),
                    &format!("--host-record=msnbot-157-55-39-1.search.msn.com,{VERIFIED_BING}"),
                    "--ptr-record=9.113.0.203.in-addr.arpa,crawl-66-249-66-1.googlebot.com",
                    &format!("--host-record=crawl-203-0-113-10.evilgooglebot.com,{LOOKALIKE}"),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Up when it answers TCP on its port (it serves TCP too).
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken: try another
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Dnsmasq { child, port };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start");
    }

    fn servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn line(ts_ms: i64, ip: &str, path: &str, ua: &str) -> String {
    json!({
        "ts": pii_fraud::record::format_ts(ts_ms), "client_ip": ip, "method": "GET", "host": "shop.example",
        "path": path, "status": 200, "bytes": 512, "duration_ms": 3.5, "user_agent": ua,
        "referer": "", "jwt_sub": "",
    })
    .to_string()
}

/// 30 fast page fetches from each address, with the crawler's user agent.
fn crawl(t0: i64) -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..30 {
        for (ip, ua) in [
            (VERIFIED_V4, GOOGLEBOT),
            (VERIFIED_V6, GOOGLEBOT),
            (VERIFIED_BING, BINGBOT),
            (SPOOFED_PTR, GOOGLEBOT),
            (LOOKALIKE, GOOGLEBOT),
            (NO_PTR, GOOGLEBOT),
        ] {
            v.push(line(t0 + i * 200, ip, &format!("/products/{i}"), ua));
        }
    }
    v
}

/// Decisions by address key: reasons of each.
fn by_ip(lines: &[Value]) -> HashMap<String, Value> {
    lines
        .iter()
        .filter(|d| d["key_type"] == "ip")
        .map(|d| (d["key"].as_str().unwrap().to_owned(), d.clone()))
        .collect()
}

fn fake_and_blocked(d: Option<&Value>) -> bool {
    d.is_some_and(|d| {
        d["action"] == "block"
            && d["reasons"]
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == "fake_crawler"))
    })
}

fn replay(bins: &Path, log: &Path, out: &Path, dns: &str) -> (Vec<Value>, String, Duration) {
    let t0 = Instant::now();
    let o = Command::new(bins.join("host-proxy"))
        .args(["fraud", "replay", "--input"])
        .arg(log)
        .arg("--output")
        .arg(out)
        .args(["--crawler-dns", dns])
        .output()
        .unwrap();
    let took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "replay failed: {stderr}");
    let lines = std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stderr, took)
}

#[test]
fn replay_never_scores_verified_crawlers_and_blocks_the_fakes() {
    let bins = pii_tests::binaries();
    let dns = Dnsmasq::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.ndjson");
    std::fs::write(&log, crawl(1_796_083_200_000).join("\n")).unwrap();
    let out = dir.path().join("out.ndjson");

    let (lines, stderr, _) = replay(&bins, &log, &out, &dns.servers());
    let d = by_ip(&lines);
    for ok in [VERIFIED_V4, VERIFIED_V6, VERIFIED_BING] {
        assert!(
            !d.contains_key(ok),
            "{ok} verified, yet scored: {:?}",
            d.get(ok)
        );
    }
    for fake in [SPOOFED_PTR, LOOKALIKE, NO_PTR] {
        assert!(
            fake_and_blocked(d.get(fake)),
            "{fake}: {:?}\n{stderr}",
            d.get(fake)
        );
    }
    assert!(
        stderr.contains("90 from verified crawlers, 90 from fake crawlers"),
        "{stderr}"
    );

    // Checks off: the same claims are scored as any crawler, none is fake.
    let (lines, stderr, _) = replay(&bins, &log, &out, "off");
    assert!(
        stderr.contains("0 from verified crawlers, 0 from fake crawlers"),
        "{stderr}"
    );
    assert!(lines.iter().all(|d| !d["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "fake_crawler")));

    // A server that never answers (a bound UDP socket that reads nothing):
    // no verdict, a bounded wait, the replay completes.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let (lines, stderr, took) = replay(&bins, &log, &out, &addr);
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(
        stderr.contains("0 from verified crawlers, 0 from fake crawlers"),
        "{stderr}"
    );
    assert!(!lines.iter().any(|d| d["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "fake_crawler")));
}

/// A transport that accepts every signal (the test reads them from `process`).
struct Accept;

impl pii_fraud::sink::Transport for Accept {
    async fn send(&self, _: &str, _: &str) -> Result<(), pii_fraud::sink::TransportError> {
        Ok(())
    }
}

#[tokio::test]
async fn the_online_ingest_checks_claims_before_it_scores_a_batch() {
    let dns = Dnsmasq::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = PipelineConfig {
        crawlers: Some(Arc::new(CrawlerList::builtin().unwrap())),
        ..PipelineConfig::default()
    };
    let pipeline = Pipeline::new(cfg, RuleSet::default_rules(), UaClassifier::new().unwrap());
    // Anonymous traffic only: the enclave is never asked for a token.
    let client =
        pii_fraud::tokenize::TransformClient::new("http://127.0.0.1:9", "fraud", "t", "x").unwrap();
    let sink = pii_fraud::sink::Sink::start(Accept, &dir.path().join("spool"), 1 << 20, 4).unwrap();
    let servers: DnsServers = dns.servers().parse().unwrap();
    let budget = Budget::default();
    let resolver = Resolver::new(&servers, budget.deadline).unwrap();
    let ingest = pii_fraud::ingest::Ingest::new(pipeline, client, sink, false)
        .with_crawler_dns(resolver, budget);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // The first batch is scored without waiting for DNS: the claims are
    // asked in the background, and the claiming addresses get no decision
    // of their own until the answers are in.
    let (outcome, records) = ingest
        .process(crawl(now - 120_000).join("\n").as_bytes(), now)
        .await
        .unwrap();
    assert_eq!(outcome.accepted, 180);
    let signals: Vec<Value> = records
        .iter()
        .map(|r| serde_json::from_str(&r.value).unwrap())
        .collect();
    assert!(by_ip(&signals).is_empty(), "{signals:?}");
    let t0 = Instant::now();
    while ingest.crawler_checks_done() < 6 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "checks not answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = ingest.process(b"", now).await.unwrap();
    }
    // The next batches: verified crawlers are not scored, fakes are blocked.
    let mut signals = Vec::new();
    for k in 1..=2 {
        let (_, records) = ingest
            .process(crawl(now - 120_000 + k * 7_000).join("\n").as_bytes(), now)
            .await
            .unwrap();
        signals.extend(
            records
                .iter()
                .map(|r| serde_json::from_str::<Value>(&r.value).unwrap()),
        );
    }
    let d = by_ip(&signals);
    for ok in [VERIFIED_V4, VERIFIED_V6, VERIFIED_BING] {
        assert!(!d.contains_key(ok), "{ok}: {:?}", d.get(ok));
    }
    for fake in [SPOOFED_PTR, LOOKALIKE, NO_PTR] {
        assert!(fake_and_blocked(d.get(fake)), "{fake}: {:?}", d.get(fake));
    }
}
