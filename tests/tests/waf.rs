//! `waf-sync` against real targets: a real nginx from Debian (blocked
//! addresses get 403 in enforce; in shadow they are only logged; its JSON
//! access log parses as gateway logs with our own 403s marked), and AWS
//! WAFv2 IP sets in moto's server mode (checked with boto3, an independent
//! client), and Cloudflare Lists plus a custom rule through the Rulesets API
//! in a local emulator of the documented endpoints and limits
//! (`pii_tests::cloudflare`), with capacity, idempotence and the allowlist.
//!
//! Why this size: one test per WAF back end (AWS WAFv2 on moto, Cloudflare's emulator, nginx) with its limits and failure cases.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pii_tests::which;
use serde_json::json;

fn signal(key: &str, key_type: &str, mode: &str) -> String {
    json!({
        "schema": "pii-fraud.signal/v1", "key_type": key_type, "key": key, "score": 0.97,
        "action": "block", "mode": mode, "reasons": ["not_found_probing"], "window_s": 900,
        "first_seen": "2026-12-01T00:00:00Z", "last_seen": "2026-12-01T00:05:00Z",
    })
    .to_string()
}

/// Writes signal lines to `<d>/signals.ndjson`; returns that path, the
/// sync state's path and the signals path as text.
fn signal_files(d: &Path, lines: &[String]) -> (PathBuf, String, String) {
    let signals = d.join("signals.ndjson");
    std::fs::write(&signals, lines.join("\n")).unwrap();
    let state = d.join("state.json").display().to_string();
    let text = signals.display().to_string();
    (signals, state, text)
}

