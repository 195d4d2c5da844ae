//! A local emulator of the Cloudflare API endpoints `waf-sync` uses, with
//! their documented formats and limits, since the real API cannot be
//! reached from here.
//!
//! - Envelope: `{"success", "errors": [{"code", "message"}], "messages",
//!   "result", "result_info"}`; an API token in `Authorization: Bearer`.
//! - Lists (`/accounts/{account}/rules/lists`): names of lowercase letters,
//!   digits and `_` (≤ 50), a per-account list count and an account-wide
//!   item limit (checked when a bulk operation runs: it fails, the list
//!   keeps its items); items are IPv4 addresses, IPv4 CIDRs /8–/32 and IPv6
//!   CIDRs /4–/64; item pages of at most 500 with an `after` cursor.
//! - Item writes are asynchronous bulk operations (`operation_id`, then
//!   `pending` → `completed` | `failed` on `bulk_operations/{id}`), at most
//!   one pending per account: another is rejected.
//! - Rulesets: the zone's `http_request_firewall_custom` entry point (404
//!   until made), `POST /zones/{zone}/rulesets` to create it (refused when
//!   it exists), `PUT` to set it, `POST …/rules` to add a rule, `PATCH
//!   …/rules/{id}` to change one; a rule's `$list` must exist.
//! - A rate limit over all requests (default 1,200 per 5 minutes) answering
//!   429 with `Retry-After`.
//!
//! Error codes follow the API where it documents them (10000 authentication,
//! 971 throttling, 7003 routing); the others are the emulator's own.
//! [`Emulator::action_for`] evaluates the rules of the form
//! `ip.src in $list` (and ignores all others) for assertions.
//!
//! Why one file: test code: one emulated API (its state, routes and the
//! assertions' view of it), read and changed together.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

pub const PHASE: &str = "http_request_firewall_custom";

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_lists: usize,
    /// List items across all the account's lists.
    pub max_items: usize,
    pub requests_per_window: usize,
    pub window: Duration,
    /// Status reads before a bulk operation completes.
    pub polls_until_done: u32,
    /// Most items on one page, whatever `per_page` asks (to test paging).
    pub page_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_lists: 10,
            max_items: 10_000,
            requests_per_window: 1_200,
            window: Duration::from_secs(300),
            polls_until_done: 1,
            page_size: 500,
        }
    }
}

#[derive(Debug, Clone)]
struct List {
    id: String,
    name: String,
    kind: String,
    description: String,
    items: Vec<String>,
}

#[derive(Debug)]
struct Op {
    list: String,
    items: Vec<String>,
    polls_left: u32,
    status: &'static str,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    lists: Vec<List>,
    ops: BTreeMap<String, Op>,
    /// The zone entry point: (ruleset id, rules).
    entrypoint: Option<(String, Vec<Value>)>,
    recent: VecDeque<Instant>,
    next_id: u64,
    /// Calls per "METHOD kind" (e.g. `PUT items`), and rejections.
    counts: BTreeMap<String, usize>,
}

struct Shared {
    account: String,
    zone: String,
    token: String,
    limits: Limits,
    inner: Mutex<Inner>,
}

pub struct Emulator {
    pub url: String,
    pub account: String,
    pub zone: String,
    pub token: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn envelope(result: Value) -> Response {
    Json(json!({"success": true, "errors": [], "messages": [], "result": result})).into_response()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(
            json!({"success": false, "errors": [{"code": code, "message": message}],
                    "messages": [], "result": null}),
        ),
    )
        .into_response()
}

/// Why a request is refused: status, API error code, message.
struct Refusal(StatusCode, u32, String);

/// Whether `item` is a valid IP list item (the documented formats).
pub fn valid_item(item: &str) -> bool {
    match item.split_once('/') {
        None => item.parse::<std::net::Ipv4Addr>().is_ok(),
        Some((a, p)) => match (a.parse::<IpAddr>(), p.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(p)) => (8..=32).contains(&p),
            (Ok(IpAddr::V6(_)), Ok(p)) => (4..=64).contains(&p),
            _ => false,
        },
    }
}

