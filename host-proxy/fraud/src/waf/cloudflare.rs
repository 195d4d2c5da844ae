//! The Cloudflare target: account-level IP Lists (`<prefix>_enforce`,
//! `<prefix>_shadow`) and, in a zone's `http_request_firewall_custom` phase
//! entry point ruleset, one custom rule per list through the Rulesets API
//! (`ip.src in $<prefix>_enforce` → `block`; the shadow list → `log`, or no
//! rule). Not the retired Firewall Rules API.
//!
//! What the API documents and this target keeps to:
//! - a list's items are replaced in one asynchronous bulk operation (`PUT
//!   …/items` → `operation_id`), and an account has at most one pending bulk
//!   operation: each one is awaited (`…/bulk_operations/{id}`) before the
//!   next starts, and a `failed` one is an error;
//! - items are IPv4 addresses or IPv4 CIDRs /8–/32, IPv6 CIDRs /4–/64: a
//!   single IPv6 address (`/128`) is not representable and is reported, never
//!   widened to its /64 behind the operator's back;
//! - an account's plan caps list items across all its lists (10,000 on most
//!   plans): `--cloudflare-capacity` is counted across both lists;
//! - the API's rate limit (1,200 requests per 5 minutes per user) answers
//!   429 with `Retry-After`, which is honoured (at most 60 s, 5 times);
//! - only our own rules (found by their `ref`) are created or updated: the
//!   zone's other custom rules are never touched.
//!
//! Authentication is an API token (`CLOUDFLARE_API_TOKEN`) with *Account
//! Filter Lists Edit* and *Zone WAF Edit*.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};

use super::{http, Lists, WafError, OWNER_MARK};

pub const API: &str = "https://api.cloudflare.com/client/v4";
/// The description of the lists we make (compared exactly).
const LIST_DESCRIPTION: &str = "Managed by waf-sync (pii-fraud); edits are overwritten";
/// The phase whose entry point ruleset holds custom rules.
pub const PHASE: &str = "http_request_firewall_custom";
/// Items per page when reading a list (the API's maximum).
const PER_PAGE: usize = 500;
/// Most pages read from one list (a hostile endpoint cannot loop us).
const MAX_PAGES: usize = 2_000;
/// Longest wait for one bulk operation.
const OPERATION_DEADLINE: Duration = Duration::from_secs(300);

pub struct Cloudflare {
    http: http::Client,
    endpoint: String,
    account: String,
    zone: String,
    token: String,
    /// Lists are named `<prefix>_enforce` and `<prefix>_shadow`.
    prefix: String,
    /// The shadow rule's action (`log` is an Enterprise feature); None: no
    /// shadow list and no shadow rule.
    shadow_action: Option<String>,
}

/// One of our two lists.
#[derive(Debug, Clone)]
struct List {
    id: String,
    items: Vec<String>,
}

/// Whether a canonical WAF key fits in a Cloudflare IP list.
pub fn representable(key: &str) -> bool {
    !key.ends_with("/128")
}

/// A cursor as a query value (RFC 3986 unreserved characters as they are).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A list item for a canonical key: IPv4 addresses without their `/32`.
fn item(key: &str) -> &str {
    key.strip_suffix("/32").unwrap_or(key)
}

/// The canonical key for an item read back (`192.0.2.1` → `192.0.2.1/32`);
/// None for anything that is not an address or a CIDR (a hostile answer
/// cannot put text into the printed diff).
fn key(item: &str) -> Option<String> {
    item.parse::<crate::pipeline::Cidr>()
        .ok()
        .map(|c| c.to_string())
}