/// Runs `waf-sync` (the real binary); returns its stdout.
fn waf_sync(bins: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(bins.join("waf-sync"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "waf-sync {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn binaries() -> PathBuf {
    let dir = pii_tests::binaries();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args(["build", "-q", "-p", "pii-fraud", "--bin", "waf-sync"])
        .args(dir.ends_with("release").then_some("--release"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

async fn get_from(source: &str, port: u16) -> u16 {
    let c = reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    // A client-chosen subject header must never reach the log as jwt_sub.
    c.get(format!("http://127.0.0.1:{port}/shop"))
        .header("X-JWT-Sub", "victim@example.com")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_blocks_enforced_addresses_and_only_logs_shadow_ones() {
    let nginx =
        which("nginx").or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists()));
    let nginx = nginx.expect("nginx is not installed: run ci/setup.sh (Debian's nginx package)");
    let bins = binaries();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let map = d.join("pii-fraud.map");
    std::fs::write(&map, "").unwrap();
    let conf = d.join("nginx.conf");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../host-proxy/fraud/deploy/nginx-fraud.conf"
    ))
    .unwrap();
    let text = text
        .replace("@DIR@", &d.display().to_string())
        .replace("@PORT@", &port.to_string())
        .replace("@MAP@", &map.display().to_string());
    std::fs::write(&conf, text).unwrap();
    let conf_s = conf.display().to_string();
    let dir_s = d.display().to_string();
    let mut child = tokio::process::Command::new(&nginx)
        .args([
            "-c",
            &conf_s,
            "-p",
            &dir_s,
            "-e",
            &format!("{dir_s}/error.log"),
            // In the foreground: the master is this child, so kill_on_drop
            // stops it (a daemonized master outlived the suite).
            "-g",
            "daemon off;",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stop = TermOnDrop(child.id());
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_from("127.0.0.77", port).await, 200);

    let signals = d.join("signals.ndjson");
    // With two hostile keys a producer on the topic could send: refused.
    let hostile = [
        signal("0.0.0.0/0", "subnet", "enforce"),
        signal("default", "ip", "enforce"),
    ];
    let good = [
        signal("127.0.0.77", "ip", "enforce"),
        signal("127.0.0.88", "ip", "shadow"),
        signal("tok_x", "subject", "enforce"),
    ];
    std::fs::write(
        &signals,
        good.iter()
            .chain(&hostile)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let reload = format!(
        "{} -c {conf_s} -p {dir_s} -e {dir_s}/error.log -s reload",
        nginx.display()
    );
    let state = d.join("state.json").display().to_string();
    let map_s = map.display().to_string();
    let sig_s = signals.display().to_string();
    let common = [
        "--from-file",
        &sig_s,
        "--target",
        "nginx",
        "--nginx-map",
        &map_s,
        "--nginx-reload",
        &reload,
        "--state",
        &state,
        "--now",
        "1796083500",
    ];

    // Dry run: prints the diff, writes nothing.
    let out = waf_sync(&bins, &common, &[]);
    assert!(out.contains("+1 -0 enforce, +1 -0 shadow"), "{out}");
    assert!(
        out.contains("+ enforce 127.0.0.77/32") && out.contains("dry run"),
        "{out}"
    );
    assert!(out.contains("2 refused keys"), "{out}");
    assert_eq!(std::fs::read_to_string(&map).unwrap(), "");
    assert!(!Path::new(&state).exists());

    let mut apply: Vec<&str> = common.to_vec();
    apply.push("--apply");
    let out = waf_sync(&bins, &apply, &[]);
    assert!(out.contains("+1 -0 enforce"), "{out}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        get_from("127.0.0.77", port).await,
        403,
        "enforced address blocked"
    );
    assert_eq!(
        get_from("127.0.0.88", port).await,
        200,
        "shadow address only logged"
    );
    assert_eq!(get_from("127.0.0.5", port).await, 200);

    // Idempotent: the same signals again change nothing.
    let out = waf_sync(&bins, &apply, &[]);
    assert!(out.contains("+0 -0 enforce, +0 -0 shadow"), "{out}");

    // The access log is our gateway-log schema; our own 403 is marked.
    let log = std::fs::read_to_string(d.join("access.log")).unwrap();
    let recs: Vec<_> = log
        .lines()
        .map(|l| pii_fraud::record::parse_line(l.as_bytes()).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let blocked = recs
        .iter()
        .find(|r| r.ip_text == "127.0.0.77" && r.status == 403)
        .unwrap();
    assert_eq!(blocked.blocked_by.as_deref(), Some("pii-fraud"));
    let shadow = log
        .lines()
        .find(|l| l.contains("\"client_ip\":\"127.0.0.88\""))
        .unwrap();
    assert!(shadow.contains("\"pii_fraud\":\"shadow\""), "{shadow}");
    assert!(recs
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.blocked_by.is_none()));
    assert!(
        recs.iter().all(|r| r.jwt_sub.is_empty()),
        "a client header reached jwt_sub"
    );
    let map_text = std::fs::read_to_string(&map).unwrap();
    assert!(
        !map_text.contains("0.0.0.0/0") && !map_text.contains("default"),
        "{map_text}"
    );

    // An allowlist entry removes the existing block.
    let mut allow = apply.clone();
    allow.extend(["--allow", "127.0.0.64/26"]);
    let out = waf_sync(&bins, &allow, &[]);
    assert!(
        out.contains("allowlisted 127.0.0.77") && out.contains("-1 enforce"),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get_from("127.0.0.77", port).await, 200);
    drop(stop);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

/// Stops an nginx master with SIGTERM when dropped (also on a failed
/// assertion): the master then stops its workers. A SIGKILL would leave
/// the workers running.
struct TermOnDrop(Option<u32>);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

fn boto_addresses(host: &str, name: &str) -> Vec<String> {
    let script = format!(
        r#"
import boto3, json
c = boto3.client("wafv2", region_name="us-east-1", endpoint_url="http://{host}",
                 aws_access_key_id="testing", aws_secret_access_key="testing")
sets = {{s["Name"]: s["Id"] for s in c.list_ip_sets(Scope="REGIONAL")["IPSets"]}}
print(json.dumps(sorted(c.get_ip_set(Name="{name}", Scope="REGIONAL", Id=sets["{name}"])["IPSet"]["Addresses"])))
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wafv2_ip_sets_in_moto_follow_the_signals_within_capacity() {
    let bins = binaries();
    let moto = pii_tests::Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let endpoint = format!("http://{}", moto.host);
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let (signals, state, sig_s) = signal_files(
        d,
        &[
            signal("198.51.100.7", "ip", "enforce"),
            signal("2001:db8::7", "ip", "enforce"),
            signal("203.0.113.0/24", "subnet", "shadow"),
        ],
    );
    let args = [
        "--from-file",
        &sig_s,
        "--target",
        "wafv2",
        "--wafv2-endpoint",
        &endpoint,
        "--state",
        &state,
        "--now",
        "1796083500",
        "--apply",
    ];
    let out = waf_sync(&bins, &args, &env);
    assert!(
        out.contains("+2 -0 enforce, +1 -0 shadow") && out.contains("3 IP set writes"),
        "{out}"
    );
    assert_eq!(
        boto_addresses(&moto.host, "pii-fraud-enforce-v4"),
        ["198.51.100.7/32"]
    );
    assert_eq!(
        boto_addresses(&moto.host, "pii-fraud-enforce-v6"),
        ["2001:db8::7/128"]
    );
    assert_eq!(
        boto_addresses(&moto.host, "pii-fraud-shadow-v4"),
        ["203.0.113.0/24"]
    );
    // Again: nothing to write.
    let out = waf_sync(&bins, &args, &env);
    assert!(
        out.contains("+0 -0 enforce") && out.contains("0 IP set writes")
            || out.contains("+0 -0 enforce, +0 -0 shadow"),
        "{out}"
    );

    // More enforce keys than a set holds: the top 10,000 by score stay, the rest are reported.
    let many: Vec<String> = (0..10_050u32)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let mut s: serde_json::Value =
                serde_json::from_str(&signal(&ip.to_string(), "ip", "enforce")).unwrap();
            s["score"] = json!(0.9 + f64::from(i) / 1_000_000.0);
            s.to_string()
        })
        .collect();
    std::fs::write(&signals, many.join("\n")).unwrap();
    let out = waf_sync(&bins, &args, &env);
    assert!(
        out.contains("dropped (capacity 10000"),
        "{}",
        &out[..out.len().min(400)]
    );
    let kept = boto_addresses(&moto.host, "pii-fraud-enforce-v4");
    assert_eq!(kept.len(), 10_000);
    // The lowest scores (10.0.0.0 .. 10.0.0.50, plus the earlier 198.51.100.7 at 0.97 stays) lost their place.
    assert!(!kept.contains(&"10.0.0.0/32".to_owned()));
    assert!(kept.contains(&"10.0.39.65/32".to_owned()));

    // A same-named set that someone else made (no Description of ours) is
    // theirs: refused, and its addresses stay.
    let script = format!(
        r#"
import boto3
c = boto3.client("wafv2", region_name="us-east-1", endpoint_url="http://{}",
                 aws_access_key_id="testing", aws_secret_access_key="testing")
c.create_ip_set(Name="theirs-enforce-v4", Scope="REGIONAL", IPAddressVersion="IPV4",
                Addresses=["192.0.2.1/32"], Description="office allowlist")
"#,
        moto.host
    );
    let st = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(st.success());
    let mut theirs: Vec<&str> = args.to_vec();
    theirs.extend(["--set-prefix", "theirs"]);
    let out = waf_sync_fails(&bins, &theirs, &env);
    assert!(
        out.contains("theirs-enforce-v4 exists and was not made by waf-sync"),
        "{out}"
    );
    assert_eq!(
        boto_addresses(&moto.host, "theirs-enforce-v4"),
        ["192.0.2.1/32"]
    );
}

#[test]
fn waf_sync_runs_one_at_a_time_and_within_its_deadline() {
    let bins = binaries();
    let dir = tempfile::tempdir().unwrap();
    let (_, state, sig_s) = signal_files(dir.path(), &[signal("198.51.100.7", "ip", "enforce")]);
    // An endpoint that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let args = |deadline: &'static str| {
        vec![
            "--from-file".to_owned(),
            sig_s.clone(),
            "--target".into(),
            "wafv2".into(),
            "--wafv2-endpoint".into(),
            endpoint.clone(),
            "--state".into(),
            state.clone(),
            "--now".into(),
            "1796083500".into(),
            "--apply".into(),
            "--deadline".into(),
            deadline.into(),
        ]
    };
    let t0 = std::time::Instant::now();
    let a = args("2");
    let out = waf_sync_fails(
        &bins,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    assert!(
        out.contains("did not finish within --deadline 2 s"),
        "{out}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());

    // While another run holds the state's lock, an --apply run refuses to start.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{state}.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    let a = args("60");
    let t0 = std::time::Instant::now();
    let out = waf_sync_fails(
        &bins,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    );
    assert!(out.contains("another waf-sync --apply holds"), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    drop(lock);
}

/// Runs `waf-sync` expecting it to fail; returns its stdout and stderr.
fn waf_sync_fails(bins: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(bins.join("waf-sync"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "waf-sync {args:?} succeeded:\n{text}"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudflare_lists_and_custom_rules_follow_the_signals_within_the_api_limits() {
    use pii_tests::cloudflare::{Emulator, Limits};
    let bins = binaries();
    // Small limits so that each one is reached: 4 list items in the
    // account, 12 requests per 2 s, bulk operations that take 3 reads,
    // pages of 2 items.
    let cf = Emulator::start(Limits {
        max_items: 4,
        requests_per_window: 12,
        window: Duration::from_secs(2),
        polls_until_done: 3,
        page_size: 2,
        ..Limits::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (signals, state, sig_s) = signal_files(
        d,
        &[
            signal("198.51.100.7", "ip", "enforce"),
            signal("2001:db8:1:2::/64", "subnet", "enforce"),
            // A single IPv6 address does not fit a Cloudflare list.
            signal("2001:db8::7", "ip", "enforce"),
            signal("203.0.113.0/24", "subnet", "shadow"),
        ],
    );
    let base = [
        "--from-file",
        &sig_s,
        "--target",
        "cloudflare",
        "--cloudflare-endpoint",
        &cf.url,
        "--cloudflare-account",
        &cf.account,
        "--cloudflare-zone",
        &cf.zone,
        "--state",
        &state,
        "--now",
        "1796083500",
    ];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| (*s).to_owned()).collect()
    };
    let env = [("CLOUDFLARE_API_TOKEN", cf.token.as_str())];
    let run = |args: &[String]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        waf_sync(&bins, &a, &env)
    };

    // A dry run writes nothing.
    let out = run(&with(&["--cloudflare-capacity", "4"]));
    assert!(out.contains("+2 -0 enforce, +1 -0 shadow"), "{out}");
    assert_eq!(cf.items("pii_fraud_enforce"), None, "{out}");

    let args = with(&["--cloudflare-capacity", "4", "--apply"]);
    let out = run(&args);
    assert!(
        out.contains("not representable") && out.contains("2001:db8::7/128"),
        "{out}"
    );
    // Two bulk operations, and the entry point made with both rules.
    assert!(out.contains("3 Cloudflare writes"), "{out}");
    assert!(
        !out.contains(&cf.token),
        "the token stays out of the output"
    );
    assert_eq!(
        cf.count("POST ruleset"),
        1,
        "the entry point was created, not replaced"
    );
    assert_eq!(
        cf.items("pii_fraud_enforce").unwrap(),
        ["198.51.100.7", "2001:db8:1:2::/64"]
    );
    assert_eq!(cf.items("pii_fraud_shadow").unwrap(), ["203.0.113.0/24"]);
    assert!(
        cf.count("throttled") > 0,
        "the rate limit was reached and waited out"
    );
    assert_eq!(
        cf.count("rejected: pending operation"),
        0,
        "one bulk operation at a time"
    );
    assert_eq!(cf.rules().len(), 2, "{:#?}", cf.rules());
    let at = |ip: &str| cf.action_for(ip.parse().unwrap());
    assert_eq!(at("198.51.100.7"), ["block"]);
    assert_eq!(at("2001:db8:1:2::99"), ["block"]);
    assert_eq!(at("203.0.113.9"), ["log"], "shadow: logged, not blocked");
    assert!(at("198.51.100.8").is_empty());

    // Again: nothing to write.
    let out = run(&args);
    assert!(
        out.contains("+0 -0 enforce, +0 -0 shadow") && out.contains("0 Cloudflare writes"),
        "{out}"
    );
    assert_eq!(cf.count("PUT items"), 2);

    // Someone adds their own rule and weakens ours in the dashboard: ours is
    // repaired (one write), theirs is never touched.
    let foreign = json!({"ref": "office", "description": "office", "action": "skip",
                         "expression": "http.request.uri.path eq \"/healthz\"", "enabled": true});
    cf.add_foreign_rule(foreign.clone());
    cf.edit_rule("pii_fraud_enforce", "action", json!("log"));
    assert_eq!(at("198.51.100.7"), ["log"]);
    let out = run(&args);
    assert!(out.contains("1 Cloudflare writes"), "{out}");
    assert_eq!(at("198.51.100.7"), ["block"]);
    let theirs = || {
        let mut r = cf
            .rules()
            .into_iter()
            .find(|r| r["ref"] == "office")
            .unwrap();
        r.as_object_mut()
            .unwrap()
            .retain(|k, _| k != "id" && k != "version");
        r
    };
    assert_eq!(theirs(), foreign);

    // More keys than the account holds: the top 4 (enforce first, by
    // score) stay; the shadow list shrinks before the enforce list grows.
    let mut more = std::fs::read_to_string(&signals).unwrap();
    for ip in ["192.0.2.10", "192.0.2.11", "192.0.2.12"] {
        let mut s: serde_json::Value = serde_json::from_str(&signal(ip, "ip", "enforce")).unwrap();
        s["score"] = json!(0.99);
        more.push('\n');
        more.push_str(&s.to_string());
    }
    std::fs::write(&signals, more).unwrap();
    let out = run(&args);
    assert!(
        out.contains("2 dropped (capacity 4 across the lists)"),
        "{out}"
    );
    let enforce = cf.items("pii_fraud_enforce").unwrap();
    assert_eq!(enforce.len(), 4, "{enforce:?}");
    assert!(enforce.contains(&"192.0.2.12".to_owned()));
    assert_eq!(cf.items("pii_fraud_shadow").unwrap(), Vec::<String>::new());

    // A capacity beyond the account's: the bulk operation fails, and so does the run.
    let out = waf_sync_fails(
        &bins,
        &with(&["--cloudflare-capacity", "10", "--apply"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &env,
    );
    assert!(
        out.contains("failed") && out.contains("maximum of 4"),
        "{out}"
    );
    assert_eq!(
        cf.items("pii_fraud_enforce").unwrap(),
        enforce,
        "the list kept its items"
    );

    // The allowlist removes an existing block.
    let out = run(&with(&[
        "--cloudflare-capacity",
        "4",
        "--allow",
        "192.0.2.0/24",
        "--apply",
    ]));
    assert!(out.contains("allowlisted 192.0.2.12/32"), "{out}");
    assert!(at("192.0.2.12").is_empty());
    assert_eq!(at("198.51.100.7"), ["block"]);

    // A wrong token: a clear error, nothing written.
    let out = waf_sync_fails(
        &bins,
        &with(&["--apply"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[("CLOUDFLARE_API_TOKEN", "stolen")],
    );
    assert!(out.contains("Authentication error"), "{out}");
    assert!(!out.contains("stolen") && !out.contains(&cf.token), "{out}");
    assert_eq!(cf.rules().len(), 3);
    assert_eq!(theirs(), foreign);

    // A same-named list that someone else made is theirs: refused, kept.
    cf.add_foreign_list("office_enforce", "office VPN exits", &["192.0.2.1"]);
    let out = waf_sync_fails(
        &bins,
        &with(&[
            "--cloudflare-capacity",
            "4",
            "--cloudflare-list-prefix",
            "office",
            "--apply",
        ])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        &env,
    );
    assert!(
        out.contains("office_enforce exists and was not made by waf-sync"),
        "{out}"
    );
    assert_eq!(cf.items("office_enforce").unwrap(), ["192.0.2.1"]);
}
