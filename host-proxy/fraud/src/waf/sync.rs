//! The `waf-sync` command: read signals (a topic or a file), update the
//! sync state, print each target's diff, and with `--apply` write it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::cloudflare::{self, Cloudflare};
use super::nginx::Nginx;
use super::wafv2::{Credentials, WafV2, IP_SET_CAPACITY};
use super::{diff, signals_from_lines, Diff, Room, SyncState, WafError};
use crate::pipeline::Cidr;
use crate::signal::Signal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    Nginx,
    Wafv2,
    Cloudflare,
}

#[derive(Args, Debug)]
pub struct WafSyncArgs {
    /// Read signals from this Kafka topic (its own consumer group; offsets
    /// are committed only after --apply succeeded).
    #[arg(long, conflicts_with = "from_file")]
    pub from_topic: Option<String>,
    /// Read signals from an NDJSON file instead.
    #[arg(long)]
    pub from_file: Option<PathBuf>,
    #[arg(
        long,
        env = "PII_FRAUD_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,
    /// Extra librdkafka setting, KEY=VALUE (repeatable).
    #[arg(long = "kafka-option", value_parser = crate::sink::parse_kv)]
    pub kafka_options: Vec<(String, String)>,
    #[arg(long, default_value = "pii-waf-sync")]
    pub group: String,
    /// The sync's state (blocked keys, strikes, expiries).
    #[arg(
        long,
        env = "PII_WAF_SYNC_STATE",
        default_value = "/var/lib/pii-fraud/waf-sync.json"
    )]
    pub state: PathBuf,
    /// Write the changes (default: print them only).
    #[arg(long)]
    pub apply: bool,
    /// Targets to sync (repeatable).
    #[arg(long = "target", value_enum, required = true)]
    pub targets: Vec<TargetKind>,
    /// Never block these addresses or blocks; existing blocks inside them are removed.
    #[arg(long = "allow")]
    pub allow: Vec<Cidr>,
    /// nginx: the geo map file.
    #[arg(long, default_value = "/etc/nginx/pii-fraud.map")]
    pub nginx_map: PathBuf,
    /// nginx: the command run after the map changed.
    #[arg(long, default_value = "nginx -s reload")]
    pub nginx_reload: String,
    /// nginx: most entries per list.
    #[arg(long, default_value_t = 50_000)]
    pub nginx_capacity: usize,
    /// WAFv2: endpoint override (e.g. a local moto server).
    #[arg(long, env = "PII_WAFV2_ENDPOINT")]
    pub wafv2_endpoint: Option<String>,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    /// WAFv2: REGIONAL or CLOUDFRONT.
    #[arg(long, default_value = "REGIONAL")]
    pub scope: String,
    /// WAFv2: IP sets are named <prefix>-enforce-v4, -enforce-v6, -shadow-v4, -shadow-v6.
    #[arg(long, default_value = "pii-fraud")]
    pub set_prefix: String,
    /// Cloudflare: API endpoint override (e.g. a local emulator).
    #[arg(long, env = "PII_CLOUDFLARE_ENDPOINT")]
    pub cloudflare_endpoint: Option<String>,
    /// Cloudflare: the account that owns the lists (32 hex digits). The
    /// API token comes from CLOUDFLARE_API_TOKEN.
    #[arg(long, env = "CLOUDFLARE_ACCOUNT_ID")]
    pub cloudflare_account: Option<String>,
    /// Cloudflare: the zone whose custom rules reference the lists.
    #[arg(long, env = "CLOUDFLARE_ZONE_ID")]
    pub cloudflare_zone: Option<String>,
    /// Cloudflare: list items across both lists (your plan's account-wide
    /// limit, minus what other lists use).
    #[arg(long, default_value_t = 10_000)]
    pub cloudflare_capacity: usize,
    /// Cloudflare: lists are named <prefix>_enforce and <prefix>_shadow.
    #[arg(long, default_value = "pii_fraud")]
    pub cloudflare_list_prefix: String,
    /// Cloudflare: the shadow rule's action (`log` needs Enterprise), or
    /// `none` for no shadow list and rule.
    #[arg(long, default_value = "log")]
    pub cloudflare_shadow_action: String,
    /// The current time (Unix seconds) instead of the system clock.
    #[arg(long)]
    pub now: Option<i64>,
    /// The whole run, reads and writes, ends within this many seconds (a
    /// run every 5 minutes is over before the next one starts).
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub deadline: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Waf(#[from] WafError),
    #[error("{0}")]
    Input(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("another waf-sync --apply holds {}: runs on one state never overlap", .0.display())]
    Busy(PathBuf),
    #[error("the run did not finish within --deadline {0} s; the state was not saved, and the next run starts from what the targets hold")]
    Deadline(u64),
}

