//! What every API handler works with: the request context ([`Ctx`]), typed
//! parameter access with Vault's coercions and messages, batch items and
//! how their failures are answered, and the reply a handler returns.

use std::collections::BTreeSet;

use pii_custody::attest::Attestor;
use pii_proto::Method;
use serde_json::{json, Map, Value};

use crate::auth::{Capability, Identity};
use crate::error::{vault, Error, Result};
use crate::service::Engine;
use crate::store::BlobStore;
use pii_engine::b64;

pub type Params = Map<String, Value>;

/// Request context passed to handlers.
pub struct Ctx<'a> {
    pub engine: &'a Engine,
    pub store: &'a dyn BlobStore,
    pub attestor: &'a Attestor,
    /// The raw query string (GET parameters of `sys/attestation`).
    pub query: &'a str,
    pub identity: &'a Identity,
    pub method: Method,
    pub path: &'a str,
    pub params: Params,
    /// Parameter names the handler looked at (for Vault's "ignored" warning).
    pub seen: BTreeSet<&'static str>,
    /// The signed checkpoint of this request's audit record.
    pub receipt: Option<pii_proto::audit::SignedCheckpoint>,
    /// Some refusal in this request (an item of a batch, say) might not
    /// hold against a newer keyring: the server reloads once and retries.
    pub newer_keyring_may_help: bool,
}

/// A handler's successful result.
pub enum Reply {
    /// 200 with `{"data": …}` (plus warnings).
    Data(Value),
    /// Batch results with a status decided by the handler.
    Batch { status: u16, data: Value },
    /// 204, empty body.
    NoContent,
    /// 404 with `{"errors":[]}` (Vault's "not found" for reads).
    NotFound,
}

pub fn unsupported_path() -> Error {
    Error::new(404, vault::UNSUPPORTED_PATH)
}
pub fn unsupported_operation() -> Error {
    Error::new(405, vault::UNSUPPORTED_OP)
}

impl Ctx<'_> {
    pub(crate) fn ignored_warning(&self) -> Option<Vec<String>> {
        let ignored: Vec<&str> = self
            .params
            .keys()
            .map(String::as_str)
            .filter(|k| !self.seen.contains(k))
            .collect();
        if ignored.is_empty() {
            None
        } else {
            Some(vec![format!(
                "Endpoint ignored these unrecognized parameters: [{}]",
                ignored.join(" ")
            )])
        }
    }

    /// Record an audit event for this caller; fails the request (503) if the
    /// record cannot be stored (or, with an anchor, checkpointed). The
    /// answer carries the record's signed checkpoint.
    pub async fn audit(&mut self, event: crate::audit::Event) -> Result<()> {
        let mut e = event.0;
        e.caller = self.identity.display_name.clone();
        e.token = self.identity.token_id.clone();
        e.policies = self.identity.policy_names.clone();
        self.receipt = Some(self.engine.audit(self.store, e).await?);
        Ok(())
    }

    /// Whether the caller may also use `cap` on this path.
    pub fn allowed(&self, cap: Capability) -> bool {
        self.identity.allows(self.path, cap)
    }

    pub(crate) fn take(&mut self, name: &'static str) -> Option<&Value> {
        self.seen.insert(name);
        match self.params.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// A string parameter; scalars are converted as Vault's field decoder does.
    pub fn str(&mut self, name: &'static str) -> Option<String> {
        self.take(name).map(value_to_string)
    }

    pub fn int(&mut self, name: &'static str) -> Result<Option<i64>> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => value_to_int(v)
                .map(Some)
                .ok_or_else(|| Error::bad(int_error(name))),
        }
    }

    /// As [`Ctx::int`] with the "Field validation failed" prefix Vault uses on
    /// key management endpoints.
    pub fn field_int(&mut self, name: &'static str) -> Result<Option<i64>> {
        self.int(name)
            .map_err(|e| Error::bad(format!("Field validation failed: {}", e.message())))
    }

    pub fn field_bool(&mut self, name: &'static str) -> Result<Option<bool>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => match value_to_string(v).as_str() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(Some(true)),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(Some(false)),
                _ => Err(Error::bad(format!(
                    "Field validation failed: error converting input for field \"{name}\": '' cannot parse value as 'bool': strconv.ParseBool: invalid syntax"
                ))),
            },
        }
    }

    /// A duration in seconds: an integer or a Go duration string (`1h`, `90m`).
    pub fn field_duration(&mut self, name: &'static str) -> Result<Option<u64>> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(Some)
                .ok_or_else(|| Error::bad(format!("Field validation failed: error converting input for field \"{name}\": invalid duration"))),
            Some(v) => {
                let s = value_to_string(v);
                if let Ok(n) = s.parse::<u64>() {
                    return Ok(Some(n));
                }
                humantime::parse_duration(&s)
                    .map(|d| Some(d.as_secs()))
                    .map_err(|_| {
                        Error::bad(format!(
                            "Field validation failed: error converting input for field \"{name}\": time: invalid duration \"{s}\""
                        ))
                    })
            }
        }
    }

    /// The raw `batch_input`, if present.
    pub fn batch(&mut self) -> Result<Option<Vec<Map<String, Value>>>> {
        match self.take("batch_input") {
            None => Ok(None),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for it in items {
                    match it {
                        Value::Object(m) => out.push(m.clone()),
                        other => {
                            return Err(Error::new(
                                500,
                                format!(
                                    "1 error occurred:\n\t* failed to parse batch input: '[{}]' expected a map, got '{}'\n\n",
                                    out.len(),
                                    go_kind(other)
                                ),
                            ))
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(other) => Err(Error::new(
                500,
                format!(
                    "1 error occurred:\n\t* failed to parse batch input: source data must be an array or slice, got {}\n\n",
                    go_kind(other)
                ),
            )),
        }
    }
}

fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Number(_) => "float64",
        Value::Bool(_) => "bool",
        Value::Object(_) => "map",
        Value::Array(_) => "slice",
        Value::Null => "invalid",
    }
}

