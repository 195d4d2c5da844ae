//! The fraud signal bus end to end against a real broker (tansu) and the
//! real sidecar + enclave: gateway logs over HTTP and over `gateway-logs`
//! become signals on `fraud-signals` whose subjects are the enclave's
//! tokens (no raw subject in any message), offsets are committed only after
//! the signals are out, and a broker outage is spooled and replayed.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pii_tests::{Broker, Stack, ROOT_TOKEN};
use serde_json::{json, Value};

const INGEST_TOKEN: &str = "shipper-token-3b7f0c";

fn line(
    ts_ms: i64,
    ip: &str,
    method: &str,
    path: &str,
    status: u16,
    ua: &str,
    sub: &str,
) -> String {
    json!({
        "ts": pii_fraud::record::format_ts(ts_ms), "client_ip": ip, "method": method, "host": "shop.example",
        "path": path, "status": status, "bytes": 512, "duration_ms": 3.5, "user_agent": ua,
        "referer": "", "jwt_sub": sub,
    })
    .to_string()
}

/// 40 requests of a 404 prober: an address, and a subject if given.
fn prober(t0: i64, ip: &str, sub: &str) -> Vec<String> {
    (0..40)
        .map(|i| {
            line(
                t0 + i * 400,
                ip,
                "GET",
                &format!("/wp-{i}.php"),
                404,
                "sqlmap/1.8#stable",
                sub,
            )
        })
        .collect()
}

struct Ingest {
    child: tokio::process::Child,
    url: String,
    http: reqwest::Client,
}