fn contains(item: &str, ip: IpAddr) -> bool {
    let (a, p) = item
        .split_once('/')
        .unwrap_or((item, if item.contains(':') { "128" } else { "32" }));
    let (Ok(net), Ok(p)) = (a.parse::<IpAddr>(), p.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) if p <= 32 => {
            let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) if p <= 128 => {
            let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// The list a rule expression of the form `ip.src in $name` names.
fn expression_list(expr: &str) -> Option<&str> {
    expr.trim().strip_prefix("ip.src in $")
}

impl Inner {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{:032x}", 0xc1f0_0000_0000_u64 + self.next_id)
    }

    fn count(&mut self, what: &str) {
        *self.counts.entry(what.to_owned()).or_default() += 1;
    }

    fn list_json(l: &List) -> Value {
        json!({"id": l.id, "name": l.name, "kind": l.kind, "num_items": l.items.len(),
               "num_referencing_filters": 0, "description": l.description, "created_on": "2026-12-01T00:00:00Z",
               "modified_on": "2026-12-01T00:00:00Z"})
    }

    fn check_rule(&self, rule: &Value) -> Result<(), Refusal> {
        let action = rule["action"].as_str().unwrap_or("");
        let allowed = [
            "block",
            "log",
            "managed_challenge",
            "js_challenge",
            "challenge",
            "skip",
        ];
        if !allowed.contains(&action) {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                20119,
                format!("invalid action {action:?}"),
            ));
        }
        let expr = rule["expression"].as_str().unwrap_or("");
        if expr.is_empty() || expr.len() > 4096 {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                20021,
                "invalid expression".into(),
            ));
        }
        // Every `$name` must be an existing list.
        for name in expr.split('$').skip(1) {
            let name: String = name
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !self.lists.iter().any(|l| l.name == name) {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    20021,
                    format!("filter parsing error: unknown list ${name}"),
                ));
            }
        }
        Ok(())
    }

    fn ruleset_json(&self) -> Value {
        match &self.entrypoint {
            Some((id, rules)) => json!({"id": id, "kind": "zone", "phase": PHASE,
                                        "name": "default", "rules": rules}),
            None => Value::Null,
        }
    }

    fn finish(&mut self, rule: &Value) -> Value {
        let mut r = rule.clone();
        if r.get("id").is_none() {
            r["id"] = json!(self.id());
        }
        r["version"] = json!("1");
        r
    }
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut g = match s.inner.lock() {
        Ok(g) => g,
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, 1000, "poisoned"),
    };
    // Rate limit over every request.
    let now = Instant::now();
    while g
        .recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= s.limits.window)
    {
        g.recent.pop_front();
    }
    if g.recent.len() >= s.limits.requests_per_window {
        g.count("throttled");
        let wait = g
            .recent
            .front()
            .map(|t| s.limits.window.saturating_sub(now.duration_since(*t)))
            .unwrap_or_default();
        let mut r = error(
            StatusCode::TOO_MANY_REQUESTS,
            971,
            "Please wait and consider throttling your request speed",
        );
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = secs.max(1).to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
        return r;
    }
    g.recent.push_back(now);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", s.token) {
        g.count("unauthenticated");
        return error(StatusCode::FORBIDDEN, 10000, "Authentication error");
    }
    let path = uri.path().trim_start_matches("/client/v4");
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return error(StatusCode::BAD_REQUEST, 10026, "invalid JSON body"),
        }
    };
    let route = |id: &str, want: &str| id == want;
    match (method.as_str(), seg.as_slice()) {
        (m, ["accounts", acc, "rules", "lists", rest @ ..]) if route(acc, &s.account) => {
            lists(&s, &mut g, m, rest, &query, body)
        }
        (m, ["zones", zone, "rulesets", rest @ ..]) if route(zone, &s.zone) => {
            rulesets(&mut g, m, rest, body)
        }
        _ => error(
            StatusCode::BAD_REQUEST,
            7003,
            &format!("Could not route to {path}, perhaps your object identifier is invalid?"),
        ),
    }
}

