//! `waf-sync`: signals in, block lists out.
//!
//! The sync keeps its own state (a JSON file): every key it has blocked,
//! with its mode, score, last evidence and expiry. A key blocked again after
//! its block expired gets a longer block (15 min, 1 h, 4 h, 16 h, then
//! 24 h), each with a deterministic ±10 % jitter so expiries do not line up
//! and a rerun computes the same lists. Allowlist entries win: they remove
//! a key, and any block already on a target. Each target has a capacity
//! (10,000 addresses per AWS WAFv2 IP set, a Cloudflare list's item limit,
//! whatever an nginx map should hold); when more keys want a place than
//! there is room, they are ranked by mode (enforce first), score and recency,
//! the top N kept, and the rest reported as dropped. The diff against what
//! the target holds now is printed; `--apply` writes it.
//!
//! Only address and subnet keys go to a WAF: a subject token is enforced by
//! the application, not at the edge.

pub mod cloudflare;
pub mod http;
pub mod nginx;
pub mod sync;
pub mod wafv2;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pipeline::Cidr;

/// The temporary file a write goes through: beside `path`, named after it
/// in full (never another file's `.tmp`).
pub(crate) fn tmp_beside(path: &Path) -> PathBuf {
    let mut t = path.as_os_str().to_owned();
    t.push(".waf-sync.tmp");
    PathBuf::from(t)
}

/// How the description of every list, set and rule waf-sync makes
/// begins: a same-named one without it belongs to someone else and is
/// never written.
pub const OWNER_MARK: &str = "Managed by waf-sync (pii-fraud)";
use crate::rules::{Action, KeyType, Mode};
use crate::signal::Signal;
use crate::state::fnv1a;

/// First block, and the cap.
pub const BASE_TTL_S: i64 = 15 * 60;
pub const MAX_TTL_S: i64 = 24 * 3600;
/// Expired entries are remembered this long, for escalation.
pub const MEMORY_S: i64 = 7 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum WafError {
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not valid: {source}")]
    StateFormat {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{target}: {message}")]
    Target { target: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key_type: KeyType,
    pub mode: Mode,
    pub score: f64,
    pub reasons: Vec<String>,
    /// Unix seconds.
    pub last_seen: i64,
    pub expires_at: i64,
    /// Blocks so far (1 for the first).
    pub strikes: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    pub entries: BTreeMap<String, Entry>,
    /// Targets whose last write did not finish (an nginx reload that
    /// failed): the next run writes them again even without a diff.
    #[serde(default)]
    pub pending: BTreeSet<String>,
    /// Signals refused since the state was made (bad keys, stale evidence).
    #[serde(default)]
    pub refused: u64,
}

/// Why a signal did not become a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a block of an address or subnet (nothing for a WAF).
    NotForWaf,
    /// The key is not one address, or not an exact /24 (IPv4) or /64 (IPv6).
    BadKey,
    /// Its evidence is older than the block it would get.
    Stale,
}

/// The canonical WAF entry for a signal key: one address (`/32`, `/128`)
/// or exactly the subnet the pipeline makes (`/24`, `/64`, host bits zero).
/// Anything else — `0.0.0.0/0`, `default`, text with `;` or a newline — is
/// refused, so a hostile producer on the topic cannot widen a block or
/// write syntax into a target.
pub fn canonical_key(key_type: KeyType, key: &str) -> Option<String> {
    match key_type {
        KeyType::Ip => match key.parse::<IpAddr>().ok()?.to_canonical() {
            IpAddr::V4(a) => Some(format!("{a}/32")),
            IpAddr::V6(a) => Some(format!("{a}/128")),
        },
        KeyType::Subnet => {
            let (addr, prefix) = key.split_once('/')?;
            let ip: IpAddr = addr.parse().ok()?;
            let ok = match (ip, prefix) {
                (IpAddr::V4(a), "24") => a.octets()[3] == 0,
                (IpAddr::V6(a), "64") => a.segments()[4..].iter().all(|&s| s == 0),
                _ => false,
            };
            ok.then(|| format!("{ip}/{prefix}"))
        }
        KeyType::Subject | KeyType::IpSubject => None,
    }
}

/// Whether a state entry's key is exactly what [`canonical_key`] makes.
fn is_canonical_entry(key_type: KeyType, entry: &str) -> bool {
    let source = match key_type {
        KeyType::Ip => entry.rsplit_once('/').map_or(entry, |(a, _)| a),
        _ => entry,
    };
    canonical_key(key_type, source).as_deref() == Some(entry)
}

/// The lists a target should hold (and, read back, holds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lists {
    pub enforce: BTreeSet<String>,
    pub shadow: BTreeSet<String>,
}