impl Ingest {
    /// Sends the ingest process a signal (`STOP`, `CONT`) with kill(1).
    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("ingest running").to_string();
        let st = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .expect("kill runs");
        assert!(st.success(), "kill -{sig} {pid}");
    }

    async fn start(
        bins: &std::path::Path,
        stack: &Stack,
        broker: &Broker,
        dir: &std::path::Path,
    ) -> Ingest {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.join("tokens"),
            format!("# log shippers\n{INGEST_TOKEN}\n"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("ingest.log")).unwrap();
        let child = tokio::process::Command::new(bins.join("host-proxy"))
            .args(["fraud", "ingest", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--ingest-tokens-file")
            .arg(dir.join("tokens"))
            .args(["--kafka-brokers", &broker.addr(), "--spool-dir"])
            .arg(dir.join("spool"))
            .env("VAULT_ADDR", &stack.url)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .env(
                "PII_PROXY_LOG",
                "info,pii_fraud::sink=debug,librdkafka=warn,rdkafka=warn",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: the test stops it (SIGSTOP) across the
            // broker's restart, and a stopped member of a process group that
            // becomes orphaned (as a CI job's group can) gets SIGHUP from the
            // kernel, which would kill it. A group of its own whose parent
            // (this test) lives is never orphaned.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let t0 = Instant::now();
        while http.get(format!("{url}/healthz")).send().await.is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "ingest did not start: {}",
                std::fs::read_to_string(dir.join("ingest.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ingest { child, url, http }
    }

    async fn post(&self, lines: &[String], token: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/v1/fraud/ingest", self.url))
            .body(lines.join("\n"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn metric(&self, name: &str) -> u64 {
        pii_tests::metric(&self.url, name).await.unwrap_or(0)
    }
}

/// Reads `fraud-signals` (kafka-python, a fresh read from the earliest
/// offset each round) until `done` holds for what was read, or `within`
/// passes. On failure, says how many reads ran and the last read error.
async fn read_until(
    broker: &Broker,
    group: &str,
    seen: &mut Vec<(String, String)>,
    within: Duration,
    done: impl Fn(&[(String, String)]) -> bool,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let (mut reads, mut last_error) = (0, String::from("none"));
    while !done(seen) {
        if t0.elapsed() > within {
            anyhow::bail!(
                "{reads} reads in {:?}; last read error: {last_error}",
                t0.elapsed()
            );
        }
        reads += 1;
        let out = match pii_tests::kafka_client(
            &["consume", &broker.addr(), "fraud-signals", group, "4"],
            None,
        )
        .await
        {
            Ok(out) => out,
            Err(e) => {
                last_error = format!("{e:#}");
                String::new()
            }
        };
        seen.clear();
        for l in out.lines() {
            let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
            if let (Some(k), Some(val)) = (v["key"].as_str(), v["value"].as_str()) {
                seen.push((k.to_owned(), val.to_owned()));
            }
        }
    }
    Ok(())
}

/// The ingest's own log lines (not librdkafka's connection chatter), the
/// last `n` of them.
fn own_log(dir: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(dir.join("ingest.log")).unwrap_or_default();
    let own: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"target\":\"librdkafka\"") && !l.contains("\"target\":\"rdkafka"))
        .collect();
    tail(&own.join("\n"), n)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn has_key(seen: &[(String, String)], key_type: &str, key: &str) -> bool {
    seen.iter().any(|(k, v)| {
        let s: Value = serde_json::from_str(v).unwrap_or(Value::Null);
        k == key && s["key"] == key && s["key_type"] == key_type && s["action"] == "block"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_logs_become_tokenized_signals_and_survive_a_broker_outage() {
    let bins = pii_tests::binaries();
    let mut broker = Broker::start().await.unwrap();
    broker.create_topic("gateway-logs", 2).await.unwrap();
    broker.create_topic("fraud-signals", 3).await.unwrap();
    let stack = Stack::start().await;
    let root = stack.client();
    let r = root
        .post(
            "transform/transformations/tokenization/fraud-subject",
            json!({"allowed_roles": ["fraud"], "mapping_mode": "deterministic"}),
        )
        .await;
    assert!(r.status < 300, "{r:?}");
    let r = root
        .post(
            "transform/role/fraud",
            json!({"transformations": ["fraud-subject"]}),
        )
        .await;
    assert!(r.status < 300, "{r:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut ingest = Ingest::start(&bins, &stack, &broker, dir.path()).await;
    // A hangup does not end it (it has nothing to reload): it says so and
    // keeps answering.
    ingest.signal("HUP");
    let t0 = Instant::now();
    while !own_log(dir.path(), 50).contains("SIGHUP ignored") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "SIGHUP not acknowledged: {}",
            own_log(dir.path(), 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let health = ingest
        .http
        .get(format!("{}/healthz", ingest.url))
        .send()
        .await;
    assert!(
        health.is_ok_and(|r| r.status().is_success()),
        "alive after SIGHUP"
    );
    // Record times near the ingest's clock (it refuses far-off ones).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 120_000;

    // Without the bearer token: refused, nothing counted.
    let (status, _) = ingest.post(&prober(now, "198.51.100.1", ""), None).await;
    assert_eq!(status, 401);
    let (status, _) = ingest
        .post(&prober(now, "198.51.100.1", ""), Some("wrong"))
        .await;
    assert_eq!(status, 401);
    assert_eq!(ingest.metric("pii_fraud_records").await, 0);

    // Over HTTP: a prober signed in as mallory, plus malformed lines.
    let mut lines = prober(now, "198.51.100.7", "mallory@example.com");
    lines.push("not json".into());
    lines.push(format!("{{\"ts\":\"x\",{}", "\"a\":1".repeat(10)));
    lines.push(line(now, "999.0.0.1", "GET", "/", 200, "x", ""));
    // A forged far-future time would freeze a key's windows: refused.
    lines.push(line(
        now + 86_400_000 * 365,
        "198.51.100.7",
        "GET",
        "/",
        200,
        "x",
        "",
    ));
    let (status, body) = ingest.post(&lines, Some(INGEST_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 40, "{body}");
    assert_eq!(body["rejected"]["bad_json"], 2, "{body}");
    assert_eq!(body["rejected"]["bad_ip"], 1, "{body}");
    assert_eq!(body["rejected"]["out_of_window"], 1, "{body}");

    // Over Kafka: a credential stuffer, produced to gateway-logs in two messages.
    let stuffing: Vec<String> = (0..40)
        .map(|i| {
            line(
                now + i * 700,
                "192.0.2.33",
                "POST",
                "/login",
                401,
                "python-requests/2.32.3",
                "",
            )
        })
        .collect();
    let payloads: Vec<String> = stuffing.chunks(20).map(|c| c.join("\n")).collect();
    pii_tests::kafka_client(
        &["produce", &broker.addr(), "gateway-logs"],
        Some(&serde_json::to_string(&payloads).unwrap()),
    )
    .await
    .unwrap();

    // The enclave's token for mallory, asked directly.
    let enc = root
        .post(
            "transform/encode/fraud",
            json!({"value": "mallory@example.com", "transformation": "fraud-subject"}),
        )
        .await;
    let mallory = enc.data("encoded_value").as_str().unwrap().to_owned();
    assert!(!mallory.contains("mallory"));

    let mut seen = Vec::new();
    let ok = read_until(
        &broker,
        "test-reader",
        &mut seen,
        Duration::from_secs(40),
        |s| {
            has_key(s, "subject", &mallory)
                && has_key(s, "ip", "198.51.100.7")
                && has_key(s, "ip", "192.0.2.33")
        },
    )
    .await;
    if let Err(why) = ok {
        panic!(
            "signals not seen ({why}): {seen:#?}\ningest log (own lines):\n{}",
            own_log(dir.path(), 40)
        );
    }
    for (k, v) in &seen {
        assert!(
            !k.contains("example.com") && !v.contains("example.com") && !v.contains("mallory"),
            "raw subject in a signal: {k} {v}"
        );
        let s: pii_fraud::signal::Signal = serde_json::from_str(v).unwrap();
        assert_eq!(s.schema, "pii-fraud.signal/v1");
    }

    // gateway-logs offsets were committed after the signals went out.
    let mut committed_total = 0;
    let t0 = Instant::now();
    while committed_total < 2 && t0.elapsed() < Duration::from_secs(20) {
        committed_total = pii_tests::kafka_client(
            &["committed", &broker.addr(), "pii-fraud", "gateway-logs"],
            None,
        )
        .await
        .ok()
        .and_then(|o| o.trim().parse::<u64>().ok())
        .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(committed_total, 2, "both gateway-logs messages committed");

    // Broker down: signals are spooled, the ingest keeps answering.
    broker.stop().await;
    let (status, body) = ingest
        .post(
            &prober(now + 60_000, "203.0.113.99", ""),
            Some(INGEST_TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let t0 = Instant::now();
    while ingest.metric("pii_fraud_signals_spooled").await == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "nothing spooled while the broker was down"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Back up (in-memory storage: the topics are new): the spool drains, in order.
    // tansu's memory engine acknowledges a produce to a topic that does not
    // exist yet (Kafka answers UNKNOWN_TOPIC_OR_PARTITION) and the record is
    // gone once the topic is made; so the ingest is paused until the topics
    // exist, or a replay in that gap would be acknowledged into nothing.
    ingest.signal("STOP");
    broker.restart().await.unwrap();
    broker.create_topic("fraud-signals", 3).await.unwrap();
    broker.create_topic("gateway-logs", 2).await.unwrap();
    ingest.signal("CONT");

    // The replay may first wait out a producer wedged by the broker's lost
    // state (the sink's drain deadline, 15 s) and then start a new one.
    let mut after = Vec::new();
    let t_replay = Instant::now();
    // KNOWN DEFECT, not fixed: the bundled librdkafka 2.12.1 can crash
    // (SIGSEGV, strcmp(NULL) in rd_kafka_metadata_update_op: KIP-951 leader
    // hints without a topic name, which tansu sends after restarting with
    // empty state; upstream confluentinc/librdkafka#5280). What must hold
    // even then is what a supervisor (Kubernetes) gives: a restarted ingest
    // replays the disk spool, and no signal is lost. The crash is reported
    // loudly here and in the issue notes.
    use std::os::unix::process::ExitStatusExt;
    let mut restarted = false;
    let ok = loop {
        let wait = Duration::from_secs(if restarted { 90 } else { 45 });
        let r = read_until(&broker, "test-reader-2", &mut after, wait, |s| {
            has_key(s, "ip", "203.0.113.99")
        })
        .await;
        let crashed = r.is_err()
            && !restarted
            && matches!(ingest.child.try_wait(), Ok(Some(st)) if st.signal() == Some(11));
        if !crashed {
            break r;
        }
        eprintln!(
            "KNOWN DEFECT: the ingest crashed in librdkafka (SIGSEGV); restarting it \
             on the same spool as a supervisor would\n{}",
            own_log(dir.path(), 12)
        );
        ingest = Ingest::start(&bins, &stack, &broker, dir.path()).await;
        restarted = true;
    };
    if let Err(why) = ok {
        let mut counts = String::new();
        for m in [
            "pii_fraud_signals_spooled",
            "pii_fraud_signals_replayed",
            "pii_fraud_signals_delivered",
            "pii_fraud_send_failures",
        ] {
            counts += &format!("{m}={} ", ingest.metric(m).await);
        }
        let alive = match ingest.child.try_wait() {
            Ok(None) => "the ingest is running".to_owned(),
            Ok(Some(st)) => format!("the ingest exited: {st}"),
            Err(e) => format!("the ingest's state is unknown: {e}"),
        };
        panic!(
            "spooled signal never arrived ({why}); {alive}; {counts}; read: {after:?}\n\
             ingest log (own lines):\n{}\nbroker log (tail):\n{}",
            own_log(dir.path(), 30),
            tail(&broker.log(), 30)
        );
    }
    eprintln!(
        "spooled signal read back {:?} after the broker returned",
        t_replay.elapsed()
    );
    eprintln!("ingest log after the restart:\n{}", own_log(dir.path(), 12));
    assert!(ingest.metric("pii_fraud_signals_replayed").await > 0);
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for (k, _) in &after {
        *by_key.entry(k.as_str()).or_default() += 1;
    }
    assert!(by_key.contains_key("203.0.113.99"), "{by_key:?}");
    drop(ingest.child);
    broker.stop().await;
}