/// Most signal messages and bytes read in one run.
pub const MAX_MESSAGES: usize = 2_000_000;
pub const MAX_TEXT: usize = 512 << 20;

/// Reads the signals on the topic up to its end at the start of the run,
/// or until `until` (half the run's deadline: a flooded topic cannot keep a
/// run from writing and committing what it read).
async fn from_topic(
    a: &WafSyncArgs,
    topic: &str,
    until: tokio::time::Instant,
) -> Result<(Vec<Signal>, usize, rdkafka::consumer::StreamConsumer), SyncError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::Message;
    let c: rdkafka::consumer::StreamConsumer =
        crate::sink::client_config(&a.kafka_brokers, &a.kafka_options)
            .set("group.id", &a.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| SyncError::Kafka(e.to_string()))?;
    c.subscribe(&[topic])
        .map_err(|e| SyncError::Kafka(e.to_string()))?;
    // Read up to the end the partitions had when we started (producers that
    // keep refreshing blocks cannot keep the sync reading forever), within
    // a message and a byte cap; the rest waits for the next run.
    let mut text = String::new();
    let mut n = 0usize;
    let mut ends: Option<std::collections::HashMap<(String, i32), i64>> = None;
    let mut waited = Duration::from_secs(15);
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            println!(
                "waf-sync: reading stopped at half the deadline; the rest waits for the next run"
            );
            break;
        }
        let Ok(m) = tokio::time::timeout(waited.min(left), c.recv()).await else {
            break;
        };
        let m = m.map_err(|e| SyncError::Kafka(e.to_string()))?;
        if let Some(p) = m.payload() {
            text.push_str(&String::from_utf8_lossy(p));
            text.push('\n');
        }
        n += 1;
        waited = Duration::from_secs(3);
        if n >= MAX_MESSAGES || text.len() >= MAX_TEXT {
            break;
        }
        let ends = match &ends {
            Some(e) => e,
            None => {
                let mut e = std::collections::HashMap::new();
                let assigned = c
                    .assignment()
                    .map_err(|e| SyncError::Kafka(e.to_string()))?;
                for el in assigned.elements() {
                    let (_, high) = c
                        .fetch_watermarks(el.topic(), el.partition(), Duration::from_secs(10))
                        .map_err(|e| SyncError::Kafka(e.to_string()))?;
                    e.insert((el.topic().to_owned(), el.partition()), high);
                }
                ends.insert(e)
            }
        };
        let pos = c.position().map_err(|e| SyncError::Kafka(e.to_string()))?;
        let done = pos.elements().iter().all(|el| {
            let end = ends
                .get(&(el.topic().to_owned(), el.partition()))
                .copied()
                .unwrap_or(0);
            match el.offset() {
                rdkafka::Offset::Offset(o) => o >= end,
                _ => end == 0,
            }
        });
        if done {
            break;
        }
    }
    let (signals, bad) = signals_from_lines(&text);
    Ok((signals, bad, c))
}