fn lists(
    s: &Shared,
    g: &mut Inner,
    method: &str,
    rest: &[&str],
    query: &BTreeMap<String, String>,
    body: Value,
) -> Response {
    match (method, rest) {
        ("GET", []) => {
            g.count("GET lists");
            envelope(Value::Array(g.lists.iter().map(Inner::list_json).collect()))
        }
        ("POST", []) => {
            g.count("POST lists");
            let name = body["name"].as_str().unwrap_or("");
            let ok = !name.is_empty()
                && name.len() <= 50
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return error(StatusCode::BAD_REQUEST, 10003, "invalid list name");
            }
            if body["kind"] != json!("ip") {
                return error(
                    StatusCode::BAD_REQUEST,
                    10004,
                    "the emulator keeps IP lists only",
                );
            }
            if g.lists.iter().any(|l| l.name == name) {
                return error(
                    StatusCode::BAD_REQUEST,
                    10005,
                    "a list with this name exists",
                );
            }
            if g.lists.len() >= s.limits.max_lists {
                return error(
                    StatusCode::BAD_REQUEST,
                    10006,
                    "maximum number of lists reached",
                );
            }
            let description = body["description"].as_str().unwrap_or("");
            if description.len() > 500 {
                return error(StatusCode::BAD_REQUEST, 10003, "description too long");
            }
            let l = List {
                id: g.id(),
                name: name.to_owned(),
                kind: "ip".into(),
                description: description.to_owned(),
                items: Vec::new(),
            };
            let v = Inner::list_json(&l);
            g.lists.push(l);
            envelope(v)
        }
        ("GET", ["bulk_operations", op]) => {
            g.count("GET bulk_operations");
            let Some(o) = g.ops.get_mut(*op) else {
                return error(StatusCode::NOT_FOUND, 10007, "operation not found");
            };
            if o.status == "pending" {
                o.polls_left = o.polls_left.saturating_sub(1);
            }
            let ready = o.status == "pending" && o.polls_left == 0;
            if ready {
                let (list, items) = (o.list.clone(), o.items.clone());
                let others: usize = g
                    .lists
                    .iter()
                    .filter(|l| l.id != list)
                    .map(|l| l.items.len())
                    .sum();
                let over = others + items.len() > s.limits.max_items;
                let o = g.ops.get_mut(*op).expect("looked up above");
                if over {
                    o.status = "failed";
                    o.error = Some(format!(
                        "exceeded the maximum of {} list items in the account",
                        s.limits.max_items
                    ));
                } else {
                    o.status = "completed";
                    if let Some(l) = g.lists.iter_mut().find(|l| l.id == list) {
                        l.items = items;
                    }
                }
            }
            let o = &g.ops[*op];
            envelope(json!({"id": op, "status": o.status, "error": o.error,
                             "completed": (o.status != "pending").then_some("2026-12-01T00:00:00Z")}))
        }
        ("GET", [id, "items"]) => {
            g.count("GET items");
            let per_page: usize = match query.get("per_page").map(|p| p.parse()) {
                None => 25,
                Some(Ok(n)) if (1..=500).contains(&n) => n,
                Some(_) => return error(StatusCode::BAD_REQUEST, 10008, "per_page: 1 to 500"),
            };
            let start: usize = match query.get("cursor") {
                None => 0,
                Some(c) => match c.strip_prefix('c').and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => return error(StatusCode::BAD_REQUEST, 10009, "invalid cursor"),
                },
            };
            let Some(l) = g.lists.iter().find(|l| l.id == *id) else {
                return error(StatusCode::NOT_FOUND, 10010, "list not found");
            };
            let page: Vec<Value> = l
                .items
                .iter()
                .skip(start)
                .take(per_page.min(s.limits.page_size))
                .map(|ip| json!({"ip": ip, "comment": "pii-fraud"}))
                .collect();
            let end = start + page.len();
            let mut cursors = json!({});
            if end < l.items.len() {
                cursors["after"] = json!(format!("c{end}"));
            }
            Json(
                json!({"success": true, "errors": [], "messages": [], "result": page,
                        "result_info": {"cursors": cursors}}),
            )
            .into_response()
        }
        ("PUT", [id, "items"]) => {
            g.count("PUT items");
            if g.ops.values().any(|o| o.status == "pending") {
                g.count("rejected: pending operation");
                return error(
                    StatusCode::BAD_REQUEST,
                    10011,
                    "there is a pending bulk operation in this account",
                );
            }
            if !g.lists.iter().any(|l| l.id == *id) {
                return error(StatusCode::NOT_FOUND, 10010, "list not found");
            }
            let Some(arr) = body.as_array() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    10012,
                    "the body is a list of items",
                );
            };
            let mut items = Vec::new();
            for it in arr {
                let ip = it["ip"].as_str().unwrap_or("").to_ascii_lowercase();
                if !valid_item(&ip) {
                    return error(
                        StatusCode::BAD_REQUEST,
                        10013,
                        &format!("invalid list item {ip:?}"),
                    );
                }
                if it["comment"].as_str().is_some_and(|c| c.len() > 500) {
                    return error(StatusCode::BAD_REQUEST, 10014, "comment too long");
                }
                if !items.contains(&ip) {
                    items.push(ip);
                }
            }
            let op = g.id();
            let polls = s.limits.polls_until_done.max(1);
            g.ops.insert(
                op.clone(),
                Op {
                    list: (*id).to_owned(),
                    items,
                    polls_left: polls,
                    status: "pending",
                    error: None,
                },
            );
            envelope(json!({ "operation_id": op }))
        }
        _ => error(StatusCode::NOT_FOUND, 7000, "No route for that URI"),
    }
}