/// What one target's sync would change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub add_enforce: Vec<String>,
    pub remove_enforce: Vec<String>,
    pub add_shadow: Vec<String>,
    pub remove_shadow: Vec<String>,
    /// Keys that wanted a place beyond the target's capacity.
    pub dropped: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.add_enforce.is_empty()
            && self.remove_enforce.is_empty()
            && self.add_shadow.is_empty()
            && self.remove_shadow.is_empty()
    }
}

/// The TTL of a block with this many strikes, jittered per key.
pub fn ttl_s(key: &str, strikes: u32) -> i64 {
    let base = BASE_TTL_S
        .saturating_mul(4_i64.saturating_pow(strikes.saturating_sub(1).min(8)))
        .min(MAX_TTL_S);
    let h = fnv1a(format!("{key}/{strikes}").as_bytes());
    // ±10 %: h mod 2001 - 1000 in tenths of a percent.
    let jitter = (h % 2001) as i64 - 1000;
    base + base * jitter / 10_000
}

impl SyncState {
    pub fn load(path: &Path) -> Result<Self, WafError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| WafError::StateFormat {
                path: path.to_owned(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SyncState::default()),
            Err(source) => Err(WafError::State {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), WafError> {
        let err = |source| WafError::State {
            path: path.to_owned(),
            source,
        };
        let tmp = tmp_beside(path);
        let body = serde_json::to_vec_pretty(self).map_err(|e| err(e.into()))?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&body)
                .and_then(|()| f.sync_all())
                .map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Takes one signal in. Only blocks of addresses and subnets matter;
    /// the block runs from the evidence (`last_seen`, never later than now),
    /// so an old signal read again does not block anyone afresh.
    pub fn observe(&mut self, s: &Signal, now: i64) -> Result<(), Refused> {
        let d = &s.decision;
        if d.action != Action::Block
            || d.mode == Mode::Off
            || !matches!(d.key_type, KeyType::Ip | KeyType::Subnet)
        {
            return Err(Refused::NotForWaf);
        }
        let Some(key) = canonical_key(d.key_type, &d.key) else {
            self.refused += 1;
            return Err(Refused::BadKey);
        };
        let rfc3339 = &time::format_description::well_known::Rfc3339;
        let last_seen = time::OffsetDateTime::parse(&s.last_seen, rfc3339)
            .map(|t| t.unix_timestamp())
            .unwrap_or(now)
            .min(now);
        let strikes = match self.entries.get(&key) {
            Some(e) if e.expires_at > now => e.strikes,
            Some(e) => e.strikes.saturating_add(1),
            None => 1,
        };
        if last_seen + ttl_s(&key, strikes) <= now {
            self.refused += 1;
            return Err(Refused::Stale);
        }
        let e = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            key_type: d.key_type,
            mode: d.mode,
            score: 0.0,
            reasons: Vec::new(),
            last_seen,
            expires_at: i64::MIN,
            strikes: 0,
        });
        if e.expires_at <= now {
            // A new block (first, or after the last one expired): escalate.
            e.mode = d.mode;
        } else if d.mode == Mode::Enforce {
            // Shadow → enforce when an enforcing rule fires; never back.
            e.mode = Mode::Enforce;
        }
        e.strikes = strikes;
        e.score = if d.score.is_finite() {
            d.score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        e.reasons = d
            .reasons
            .iter()
            .take(16)
            .map(|r| r.chars().take(64).collect())
            .collect();
        e.last_seen = e.last_seen.max(last_seen);
        e.expires_at = e.expires_at.max(last_seen + ttl_s(&key, e.strikes));
        Ok(())
    }

    /// Removes allowlisted keys and forgets entries expired long ago.
    pub fn prune(&mut self, allow: &[Cidr], now: i64) -> Vec<String> {
        let mut removed = Vec::new();
        self.entries.retain(|k, e| {
            if allowed(k, allow) {
                removed.push(k.clone());
                return false;
            }
            e.expires_at + MEMORY_S > now
        });
        removed
    }

    /// The lists for a target with this much room, ranked.
    pub fn desired(&self, now: i64, room: Room) -> (Lists, Vec<String>) {
        self.desired_where(now, room, |_| true)
    }

    /// As [`SyncState::desired`], over the live keys `fits` accepts (the
    /// rest take no room and are the caller's to report).
    pub fn desired_where(
        &self,
        now: i64,
        room: Room,
        fits: impl Fn(&str) -> bool,
    ) -> (Lists, Vec<String>) {
        let mut live: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            // A key the state file holds in any other form than the
            // canonical one (a file edited by hand: `10.0.0.0/8`) is never
            // written to a target.
            .filter(|(k, e)| e.expires_at > now && is_canonical_entry(e.key_type, k) && fits(k))
            .collect();
        live.sort_by(|a, b| {
            (b.1.mode == Mode::Enforce)
                .cmp(&(a.1.mode == Mode::Enforce))
                .then(b.1.score.total_cmp(&a.1.score))
                .then(b.1.last_seen.cmp(&a.1.last_seen))
                .then(a.0.cmp(b.0))
        });
        let mut lists = Lists::default();
        let mut dropped = Vec::new();
        let mut used = [[0usize; 2]; 2];
        for (k, e) in live {
            let enforce = e.mode == Mode::Enforce;
            let family = usize::from(k.contains(':'));
            let (slot, capacity) = match room {
                Room::PerFamily(n) => (&mut used[usize::from(!enforce)][family], n),
                Room::PerList(n) => (&mut used[usize::from(!enforce)][0], n),
                Room::Total(n) => (&mut used[0][0], n),
            };
            if *slot < capacity {
                *slot += 1;
                if enforce {
                    lists.enforce.insert(k.clone());
                } else {
                    lists.shadow.insert(k.clone());
                }
            } else {
                dropped.push(k.clone());
            }
        }
        (lists, dropped)
    }
}

/// How much a target holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Per list and address family (WAFv2 keeps IPv4 and IPv6 in separate
    /// sets of 10,000 each).
    PerFamily(usize),
    /// Per list (an nginx map).
    PerList(usize),
    /// Across both lists (a Cloudflare account's list item limit).
    Total(usize),
}