pub fn int_error(name: &str) -> String {
    format!("error converting input for field \"{name}\": '' cannot parse value as 'int': strconv.ParseInt: invalid syntax")
}

pub fn value_to_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub fn value_to_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(_) | Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

pub(crate) fn valid_name(n: &str) -> bool {
    // Vault's GenericNameRegex: \w(([\w-.@]+)?\w)?
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = n.chars();
    match (chars.next(), n.chars().last()) {
        (Some(f), Some(l)) if word(f) && word(l) => n
            .chars()
            .all(|c| word(c) || c == '-' || c == '.' || c == '@'),
        _ => false,
    }
}

pub(crate) fn decode_b64(s: &str) -> Result<Vec<u8>> {
    b64::decode(s).map_err(|e| Error::bad(e.to_string()))
}

pub(crate) fn opt_b64(v: Option<String>) -> Result<Option<Vec<u8>>> {
    v.filter(|s| !s.is_empty())
        .map(|s| decode_b64(&s))
        .transpose()
}

/// One item of a (possibly single-item) request.
pub(crate) struct Item {
    pub(crate) params: Map<String, Value>,
    /// From `batch_input` (type errors are reported the way Vault's batch decoder does).
    batch: bool,
}

impl Item {
    pub(crate) fn str(&self, name: &str) -> Option<String> {
        match self.params.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => Some(value_to_string(v)),
        }
    }
    pub(crate) fn int(&self, name: &str) -> Result<Option<i64>> {
        match self.params.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) if !self.batch => value_to_int(v)
                .map(Some)
                .ok_or_else(|| Error::bad(int_error(name))),
            Some(v) => value_to_int(v).map(Some).ok_or_else(|| {
                Error::new(
                    500,
                    format!(
                        "1 error occurred:\n\t* failed to parse batch input: '[0].{name}' expected type 'int', got unconvertible type '{}'\n\n",
                        match v {
                            Value::String(_) => "string",
                            Value::Bool(_) => "bool",
                            _ => "interface {}",
                        }
                    ),
                )
            }),
        }
    }
    fn reference(&self) -> Value {
        match self.params.get("reference") {
            None | Some(Value::Null) => json!(""),
            Some(v) => v.clone(),
        }
    }
}

/// Common shape of batch endpoints: `batch_input` or top-level fields.
pub(crate) fn items(ctx: &mut Ctx<'_>, fields: &[&'static str]) -> Result<(Vec<Item>, bool)> {
    for f in fields {
        ctx.seen.insert(f);
    }
    ctx.seen.insert("reference");
    ctx.seen.insert("partial_failure_response_code");
    match ctx.batch()? {
        Some(b) => {
            if b.is_empty() {
                return Err(Error::bad("missing batch input to process"));
            }
            Ok((
                b.into_iter()
                    .map(|params| Item {
                        params,
                        batch: true,
                    })
                    .collect(),
                true,
            ))
        }
        None => {
            let mut params = Map::new();
            for f in fields.iter().chain(&["reference"]) {
                if let Some(v) = ctx.params.get(*f) {
                    params.insert((*f).to_owned(), v.clone());
                }
            }
            Ok((
                vec![Item {
                    params,
                    batch: false,
                }],
                false,
            ))
        }
    }
}

/// How a batch with failed items is answered.
#[derive(Clone, Copy)]
pub(crate) enum OnItemError {
    /// 400, or the caller's `partial_failure_response_code` (encrypt, decrypt).
    Status400,
    /// 200 (rewrap, hmac, verify).
    Status200,
}

pub(crate) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Run `op` over the items. A single request answers with the op's object or
/// its error; a batch collects `{…, reference}` per item, failed items as
/// `{error, reference}` plus `on_error`'s fields. Internal (5xx) errors abort.
pub(crate) fn run_items(
    ctx: &mut Ctx<'_>,
    items: &[Item],
    batch: bool,
    policy: OnItemError,
    on_error: &[(&str, Value)],
    op: impl Fn(&Item) -> Result<Map<String, Value>>,
) -> Result<Reply> {
    if !batch {
        let item = items
            .first()
            .ok_or_else(|| Error::bad("missing batch input to process"))?;
        return op(item).map(|m| Reply::Data(Value::Object(m)));
    }
    let mut results = Vec::with_capacity(items.len());
    let mut failed = 0usize;
    for it in items {
        let mut m = match op(it) {
            Ok(m) => m,
            Err(e) if e.status >= 500 => return Err(e),
            Err(e) => {
                failed += 1;
                ctx.newer_keyring_may_help |= e.newer_keyring_may_help;
                let mut m: Map<String, Value> = on_error
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                m.insert("error".into(), json!(e.message()));
                m
            }
        };
        m.insert("reference".into(), it.reference());
        results.push(Value::Object(m));
    }
    let data = json!({ "batch_results": results });
    match policy {
        OnItemError::Status200 => Ok(Reply::Data(data)),
        OnItemError::Status400 => Ok(Reply::Batch {
            status: batch_status(ctx, failed > 0, failed == items.len())?,
            data,
        }),
    }
}

/// Batch status: 400 if any item failed (or the caller's partial-failure code).
fn batch_status(ctx: &mut Ctx<'_>, any_failed: bool, all_failed: bool) -> Result<u16> {
    let code = ctx.int("partial_failure_response_code")?;
    if !any_failed {
        return Ok(200);
    }
    match code {
        Some(c) if !all_failed && (200..600).contains(&c) => Ok(c as u16),
        _ => Ok(400),
    }
}