fn rulesets(g: &mut Inner, method: &str, rest: &[&str], body: Value) -> Response {
    match (method, rest) {
        ("POST", []) => {
            g.count("POST ruleset");
            if body["kind"] != json!("zone") || body["phase"] != json!(PHASE) {
                return error(
                    StatusCode::BAD_REQUEST,
                    20001,
                    "the emulator makes the custom-rules entry point only",
                );
            }
            if g.entrypoint.is_some() {
                return error(
                    StatusCode::BAD_REQUEST,
                    20217,
                    "a ruleset of kind zone already exists in this phase",
                );
            }
            let rules = body["rules"].as_array().cloned().unwrap_or_default();
            for r in &rules {
                if let Err(Refusal(st, code, msg)) = g.check_rule(r) {
                    return error(st, code, &msg);
                }
            }
            let rules: Vec<Value> = rules.iter().map(|r| g.finish(r)).collect();
            let id = g.id();
            g.entrypoint = Some((id, rules));
            envelope(g.ruleset_json())
        }
        ("GET", ["phases", PHASE, "entrypoint"]) => {
            g.count("GET entrypoint");
            if g.entrypoint.is_none() {
                return error(
                    StatusCode::NOT_FOUND,
                    10003,
                    "could not find entrypoint ruleset in the http_request_firewall_custom phase",
                );
            }
            envelope(g.ruleset_json())
        }
        ("PUT", ["phases", PHASE, "entrypoint"]) => {
            g.count("PUT entrypoint");
            let rules = body["rules"].as_array().cloned().unwrap_or_default();
            for r in &rules {
                if let Err(Refusal(st, code, msg)) = g.check_rule(r) {
                    return error(st, code, &msg);
                }
            }
            let rules: Vec<Value> = rules.iter().map(|r| g.finish(r)).collect();
            let id = match &g.entrypoint {
                Some((id, _)) => id.clone(),
                None => g.id(),
            };
            g.entrypoint = Some((id, rules));
            envelope(g.ruleset_json())
        }
        ("POST", [id, "rules"]) => {
            g.count("POST rule");
            if g.entrypoint.as_ref().map(|(i, _)| i.as_str()) != Some(*id) {
                return error(StatusCode::NOT_FOUND, 10015, "ruleset not found");
            }
            if let Err(Refusal(st, code, msg)) = g.check_rule(&body) {
                return error(st, code, &msg);
            }
            let r = g.finish(&body);
            if let Some((_, rules)) = &mut g.entrypoint {
                if rules
                    .iter()
                    .any(|x| x["ref"] == r["ref"] && !r["ref"].is_null())
                {
                    return error(
                        StatusCode::BAD_REQUEST,
                        10016,
                        "a rule with this ref exists",
                    );
                }
                rules.push(r);
            }
            envelope(g.ruleset_json())
        }
        ("PATCH", [id, "rules", rule]) => {
            g.count("PATCH rule");
            if g.entrypoint.as_ref().map(|(i, _)| i.as_str()) != Some(*id) {
                return error(StatusCode::NOT_FOUND, 10015, "ruleset not found");
            }
            if let Err(Refusal(st, code, msg)) = g.check_rule(&body) {
                return error(st, code, &msg);
            }
            let Some((_, rules)) = &mut g.entrypoint else {
                return error(StatusCode::NOT_FOUND, 10015, "ruleset not found");
            };
            let Some(r) = rules.iter_mut().find(|r| r["id"] == json!(rule)) else {
                return error(StatusCode::NOT_FOUND, 10017, "rule not found");
            };
            if let (Some(r), Some(b)) = (r.as_object_mut(), body.as_object()) {
                for (k, v) in b {
                    if k != "id" {
                        r.insert(k.clone(), v.clone());
                    }
                }
            }
            envelope(g.ruleset_json())
        }
        _ => error(StatusCode::NOT_FOUND, 7000, "No route for that URI"),
    }
}