impl Cloudflare {
    /// `prefix`: lowercase letters, digits and underscores (Cloudflare's
    /// rule for list names), at most 40 characters.
    pub fn new(
        endpoint: Option<String>,
        account: &str,
        zone: &str,
        token: String,
        prefix: &str,
        shadow_action: Option<String>,
    ) -> Result<Self, WafError> {
        let target = "cloudflare";
        let bad = |message: String| WafError::Target {
            target: target.into(),
            message,
        };
        let name_ok = !prefix.is_empty()
            && prefix.len() <= 40
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(bad(format!(
                "list prefix {prefix:?}: lowercase letters, digits and _ only, at most 40"
            )));
        }
        // Account and zone ids are 32 hex digits; nothing else goes into a path.
        for (what, id) in [("account", account), ("zone", zone)] {
            if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("{what} id {id:?}: 32 hex digits")));
            }
        }
        if let Some(a) = &shadow_action {
            if !["log", "managed_challenge", "js_challenge", "challenge"].contains(&a.as_str()) {
                return Err(bad(format!(
                    "shadow action {a:?}: log, managed_challenge, js_challenge or challenge"
                )));
            }
        }
        let endpoint = endpoint.unwrap_or_else(|| API.to_owned());
        Ok(Cloudflare {
            http: http::client(target, &endpoint)?,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            account: account.to_owned(),
            zone: zone.to_owned(),
            token,
            prefix: prefix.to_owned(),
            shadow_action,
        })
    }

    fn err(&self, message: String) -> WafError {
        WafError::Target {
            target: format!("cloudflare {}", self.endpoint),
            message,
        }
    }

    pub fn list_name(&self, enforce: bool) -> String {
        format!(
            "{}_{}",
            self.prefix,
            if enforce { "enforce" } else { "shadow" }
        )
    }

    /// Whether shadow blocks go to Cloudflare at all.
    pub fn syncs_shadow(&self) -> bool {
        self.shadow_action.is_some()
    }

    /// One API call: the answer's envelope (`result`, `result_info`), or
    /// the API's own error codes and messages. 404 is `Ok(None)`.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, WafError> {
        let url = format!("{}{path}", self.endpoint);
        let what = format!("{method} {path}");
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let req = hyper::Request::builder()
                .method(method)
                .uri(&url)
                .header("authorization", format!("Bearer {}", self.token))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(payload.clone())))
                .map_err(|e| self.err(format!("{what}: {e}")))?;
            let (status, headers, bytes) = http::send(
                &self.http,
                &format!("cloudflare {}", self.endpoint),
                &what,
                req,
            )
            .await?;
            if status == hyper::StatusCode::TOO_MANY_REQUESTS && attempt <= 5 {
                let wait = headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1)
                    .clamp(1, 60);
                tracing::warn!(wait_s = wait, "cloudflare rate limit; waiting");
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == hyper::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() || v["success"] != json!(true) {
                let errors: Vec<String> = v["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(5)
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["code"].as_u64().unwrap_or(0),
                            e["message"]
                                .as_str()
                                .unwrap_or("")
                                .chars()
                                .take(200)
                                .collect::<String>()
                        )
                    })
                    .collect();
                return Err(self.err(format!("{what}: HTTP {status} {}", errors.join("; "))));
            }
            return Ok(Some(v));
        }
    }

    async fn call_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, WafError> {
        self.call(method, path, body)
            .await?
            .ok_or_else(|| self.err(format!("{method} {path}: HTTP 404")))
    }

    /// Our lists (created when missing), with their items.
    async fn lists(&self, create: bool, room: usize) -> Result<[Option<List>; 2], WafError> {
        let base = format!("/accounts/{}/rules/lists", self.account);
        let v = self.call_ok("GET", &base, None).await?;
        let all = v["result"].as_array().cloned().unwrap_or_default();
        let mut out = [None, None];
        for (slot, enforce) in out.iter_mut().zip([true, false]) {
            if !enforce && !self.syncs_shadow() {
                continue;
            }
            let name = self.list_name(enforce);
            let found = all.iter().find(|l| l["name"] == json!(name));
            let id = match found {
                Some(l) if l["kind"] != json!("ip") => {
                    return Err(self.err(format!("list {name} exists but is not an IP list")))
                }
                // A list of that name that someone else made is theirs: its
                // items are never replaced by ours.
                Some(l) if l["description"] != json!(LIST_DESCRIPTION) => {
                    return Err(self.err(format!(
                        "list {name} exists and was not made by waf-sync (its description is not {LIST_DESCRIPTION:?}): pick another --cloudflare-list-prefix, or hand the list over by setting that description"
                    )))
                }
                Some(l) => l["id"].as_str().unwrap_or_default().to_owned(),
                None if create => {
                    let body = json!({"name": name, "kind": "ip",
                        "description": LIST_DESCRIPTION});
                    let v = self.call_ok("POST", &base, Some(&body)).await?;
                    v["result"]["id"]
                        .as_str()
                        .ok_or_else(|| self.err(format!("creating list {name}: no id")))?
                        .to_owned()
                }
                None => continue,
            };
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(self.err(format!("list {name}: unusable id {id:?}")));
            }
            let items = self.items(&id, room).await?;
            *slot = Some(List { id, items });
        }
        Ok(out)
    }

    /// A list's items, at most `room` (plus a page): more is an error, as
    /// is a page larger than asked for or a cursor seen before.
    async fn items(&self, id: &str, room: usize) -> Result<Vec<String>, WafError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let mut path = format!(
                "/accounts/{}/rules/lists/{id}/items?per_page={PER_PAGE}",
                self.account
            );
            if let Some(c) = &cursor {
                path.push_str("&cursor=");
                path.push_str(&percent_encode(c));
            }
            let v = self.call_ok("GET", &path, None).await?;
            let page = v["result"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            if page.len() > PER_PAGE {
                return Err(self.err(format!("list {id}: a page of {} items", page.len())));
            }
            for it in page {
                match it["ip"].as_str().and_then(key) {
                    Some(k) => out.push(k),
                    None => {
                        tracing::warn!(list = id, "an item that is not an address or CIDR; ignored")
                    }
                }
            }
            if out.len() > room.saturating_add(PER_PAGE) {
                return Err(self.err(format!("list {id}: more than {room} items")));
            }
            match v["result_info"]["cursors"]["after"].as_str() {
                Some(c) if !c.is_empty() && c.len() <= 1024 => {
                    if !seen.insert(c.to_owned()) {
                        return Err(self.err(format!("list {id}: a cursor repeated")));
                    }
                    cursor = Some(c.to_owned());
                }
                Some(c) if !c.is_empty() => {
                    return Err(self.err(format!("list {id}: a cursor of {} bytes", c.len())))
                }
                _ => return Ok(out),
            }
        }
        Err(self.err(format!("list {id}: more than {MAX_PAGES} pages")))
    }

    /// What our lists hold (`room`: the capacity; a list may hold at
    /// most that much more, or reading it is an error).
    pub async fn current(&self, room: usize) -> Result<Lists, WafError> {
        let lists = self.lists(false, room).await?;
        let mut out = Lists::default();
        if let Some(l) = &lists[0] {
            out.enforce.extend(l.items.iter().cloned());
        }
        if let Some(l) = &lists[1] {
            out.shadow.extend(l.items.iter().cloned());
        }
        Ok(out)
    }

    /// Replaces one list's items and waits for the bulk operation.
    async fn replace(&self, list: &List, keys: &[String]) -> Result<(), WafError> {
        let body = Value::Array(
            keys.iter()
                .map(|k| json!({"ip": item(k), "comment": "pii-fraud"}))
                .collect(),
        );
        let path = format!("/accounts/{}/rules/lists/{}/items", self.account, list.id);
        let v = self.call_ok("PUT", &path, Some(&body)).await?;
        let op = v["result"]["operation_id"]
            .as_str()
            .ok_or_else(|| self.err(format!("PUT {path}: no operation_id")))?
            .to_owned();
        if !op.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(self.err(format!("PUT {path}: unusable operation id")));
        }
        let status_path = format!(
            "/accounts/{}/rules/lists/bulk_operations/{op}",
            self.account
        );
        let t0 = std::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let v = self.call_ok("GET", &status_path, None).await?;
            match v["result"]["status"].as_str() {
                Some("completed") => return Ok(()),
                Some("failed") => {
                    let why: String = v["result"]["error"]
                        .as_str()
                        .unwrap_or("no reason given")
                        .chars()
                        .take(200)
                        .collect();
                    return Err(self.err(format!("bulk operation {op} failed: {why}")));
                }
                Some("pending" | "running") => {}
                other => {
                    let other: Option<String> = other.map(|o| o.chars().take(40).collect());
                    return Err(self.err(format!("bulk operation {op}: status {other:?}")));
                }
            }
            if t0.elapsed() > OPERATION_DEADLINE {
                return Err(self.err(format!("bulk operation {op}: not done in 300 s")));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// The rules we own, as the API takes them.
    fn rules(&self) -> Vec<Value> {
        let mut rules = vec![json!({
            "ref": format!("{}_enforce", self.prefix),
            "description": format!("{OWNER_MARK}: enforced blocks"),
            "expression": format!("ip.src in ${}", self.list_name(true)),
            "action": "block",
            "enabled": true,
        })];
        if let Some(a) = &self.shadow_action {
            rules.push(json!({
                "ref": format!("{}_shadow", self.prefix),
                "description": format!("{OWNER_MARK}: shadow blocks (not blocked)"),
                "expression": format!("ip.src in ${}", self.list_name(false)),
                "action": a,
                "enabled": true,
            }));
        }
        rules
    }

    /// Makes the zone's custom rules reference our lists; returns the writes.
    async fn ensure_rules(&self) -> Result<usize, WafError> {
        let path = format!("/zones/{}/rulesets/phases/{PHASE}/entrypoint", self.zone);
        let want = self.rules();
        let Some(v) = self.call("GET", &path, None).await? else {
            // No entry point yet. Created with "Create a zone ruleset",
            // which fails if one exists by then (someone else made it
            // meanwhile), never with the entry point PUT, which would
            // replace whatever rules it holds.
            let body = json!({"name": "default", "kind": "zone", "phase": PHASE, "rules": want});
            self.call_ok(
                "POST",
                &format!("/zones/{}/rulesets", self.zone),
                Some(&body),
            )
            .await?;
            return Ok(1);
        };
        let ruleset = &v["result"];
        let id = ruleset["id"].as_str().unwrap_or_default();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(self.err(format!("{path}: unusable ruleset id")));
        }
        let have = ruleset["rules"].as_array().cloned().unwrap_or_default();
        let mut writes = 0;
        let mut want = want;
        if self.shadow_action.is_none() {
            // Shadow turned off after a run with it: our old shadow rule is
            // disabled, not left acting on a list nobody updates.
            let shadow_ref = json!(format!("{}_shadow", self.prefix));
            if let Some(old) = have.iter().find(|r| r["ref"] == shadow_ref) {
                if old["enabled"] != json!(false) {
                    let mut off = old.clone();
                    off["enabled"] = json!(false);
                    want.push(off);
                }
            }
        }
        // A rule with our ref that someone else wrote is theirs.
        let ours = |r: &Value| {
            r["description"].as_str().is_some_and(|d| {
                d.starts_with(&format!("{OWNER_MARK}: ")) || d.starts_with("waf-sync (pii-fraud): ")
            })
        };
        for rule in want {
            let found = have.iter().find(|r| r["ref"] == rule["ref"]);
            if let Some(r) = found.filter(|r| !ours(r)) {
                return Err(self.err(format!(
                    "rule {} exists and was not made by waf-sync (its description does not start with {OWNER_MARK:?}): pick another --cloudflare-list-prefix",
                    r["ref"]
                )));
            }
            let same = |r: &Value| {
                ["expression", "action", "enabled"]
                    .iter()
                    .all(|f| r[*f] == rule[*f])
            };
            match found {
                Some(r) if same(r) => {}
                Some(r) => {
                    let rid = r["id"].as_str().unwrap_or_default();
                    if rid.is_empty() || !rid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return Err(self.err(format!("{path}: unusable rule id")));
                    }
                    let p = format!("/zones/{}/rulesets/{id}/rules/{rid}", self.zone);
                    self.call_ok("PATCH", &p, Some(&rule)).await?;
                    writes += 1;
                }
                None => {
                    let p = format!("/zones/{}/rulesets/{id}/rules", self.zone);
                    self.call_ok("POST", &p, Some(&rule)).await?;
                    writes += 1;
                }
            }
        }
        Ok(writes)
    }

    /// Writes each list whose items differ, then the rules; returns the
    /// writes (bulk operations plus rule changes).
    pub async fn apply(&self, want: &Lists, room: usize) -> Result<usize, WafError> {
        let lists = self.lists(true, room).await?;
        let mut changes = Vec::new();
        for (list, keys) in lists.iter().zip([&want.enforce, &want.shadow]) {
            let Some(list) = list else { continue };
            let keys: Vec<String> = keys.iter().filter(|k| representable(k)).cloned().collect();
            let mut have = list.items.clone();
            have.sort();
            let mut sorted = keys.clone();
            sorted.sort();
            if have != sorted {
                changes.push((list, keys));
            }
        }
        // Shrinking lists first: the account's item limit counts both lists,
        // so moving keys from shadow to enforce must not pass through a
        // moment where both hold them.
        changes.sort_by_key(|(l, k)| k.len() as i64 - l.items.len() as i64);
        for (list, keys) in &changes {
            self.replace(list, keys).await?;
        }
        Ok(changes.len() + self.ensure_rules().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_and_keys_round_trip() {
        for k in ["192.0.2.1/32", "203.0.113.0/24", "2001:db8:1:2::/64"] {
            assert_eq!(key(item(k)).as_deref(), Some(k));
        }
        for hostile in ["1", "192.0.2.1/33", "x\n0 Cloudflare writes", "::/129"] {
            assert_eq!(key(hostile), None, "{hostile:?}");
        }
        assert_eq!(percent_encode("a+b/c="), "a%2Bb%2Fc%3D");
        assert!(!representable("2001:db8::7/128"));
        assert!(representable("2001:db8::/64"));
    }

    #[test]
    fn names_and_ids_that_could_reach_a_path_or_an_expression_are_refused() {
        let ok = "0123456789abcdef0123456789abcdef";
        let t = || "t".to_owned();
        assert!(Cloudflare::new(None, ok, ok, t(), "pii_fraud", Some("log".into())).is_ok());
        for prefix in ["", "Pii", "a-b", "x or true", &"a".repeat(41)] {
            assert!(
                Cloudflare::new(None, ok, ok, t(), prefix, None).is_err(),
                "{prefix}"
            );
        }
        assert!(Cloudflare::new(None, "../zones", ok, t(), "p", None).is_err());
        assert!(Cloudflare::new(None, ok, ok, t(), "p", Some("allow".into())).is_err());
        assert!(
            Cloudflare::new(
                Some("http://api.example.com".into()),
                ok,
                ok,
                t(),
                "p",
                None
            )
            .is_err(),
            "plain http off the loopback interface carries the token in clear"
        );
    }
}