fn print_diff(target: &str, room: Room, d: &Diff) {
    let capacity = match room {
        Room::PerFamily(n) => format!("{n} per list and address family"),
        Room::PerList(n) => format!("{n} per list"),
        Room::Total(n) => format!("{n} across the lists"),
    };
    println!(
        "{target}: +{} -{} enforce, +{} -{} shadow, {} dropped (capacity {capacity})",
        d.add_enforce.len(),
        d.remove_enforce.len(),
        d.add_shadow.len(),
        d.remove_shadow.len(),
        d.dropped.len()
    );
    for (sign, list, keys) in [
        ("+", "enforce", &d.add_enforce),
        ("-", "enforce", &d.remove_enforce),
        ("+", "shadow", &d.add_shadow),
        ("-", "shadow", &d.remove_shadow),
    ] {
        for k in keys {
            println!("  {sign} {list} {k}");
        }
    }
    for k in &d.dropped {
        println!("  dropped (no room) {k}");
    }
}

async fn sync_cloudflare(a: &WafSyncArgs, state: &SyncState, now: i64) -> Result<(), SyncError> {
    let need = |v: &Option<String>, what: &str| {
        v.clone()
            .ok_or_else(|| SyncError::Input(format!("Cloudflare needs {what}")))
    };
    let token = std::env::var("CLOUDFLARE_API_TOKEN")
        .map_err(|_| SyncError::Input("Cloudflare needs CLOUDFLARE_API_TOKEN".into()))?;
    let shadow = Some(a.cloudflare_shadow_action.clone()).filter(|s| s != "none");
    let c = Cloudflare::new(
        a.cloudflare_endpoint.clone(),
        &need(&a.cloudflare_account, "--cloudflare-account")?,
        &need(&a.cloudflare_zone, "--cloudflare-zone")?,
        token,
        &a.cloudflare_list_prefix,
        shadow,
    )?;
    let shadow_too = c.syncs_shadow();
    let fits = |k: &str| {
        cloudflare::representable(k)
            && (shadow_too
                || state
                    .entries
                    .get(k)
                    .is_some_and(|e| e.mode == crate::rules::Mode::Enforce))
    };
    let room = Room::Total(a.cloudflare_capacity);
    let (want, dropped) = state.desired_where(now, room, fits);
    let d = diff(&c.current(a.cloudflare_capacity).await?, &want, dropped);
    print_diff("cloudflare", room, &d);
    for (k, e) in state.entries.iter().filter(|(_, e)| e.expires_at > now) {
        if !cloudflare::representable(k) {
            println!("  not representable (a Cloudflare list holds IPv6 blocks up to /64) {k}");
        } else if !shadow_too && e.mode != crate::rules::Mode::Enforce {
            println!("  not synced (no shadow list: --cloudflare-shadow-action none) {k}");
        }
    }
    if a.apply {
        // Also without a diff: the rules are checked and repaired.
        let writes = c.apply(&want, a.cloudflare_capacity).await?;
        println!("  {writes} Cloudflare writes");
    }
    Ok(())
}

/// Runs once: with `--apply` under an exclusive lock on `<state>.lock`
/// (released when the process ends, however it ends), and within
/// `--deadline`.
pub async fn run(a: WafSyncArgs) -> Result<(), SyncError> {
    let _lock = match a.apply {
        true => Some(lock(&a.state)?),
        false => None,
    };
    match tokio::time::timeout(Duration::from_secs(a.deadline), run_once(&a)).await {
        Ok(r) => r,
        Err(_) => Err(SyncError::Deadline(a.deadline)),
    }
}

fn lock(state: &Path) -> Result<std::fs::File, SyncError> {
    // The folder's canonical path: two spellings of one state (a symlink,
    // `./`) take the same lock.
    let dir = match state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(dir)
        .map_err(|e| SyncError::Input(format!("{}: {e}", dir.display())))?;
    let name = state
        .file_name()
        .ok_or_else(|| SyncError::Input(format!("{}: not a file name", state.display())))?;
    let mut file = name.to_owned();
    file.push(".lock");
    let p = dir.join(file);
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| SyncError::Input(format!("{}: {e}", p.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(SyncError::Busy(p)),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(SyncError::Input(format!("locking {}: {e}", p.display())))
        }
    }
}