impl Emulator {
    pub async fn start(limits: Limits) -> Emulator {
        let shared = Arc::new(Shared {
            account: "0123456789abcdef0123456789abcdef".into(),
            zone: "fedcba9876543210fedcba9876543210".into(),
            token: "cf-emulator-token".into(),
            limits,
            inner: Mutex::new(Inner::default()),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the emulator");
        let port = listener.local_addr().expect("local addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Emulator {
            url: format!("http://127.0.0.1:{port}/client/v4"),
            account: shared.account.clone(),
            zone: shared.zone.clone(),
            token: shared.token.clone(),
            shared,
            task,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().expect("emulator state")
    }

    /// A list's items, sorted; None when there is no such list.
    pub fn items(&self, name: &str) -> Option<Vec<String>> {
        let g = self.inner();
        let mut items = g.lists.iter().find(|l| l.name == name)?.items.clone();
        items.sort();
        Some(items)
    }

    /// The zone's custom rules, in order.
    pub fn rules(&self) -> Vec<Value> {
        self.inner()
            .entrypoint
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    }

    /// Adds an IP list someone else made, with their description and items.
    pub fn add_foreign_list(&self, name: &str, description: &str, items: &[&str]) {
        let mut g = self.inner();
        let l = List {
            id: g.id(),
            name: name.to_owned(),
            kind: "ip".into(),
            description: description.to_owned(),
            items: items.iter().map(|i| (*i).to_owned()).collect(),
        };
        g.lists.push(l);
    }

    /// Adds a rule someone else owns (the entry point is made if needed).
    pub fn add_foreign_rule(&self, rule: Value) {
        let mut g = self.inner();
        let r = g.finish(&rule);
        if g.entrypoint.is_none() {
            let id = g.id();
            g.entrypoint = Some((id, Vec::new()));
        }
        if let Some((_, rules)) = &mut g.entrypoint {
            rules.push(r);
        }
    }

    /// Changes a field of the rule with this `ref` (someone editing it in
    /// the dashboard).
    pub fn edit_rule(&self, rule_ref: &str, field: &str, value: Value) {
        let mut g = self.inner();
        if let Some((_, rules)) = &mut g.entrypoint {
            for r in rules.iter_mut().filter(|r| r["ref"] == json!(rule_ref)) {
                r[field] = value.clone();
            }
        }
    }

    /// Calls counted under `what` (e.g. `PUT items`, `throttled`).
    pub fn count(&self, what: &str) -> usize {
        self.inner().counts.get(what).copied().unwrap_or(0)
    }

    /// The actions the zone's rules take for a request from `ip`, in order,
    /// up to the first terminating one (rules of the form `ip.src in $list`).
    pub fn action_for(&self, ip: IpAddr) -> Vec<String> {
        let g = self.inner();
        let mut out = Vec::new();
        for r in g.entrypoint.iter().flat_map(|(_, r)| r.iter()) {
            if r["enabled"] == json!(false) {
                continue;
            }
            let Some(name) = r["expression"].as_str().and_then(expression_list) else {
                continue;
            };
            let hit = g
                .lists
                .iter()
                .find(|l| l.name == name)
                .is_some_and(|l| l.items.iter().any(|i| contains(i, ip)));
            if hit {
                let a = r["action"].as_str().unwrap_or("").to_owned();
                let terminating = a != "log" && a != "skip";
                out.push(a);
                if terminating {
                    break;
                }
            }
        }
        out
    }
}