/// Entries are canonical CIDR text; one that does not parse (a state file
/// edited by hand) is treated as allowlisted, i.e. removed.
fn allowed(key: &str, allow: &[Cidr]) -> bool {
    let Ok(c) = key.parse::<Cidr>() else {
        return true;
    };
    allow.iter().any(|a| a.overlaps(&c))
}

pub fn diff(current: &Lists, desired: &Lists, dropped: Vec<String>) -> Diff {
    let minus =
        |a: &BTreeSet<String>, b: &BTreeSet<String>| a.difference(b).cloned().collect::<Vec<_>>();
    Diff {
        add_enforce: minus(&desired.enforce, &current.enforce),
        remove_enforce: minus(&current.enforce, &desired.enforce),
        add_shadow: minus(&desired.shadow, &current.shadow),
        remove_shadow: minus(&current.shadow, &desired.shadow),
        dropped,
    }
}

/// Reads signal lines (NDJSON); bad lines are counted, not fatal.
pub fn signals_from_lines(text: &str) -> (Vec<Signal>, usize) {
    let mut bad = 0;
    let mut out = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Signal>(l) {
            Ok(s) if s.schema == crate::signal::SCHEMA => out.push(s),
            _ => bad += 1,
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::DecisionLine;

    fn sig(key: &str, kt: KeyType, mode: Mode, score: f64) -> Signal {
        Signal {
            schema: crate::signal::SCHEMA.into(),
            decision: DecisionLine {
                key_type: kt,
                key: key.into(),
                score,
                action: Action::Block,
                mode,
                reasons: vec!["r".into()],
            },
            window_s: 900,
            first_seen: "2026-12-01T00:00:00Z".into(),
            last_seen: "2026-12-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn ttls_escalate_with_bounded_jitter() {
        let t: Vec<i64> = (1..=6).map(|s| ttl_s("203.0.113.9", s)).collect();
        for (i, want) in [900, 3600, 14_400, 57_600, 86_400, 86_400]
            .iter()
            .enumerate()
        {
            assert!(
                (t[i] - want).abs() <= want / 10,
                "strike {}: {} vs {want}",
                i + 1,
                t[i]
            );
        }
        assert_eq!(
            ttl_s("203.0.113.9", 2),
            ttl_s("203.0.113.9", 2),
            "deterministic"
        );
        assert_ne!(
            ttl_s("203.0.113.9", 1),
            ttl_s("203.0.113.10", 1),
            "jittered per key"
        );
    }

    #[test]
    fn a_repeat_offender_gets_a_longer_block_and_shadow_promotes_to_enforce() {
        let mut s = SyncState::default();
        let _ = s.observe(&sig("198.51.100.7", KeyType::Ip, Mode::Shadow, 0.95), 0);
        assert_eq!(s.entries["198.51.100.7/32"].mode, Mode::Shadow);
        let _ = s.observe(&sig("198.51.100.7", KeyType::Ip, Mode::Enforce, 0.97), 60);
        let e = &s.entries["198.51.100.7/32"];
        assert_eq!((e.mode, e.strikes), (Mode::Enforce, 1));
        let first = e.expires_at;
        // After expiry, the next block is a second strike, about 4x longer.
        let later = first + 10;
        let _ = s.observe(
            &sig("198.51.100.7", KeyType::Ip, Mode::Enforce, 0.97),
            later,
        );
        let e = &s.entries["198.51.100.7/32"];
        assert_eq!(e.strikes, 2);
        assert!(e.expires_at - later > 3000);
    }

    #[test]
    fn capacity_ranks_by_mode_score_and_recency_and_reports_the_rest() {
        let mut s = SyncState::default();
        for i in 0..10 {
            let _ = s.observe(
                &sig(
                    &format!("192.0.2.{i}"),
                    KeyType::Ip,
                    Mode::Enforce,
                    0.9 + f64::from(i) / 100.0,
                ),
                0,
            );
        }
        let _ = s.observe(
            &sig("203.0.113.0/24", KeyType::Subnet, Mode::Shadow, 0.99),
            0,
        );
        let _ = s.observe(&sig("tok_abc", KeyType::Subject, Mode::Enforce, 0.99), 0);
        let (lists, dropped) = s.desired(1, Room::PerFamily(4));
        assert_eq!(lists.enforce.len(), 4);
        assert!(lists.enforce.contains("192.0.2.9/32") && lists.enforce.contains("192.0.2.6/32"));
        assert_eq!(dropped.len(), 6);
        assert_eq!(lists.shadow, BTreeSet::from(["203.0.113.0/24".to_owned()]));
        assert!(
            !s.entries.contains_key("tok_abc"),
            "subject keys are not WAF entries"
        );
    }

    #[test]
    fn room_is_counted_per_family_per_list_or_across_lists() {
        let mut s = SyncState::default();
        for k in ["192.0.2.1", "192.0.2.2", "2001:db8::1"] {
            let _ = s.observe(&sig(k, KeyType::Ip, Mode::Enforce, 0.95), 0);
        }
        let _ = s.observe(&sig("192.0.2.3", KeyType::Ip, Mode::Shadow, 0.99), 0);
        let kept = |room| {
            let (l, dropped) = s.desired(1, room);
            (l.enforce.len(), l.shadow.len(), dropped.len())
        };
        assert_eq!(kept(Room::PerFamily(1)), (2, 1, 1));
        assert_eq!(kept(Room::PerList(2)), (2, 1, 1));
        // Across the lists, enforce ranks first: the shadow key loses its place.
        assert_eq!(kept(Room::Total(3)), (3, 0, 1));
        let (l, _) = s.desired_where(1, Room::Total(10), |k| !k.ends_with("/128"));
        assert!(!l.enforce.contains("2001:db8::1/128"));
    }

    #[test]
    fn a_hand_edited_state_never_widens_a_block() {
        let mut s = SyncState::default();
        let _ = s.observe(&sig("192.0.2.1", KeyType::Ip, Mode::Enforce, 0.95), 0);
        let e = s.entries["192.0.2.1/32"].clone();
        for wide in ["10.0.0.0/8", "0.0.0.0/0", " 192.0.2.9/32", "192.0.2.1/24"] {
            s.entries.insert(wide.to_owned(), e.clone());
        }
        let mut sub = e.clone();
        sub.key_type = KeyType::Subnet;
        s.entries.insert("198.51.100.0/24".to_owned(), sub.clone());
        s.entries.insert("198.51.0.0/16".to_owned(), sub);
        let (l, _) = s.desired(1, Room::PerList(100));
        assert_eq!(
            l.enforce,
            BTreeSet::from(["192.0.2.1/32".to_owned(), "198.51.100.0/24".to_owned()])
        );
    }

    #[test]
    fn allowlist_entries_remove_existing_blocks() {
        let mut s = SyncState::default();
        let _ = s.observe(&sig("198.51.100.7", KeyType::Ip, Mode::Enforce, 0.95), 0);
        let _ = s.observe(
            &sig("198.51.100.0/24", KeyType::Subnet, Mode::Enforce, 0.95),
            0,
        );
        let _ = s.observe(&sig("192.0.2.1", KeyType::Ip, Mode::Enforce, 0.95), 0);
        let removed = s.prune(&["198.51.100.128/25".parse().expect("cidr")], 1);
        assert_eq!(removed, vec!["198.51.100.0/24".to_owned()]);
        let removed = s.prune(&["198.51.100.7".parse().expect("cidr")], 1);
        assert_eq!(removed, vec!["198.51.100.7/32".to_owned()]);
        let current = Lists {
            enforce: BTreeSet::from(["198.51.100.7/32".to_owned(), "192.0.2.1/32".to_owned()]),
            shadow: BTreeSet::new(),
        };
        let (want, dropped) = s.desired(1, Room::PerList(100));
        let d = diff(&current, &want, dropped);
        assert_eq!(d.remove_enforce, vec!["198.51.100.7/32".to_owned()]);
        assert!(d.add_enforce.is_empty());
        // The same state gives the same diff: idempotent.
        assert_eq!(
            diff(&want, &s.desired(1, Room::PerList(100)).0, vec![]),
            Diff::default()
        );
    }
}