async fn run_once(a: &WafSyncArgs) -> Result<(), SyncError> {
    let now = a
        .now
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp());
    let (signals, bad, consumer) = match (&a.from_topic, &a.from_file) {
        (Some(t), _) => {
            let until = tokio::time::Instant::now() + Duration::from_secs(a.deadline) / 2;
            let (s, b, c) = from_topic(a, t, until).await?;
            (s, b, Some(c))
        }
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| SyncError::Input(format!("{}: {e}", f.display())))?;
            let (s, b) = signals_from_lines(&text);
            (s, b, None)
        }
        (None, None) => {
            return Err(SyncError::Input(
                "--from-topic TOPIC or --from-file FILE".into(),
            ))
        }
    };
    let mut state = SyncState::load(&a.state)?;
    let (mut bad_keys, mut stale) = (0usize, 0usize);
    for s in &signals {
        match state.observe(s, now) {
            Err(super::Refused::BadKey) => bad_keys += 1,
            Err(super::Refused::Stale) => stale += 1,
            Ok(()) | Err(super::Refused::NotForWaf) => {}
        }
    }
    let allowlisted = state.prune(&a.allow, now);
    let live = state
        .entries
        .values()
        .filter(|e| e.expires_at > now)
        .count();
    println!(
        "waf-sync: {} signals read ({bad} unreadable, {bad_keys} refused keys, {stale} stale), {live} live blocks, {} removed by the allowlist",
        signals.len(),
        allowlisted.len()
    );
    for k in &allowlisted {
        println!("  allowlisted {k}");
    }
    for t in &a.targets {
        match t {
            TargetKind::Nginx => {
                let reload: Vec<String> = a
                    .nginx_reload
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                let n = Nginx {
                    map: a.nginx_map.clone(),
                    reload,
                    capacity: a.nginx_capacity,
                };
                let room = Room::PerList(n.capacity);
                let (want, dropped) = state.desired(now, room);
                let d = diff(&n.current()?, &want, dropped);
                let name = format!("nginx {}", n.map.display());
                print_diff(&name, room, &d);
                // A reload that failed last time is retried even without a diff.
                if a.apply && (!d.is_empty() || state.pending.contains(&name)) {
                    state.pending.insert(name.clone());
                    state.save(&a.state)?;
                    n.apply(&want)?;
                    state.pending.remove(&name);
                }
            }
            TargetKind::Wafv2 => {
                let creds = Credentials::from_env().ok_or_else(|| {
                    SyncError::Input(
                        "WAFv2 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                    )
                })?;
                let mut w = WafV2::new(
                    a.wafv2_endpoint.clone(),
                    &a.region,
                    &a.scope,
                    &a.set_prefix,
                    creds,
                )?;
                // Each set holds one address family; the capacity is per set.
                let room = Room::PerFamily(IP_SET_CAPACITY);
                let (want, dropped) = state.desired(now, room);
                let d = diff(&w.current().await?, &want, dropped);
                print_diff(&format!("wafv2 {} {}", a.region, a.scope), room, &d);
                if a.apply && !d.is_empty() {
                    let writes = w.apply(&want).await?;
                    println!("  {writes} IP set writes");
                }
            }
            TargetKind::Cloudflare => sync_cloudflare(a, &state, now).await?,
        }
    }
    if a.apply {
        state.save(&a.state)?;
        if let Some(c) = consumer {
            use rdkafka::consumer::Consumer;
            c.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
                .map_err(|e| SyncError::Kafka(e.to_string()))?;
        }
    } else {
        println!("dry run: nothing written (pass --apply)");
    }
    Ok(())
}
