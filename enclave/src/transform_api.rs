//! `/v1/transform/…`: the Transform-shaped API over [`pii_engine::transform`].
//!
//! Configuration endpoints (alphabets, templates, transformations, roles)
//! change the sealed keyring through the same compare-and-swap path as
//! Transit keys. Encode/decode/validate/tokenized work per role; decode is
//! authorized by the caller's policy on `transform/decode/<role>` (or
//! `transform/document/decode/<role>`) and recorded in the audit log with the
//! caller and the given `reason`.

use pii_proto::Method;
use serde_json::{json, Map, Value};

use crate::audit::Event;
use crate::error::{Error, Result};
use crate::request::{items, obj, opt_b64, run_items, valid_name, Item, OnItemError};
use crate::request::{unsupported_operation, unsupported_path, Ctx, Reply};
use crate::service::Change;
use pii_engine::b64;
use pii_engine::transform::{
    self, AlphabetDoc, Kind, RoleDoc, TemplateDoc, TokenEncoding, TransformDoc, TransformationDoc,
    TweakSource, BUILTIN_ALPHABETS, BUILTIN_TEMPLATES,
};

pub async fn route(ctx: &mut Ctx<'_>, rest: &[&str]) -> Result<Reply> {
    let m = ctx.method;
    let post = matches!(m, Method::Post | Method::Put);
    match rest {
        ["alphabet"] | ["template"] | ["transformation"] | ["role"] if m == Method::List => {
            list(ctx, rest[0])
        }
        ["alphabet", "builtin", n] if m == Method::Get => builtin_alphabet(n),
        ["template", "builtin", n] if m == Method::Get => builtin_template(n),
        ["alphabet", name] if valid_name(name) => match m {
            _ if post => write_alphabet(ctx, name).await,
            Method::Get => read(ctx, "alphabet", name),
            Method::Delete => delete(ctx, "alphabet", name).await,
            _ => Err(unsupported_operation()),
        },
        ["template", name] if valid_name(name) => match m {
            _ if post => write_template(ctx, name).await,
            Method::Get => read(ctx, "template", name),
            Method::Delete => delete(ctx, "template", name).await,
            _ => Err(unsupported_operation()),
        },
        ["transformations", kind, name] if valid_name(name) && post => {
            write_transformation(ctx, kind, name).await
        }
        ["transformation", name] if valid_name(name) => match m {
            Method::Get => read(ctx, "transformation", name),
            Method::Delete => delete(ctx, "transformation", name).await,
            _ => Err(unsupported_operation()),
        },
        ["role", name] if valid_name(name) => match m {
            _ if post => write_role(ctx, name).await,
            Method::Get => read(ctx, "role", name),
            Method::Delete => delete(ctx, "role", name).await,
            _ => Err(unsupported_operation()),
        },
        ["encode", role] if post => encode(ctx, role).await,
        ["decode", role] if post => decode(ctx, role).await,
        ["validate", role] if post => validate(ctx, role),
        ["tokenized", role] if post => tokenized(ctx, role).await,
        ["metadata", role] if post => metadata(ctx, role).await,
        ["tidy"] if post => tidy(ctx).await,
        ["document", "encode", role] if post => document(ctx, role, false).await,
        ["document", "decode", role] if post => document(ctx, role, true).await,
        _ => Err(unsupported_path()),
    }
}

// ---------------------------------------------------------------------------
// Configuration

fn list(ctx: &mut Ctx<'_>, what: &str) -> Result<Reply> {
    let kr = ctx.engine.current()?;
    let d = &kr.transform.doc;
    let mut keys: Vec<String> = match what {
        "alphabet" => d.alphabets.keys().cloned().collect(),
        "template" => d.templates.keys().cloned().collect(),
        "transformation" => d.transformations.keys().cloned().collect(),
        _ => d.roles.keys().cloned().collect(),
    };
    keys.sort();
    if keys.is_empty() {
        return Ok(Reply::NotFound);
    }
    Ok(Reply::Data(json!({ "keys": keys })))
}

fn builtin_alphabet(n: &str) -> Result<Reply> {
    let name = format!("builtin/{n}");
    BUILTIN_ALPHABETS
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, a)| Reply::Data(json!({ "name": name, "alphabet": a })))
        .ok_or_else(unsupported_path)
}

fn builtin_template(n: &str) -> Result<Reply> {
    let name = format!("builtin/{n}");
    BUILTIN_TEMPLATES
        .iter()
        .find(|(k, _, _)| *k == name)
        .map(|(_, p, a)| {
            Reply::Data(json!({ "name": name, "type": "regex", "pattern": p, "alphabet": a }))
        })
        .ok_or_else(unsupported_path)
}

fn read(ctx: &mut Ctx<'_>, what: &str, name: &str) -> Result<Reply> {
    let kr = ctx.engine.current()?;
    let d = &kr.transform.doc;
    let v = match what {
        "alphabet" => d.alphabets.get(name).map(|a| json!({"name": name, "alphabet": a.alphabet})),
        "template" => d
            .templates
            .get(name)
            .map(|t| json!({"name": name, "type": "regex", "pattern": t.pattern, "alphabet": t.alphabet})),
        "transformation" => d.transformations.get(name).map(|t| transform::transformation_info(name, t)),
        _ => d.roles.get(name).map(|r| {
            let mut v = json!({"name": name, "transformations": r.transformations});
            if r.low_entropy {
                v["low_entropy"] = json!(true);
                v["encode_per_minute"] = json!(r
                    .encode_per_minute
                    .unwrap_or(transform::LOW_ENTROPY_ENCODES_PER_MINUTE));
            }
            v
        }),
    };
    Ok(v.map(Reply::Data).unwrap_or(Reply::NotFound))
}

/// Apply `edit` to the Transform configuration and persist it.
async fn edit(ctx: &mut Ctx<'_>, edit: impl Fn(&mut TransformDoc) -> Result<()>) -> Result<()> {
    ctx.engine
        .mutate(ctx.store, |kr| {
            let mut doc = kr.transform.doc.clone();
            edit(&mut doc)?;
            Ok(Change::Changed(kr.with_transform(doc)?, ()))
        })
        .await
}

async fn delete(ctx: &mut Ctx<'_>, what: &str, name: &str) -> Result<Reply> {
    let (what, name) = (what.to_owned(), name.to_owned());
    edit(ctx, move |d| {
        let in_use = |used: bool, by: &str| -> Result<()> {
            if used {
                return Err(Error::bad(format!("{what} {name:?} is in use by {by}")));
            }
            Ok(())
        };
        match what.as_str() {
            "alphabet" => {
                in_use(
                    d.templates.values().any(|t| t.alphabet == name),
                    "a template",
                )?;
                d.alphabets.remove(&name);
            }
            "template" => {
                in_use(
                    d.transformations.values().any(|t| match &t.kind {
                        Kind::Fpe { template, .. } | Kind::Masking { template, .. } => {
                            *template == name
                        }
                        Kind::Tokenization { .. } => false,
                    }),
                    "a transformation",
                )?;
                d.templates.remove(&name);
            }
            "transformation" => {
                in_use(
                    d.roles.values().any(|r| r.transformations.contains(&name)),
                    "a role",
                )?;
                d.transformations.remove(&name);
            }
            _ => {
                d.roles.remove(&name);
            }
        }
        Ok(())
    })
    .await?;
    Ok(Reply::NoContent)
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().map(crate::request::value_to_string).collect(),
        Some(Value::String(s)) => s
            .split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => vec![],
    }
}

async fn write_alphabet(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let a = ctx
        .str("alphabet")
        .ok_or_else(|| Error::bad("missing alphabet"))?;
    transform::validate_alphabet(&a.chars().collect::<Vec<_>>())?;
    let n = name.to_owned();
    edit(ctx, move |d| {
        d.alphabets.insert(
            n.clone(),
            AlphabetDoc {
                alphabet: a.clone(),
            },
        );
        Ok(())
    })
    .await?;
    Ok(Reply::NoContent)
}

async fn write_template(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let ty = ctx.str("type").unwrap_or_else(|| "regex".into());
    if ty != "regex" {
        return Err(Error::bad(format!(
            "unsupported template type {ty:?}: only \"regex\""
        )));
    }
    let pattern = ctx
        .str("pattern")
        .ok_or_else(|| Error::bad("missing pattern"))?;
    let alphabet = ctx
        .str("alphabet")
        .ok_or_else(|| Error::bad("missing alphabet"))?;
    ctx.seen.extend(["encode_format", "decode_formats"]);
    let n = name.to_owned();
    edit(ctx, move |d| {
        d.templates.insert(
            n.clone(),
            TemplateDoc {
                pattern: pattern.clone(),
                alphabet: alphabet.clone(),
            },
        );
        // Compiling every transformation validates the pattern and alphabet.
        transform::TransformState::from_doc(d.clone()).map(|_| ())?;
        check_template(d, &n)
    })
    .await?;
    Ok(Reply::NoContent)
}

fn check_template(d: &TransformDoc, name: &str) -> Result<()> {
    // Build a throwaway masking transformation to compile the template.
    let mut probe = d.clone();
    probe.transformations.insert(
        "\u{0}probe".into(),
        TransformationDoc {
            kind: Kind::Masking {
                template: name.to_owned(),
                masking_character: '*',
            },
            allowed_roles: vec![],
            key: zeroize::Zeroizing::new(vec![0u8; 32]),
        },
    );
    transform::TransformState::from_doc(probe)?;
    Ok(())
}

async fn write_transformation(ctx: &mut Ctx<'_>, kind: &str, name: &str) -> Result<Reply> {
    let allowed_roles = str_list(ctx.params.get("allowed_roles"));
    ctx.seen.insert("allowed_roles");
    ctx.seen.insert("deletion_allowed");
    let tpl = match (
        ctx.str("template"),
        str_list(ctx.params.get("templates")).first(),
    ) {
        (Some(t), _) => Some(t),
        (None, Some(t)) => Some(t.clone()),
        _ => None,
    };
    ctx.seen.insert("templates");
    let kind = match kind {
        "fpe" => {
            let tweak_source = match ctx.str("tweak_source").as_deref().unwrap_or("supplied") {
                "supplied" => TweakSource::Supplied,
                "generated" => TweakSource::Generated,
                "internal" => TweakSource::Internal,
                other => return Err(Error::bad(format!("invalid tweak_source {other:?}"))),
            };
            Kind::Fpe {
                template: tpl.ok_or_else(|| Error::bad("missing template"))?,
                tweak_source,
            }
        }
        "masking" => {
            let ch = ctx.str("masking_character").unwrap_or_else(|| "*".into());
            let mut chars = ch.chars();
            let (Some(c), None) = (chars.next(), chars.next()) else {
                return Err(Error::bad("masking_character must be a single character"));
            };
            Kind::Masking {
                template: tpl.ok_or_else(|| Error::bad("missing template"))?,
                masking_character: c,
            }
        }
        "tokenization" => {
            let convergent = ctx.field_bool("convergent")?.unwrap_or(false);
            let max_ttl = ctx.field_duration("max_ttl")?.unwrap_or(0);
            let stored = match ctx.str("mapping_mode").as_deref() {
                None | Some("deterministic") => None,
                // "default" is Vault's name for stored mappings.
                Some("stored") | Some("default") => Some(transform::StoredOpts { max_ttl, convergent }),
                Some(other) => {
                    return Err(Error::bad(format!(
                        "invalid mapping_mode {other:?}: \"deterministic\" or \"stored\" (exportable mappings are not offered: values never leave the enclave)"
                    )))
                }
            };
            ctx.seen.insert("stores");
            let encoding = match ctx.str("encoding").as_deref().unwrap_or("base58") {
                "base58" => TokenEncoding::Base58,
                "hex" => TokenEncoding::Hex,
                other => {
                    return Err(Error::bad(format!(
                        "invalid encoding {other:?}: base58 or hex"
                    )))
                }
            };
            let prefix = ctx.str("prefix").unwrap_or_else(|| "tok_".into());
            if prefix.len() > 32
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(Error::bad(
                    "prefix must be at most 32 characters of [A-Za-z0-9_-]",
                ));
            }
            Kind::Tokenization {
                prefix,
                encoding,
                stored,
            }
        }
        other => {
            return Err(Error::bad(format!(
                "unknown transformation type {other:?}: fpe, masking or tokenization"
            )))
        }
    };
    let n = name.to_owned();
    let key = transform::new_key()?;
    edit(ctx, move |d| {
        // Updating keeps the existing key: re-keying would orphan every token.
        let key = d
            .transformations
            .get(&n)
            .map(|t| t.key.clone())
            .unwrap_or_else(|| key.clone());
        d.transformations.insert(
            n.clone(),
            TransformationDoc {
                kind: kind.clone(),
                allowed_roles: allowed_roles.clone(),
                key,
            },
        );
        transform::TransformState::from_doc(d.clone())?;
        Ok(())
    })
    .await?;
    Ok(Reply::NoContent)
}

async fn write_role(ctx: &mut Ctx<'_>, name: &str) -> Result<Reply> {
    let ts = str_list(ctx.params.get("transformations"));
    ctx.seen.insert("transformations");
    let low_entropy = ctx.field_bool("low_entropy")?.unwrap_or(false);
    let per_minute = match ctx.field_int("encode_per_minute")? {
        None => None,
        Some(n) if (1..=1_000_000).contains(&n) => Some(n as u32),
        Some(n) => {
            return Err(Error::bad(format!(
                "encode_per_minute must be between 1 and 1000000, not {n}"
            )))
        }
    };
    if per_minute.is_some() && !low_entropy {
        return Err(Error::bad(
            "encode_per_minute applies only to low_entropy roles",
        ));
    }
    let n = name.to_owned();
    edit(ctx, move |d| {
        for t in &ts {
            if !d.transformations.contains_key(t) {
                return Err(Error::bad(format!("transformation {t:?} not found")));
            }
        }
        d.roles.insert(
            n.clone(),
            RoleDoc {
                transformations: ts.clone(),
                low_entropy,
                encode_per_minute: per_minute,
            },
        );
        Ok(())
    })
    .await?;
    Ok(Reply::NoContent)
}

// ---------------------------------------------------------------------------
// Operations

fn ttl_of(it: &Item) -> Result<u64> {
    match it.str("ttl") {
        None => Ok(0),
        Some(s) => s
            .parse::<u64>()
            .ok()
            .or_else(|| humantime::parse_duration(&s).ok().map(|d| d.as_secs()))
            .ok_or_else(|| Error::bad(format!("invalid ttl {s:?}"))),
    }
}

async fn encode(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let (its, batch) = items(
        ctx,
        &["value", "transformation", "tweak", "ttl", "metadata"],
    )?;
    if !batch && its[0].str("value").is_none() {
        return Err(Error::bad("missing value to encode"));
    }
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    let mut uses = std::collections::BTreeMap::new();
    for it in &its {
        if let Ok(t) = st.resolve(role, it.str("transformation").as_deref()) {
            *uses.entry(t.name().to_owned()).or_insert(0) += 1;
        }
    }
    low_entropy_gate(ctx, role, "transform/encode", &uses).await?;
    let now = unix(ctx);
    let entries = std::cell::RefCell::new(Vec::new());
    let reply = run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        let value = it.str("value").unwrap_or_default();
        if t.is_stored() {
            let (token, entry) =
                t.issue_stored(&value, ttl_of(it)?, it.params.get("metadata"), now)?;
            entries.borrow_mut().push(entry);
            return Ok(obj(json!({ "encoded_value": token })));
        }
        let tweak = opt_b64(it.str("tweak"))?;
        let e = t.encode(&value, tweak.as_deref())?;
        let mut m = obj(json!({ "encoded_value": e.value }));
        if let Some(tw) = e.tweak {
            m.insert("tweak".into(), json!(b64::encode(&tw)));
        }
        Ok(m)
    })?;
    // No token leaves the enclave before its mapping is durably stored.
    let entries = entries.into_inner();
    if !entries.is_empty() {
        ctx.store.token_put(entries).await.map_err(|e| {
            tracing::warn!(error = %e, "token store write failed; no tokens returned");
            Error::new(503, "token store unavailable")
        })?;
    }
    Ok(reply)
}

/// Stored mappings the items refer to, fetched in one round trip. Items whose
/// token fails its own checks (format, MAC, expiry) are not looked up.
async fn fetch_stored(
    ctx: &Ctx<'_>,
    st: &transform::TransformState,
    role: &str,
    its: &[Item],
) -> Result<std::collections::HashMap<String, Vec<u8>>> {
    let now = unix(ctx);
    let mut keys = vec![];
    for it in its {
        if let Ok(t) = st.resolve(role, it.str("transformation").as_deref()) {
            if t.is_stored() {
                if let Ok(k) = t.stored_key(&it.str("value").unwrap_or_default(), now) {
                    keys.push(k);
                }
            }
        }
    }
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let found = ctx.store.token_get(keys.clone()).await.map_err(|e| {
        tracing::warn!(error = %e, "token store read failed");
        Error::new(503, "token store unavailable")
    })?;
    Ok(keys
        .into_iter()
        .zip(found)
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect())
}

/// Resolve one stored token to `(value, metadata)`.
fn open_stored(
    t: &transform::Transformation,
    token: &str,
    found: &std::collections::HashMap<String, Vec<u8>>,
    now: u64,
) -> Result<(zeroize::Zeroizing<String>, Value)> {
    let key = t.stored_key(token, now)?;
    let sealed = found
        .get(&key)
        .ok_or_else(|| Error::bad("token not found"))?;
    Ok(t.open_stored(&key, sealed)?)
}

/// The engine's time in Unix seconds, as the token formats count it.
fn unix(ctx: &Ctx<'_>) -> u64 {
    u64::try_from(ctx.engine.now()).unwrap_or(0)
}

/// Encodes of low-entropy transformations (any listed by a low-entropy
/// role): take each transformation's count from the caller's per-minute
/// allowance for it (429 when spent) and audit the request before any token
/// is returned. `uses` counts the values each transformation will encode.
async fn low_entropy_gate(
    ctx: &mut Ctx<'_>,
    role: &str,
    op: &str,
    uses: &std::collections::BTreeMap<String, usize>,
) -> Result<()> {
    let kr = ctx.engine.current()?;
    let caller = ctx.identity.token_id.clone();
    let mut total = 0;
    for (t, n) in uses {
        let Some(per_minute) = kr.transform.low_entropy_rate(t) else {
            continue;
        };
        if *n > per_minute as usize {
            return Err(Error::new(
                429,
                format!(
                    "transformation {t} is low-entropy: a request may encode at most {per_minute} values"
                ),
            ));
        }
        if !ctx.engine.take_encodes(t, &caller, per_minute, *n as u32) {
            return Err(Error::new(
                429,
                format!(
                    "transformation {t} is low-entropy: this token may encode {per_minute} values \
                     a minute, and has used them"
                ),
            ));
        }
        total += n;
    }
    if total == 0 {
        return Ok(());
    }
    let reason = reason(ctx);
    ctx.audit(Event::encode(op, role, &reason, total)).await
}

fn reason(ctx: &mut Ctx<'_>) -> String {
    let r = ctx.str("reason").unwrap_or_default();
    r.chars().take(256).collect()
}

async fn decode(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let reason = reason(ctx);
    let (its, batch) = items(ctx, &["value", "transformation", "tweak"])?;
    if !batch && its[0].str("value").is_none() {
        return Err(Error::bad("missing value to decode"));
    }
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    // The audit record is written before any plaintext is returned.
    ctx.audit(Event::decode("transform/decode", role, &reason, its.len()))
        .await?;
    let found = fetch_stored(ctx, &st, role, &its).await?;
    let now = unix(ctx);
    run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        let value = it.str("value").unwrap_or_default();
        if t.is_stored() {
            let (v, _) = open_stored(&t, &value, &found, now)?;
            return Ok(obj(json!({ "decoded_value": v.as_str() })));
        }
        let tweak = opt_b64(it.str("tweak"))?;
        let v = t.decode(&value, tweak.as_deref())?;
        Ok(obj(json!({ "decoded_value": v.as_str() })))
    })
}

async fn metadata(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let (its, batch) = items(ctx, &["value", "transformation"])?;
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    let found = fetch_stored(ctx, &st, role, &its).await?;
    let now = unix(ctx);
    run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        if !t.is_stored() {
            return Err(Error::bad("metadata is kept only for stored tokens"));
        }
        let (_, m) = open_stored(&t, &it.str("value").unwrap_or_default(), &found, now)?;
        Ok(obj(json!({ "metadata": m })))
    })
}

async fn tidy(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let deleted = ctx.store.token_tidy(unix(ctx)).await.map_err(|e| {
        tracing::warn!(error = %e, "token store tidy failed");
        Error::new(503, "token store unavailable")
    })?;
    Ok(Reply::Data(json!({ "deleted": deleted })))
}

fn validate(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let (its, batch) = items(ctx, &["value", "transformation"])?;
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        Ok(obj(
            json!({ "valid": t.validate(&it.str("value").unwrap_or_default()) }),
        ))
    })
}

async fn tokenized(ctx: &mut Ctx<'_>, role: &str) -> Result<Reply> {
    let (its, batch) = items(ctx, &["value", "transformation"])?;
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    let found = fetch_stored(ctx, &st, role, &its).await?;
    let now = unix(ctx);
    run_items(ctx, &its, batch, OnItemError::Status400, &[], |it| {
        let t = st.resolve(role, it.str("transformation").as_deref())?;
        let value = it.str("value").unwrap_or_default();
        let yes = if t.is_stored() {
            open_stored(&t, &value, &found, now).is_ok()
        } else {
            t.is_tokenized(&value)?
        };
        Ok(obj(json!({ "is_tokenized": yes })))
    })
}

// ---------------------------------------------------------------------------
// JSON documents

/// One step of a field rule.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    Any,
}

/// A field rule: a bare name matches that key at any depth; a path starting
/// with `$` is a JSON path with `.key`, `['key']`, `[n]`, `.*` and `[*]`.
#[derive(Debug, Clone, PartialEq)]
enum Rule {
    AnyDepth(String),
    Path(Vec<Step>),
}

/// Whether `s` is a valid JSON-document field rule (`$.user.email`,
/// `$.items[*].card`, `ssn`): the parser callers reach, for fuzzing.
pub fn check_rule(s: &str) -> Result<()> {
    parse_rule(s).map(drop)
}

fn parse_rule(s: &str) -> Result<Rule> {
    let bad = || Error::bad(format!("invalid field rule {s:?}"));
    let Some(rest) = s.strip_prefix('$') else {
        if s.is_empty() || s.contains(['.', '[', ']', '*']) {
            return Err(bad());
        }
        return Ok(Rule::AnyDepth(s.to_owned()));
    };
    let mut steps = vec![];
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                    j += 1;
                }
                let key = &rest[start..j];
                if key.is_empty() {
                    return Err(bad());
                }
                steps.push(if key == "*" {
                    Step::Any
                } else {
                    Step::Key(key.to_owned())
                });
                i = j;
            }
            b'[' => {
                let end = rest[i..].find(']').map(|e| i + e).ok_or_else(bad)?;
                let inner = &rest[i + 1..end];
                steps.push(if inner == "*" {
                    Step::Any
                } else if let Some(q) = inner.strip_prefix('\'').and_then(|x| x.strip_suffix('\''))
                {
                    Step::Key(q.to_owned())
                } else {
                    Step::Index(inner.parse().map_err(|_| bad())?)
                });
                i = end + 1;
            }
            _ => return Err(bad()),
        }
        if steps.len() > 64 {
            return Err(bad());
        }
    }
    Ok(Rule::Path(steps))
}

/// Apply `f` to every string or number leaf under the nodes `rule` selects.
fn apply_rule(
    doc: &mut Value,
    rule: &Rule,
    f: &mut dyn FnMut(&str, &Value) -> Result<Value>,
    count: &mut usize,
) -> Result<()> {
    fn leaves(
        v: &mut Value,
        path: &str,
        f: &mut dyn FnMut(&str, &Value) -> Result<Value>,
        n: &mut usize,
    ) -> Result<()> {
        match v {
            Value::String(_) | Value::Number(_) => {
                *v = f(path, v)?;
                *n += 1;
            }
            Value::Array(a) => {
                for (i, x) in a.iter_mut().enumerate() {
                    leaves(x, &format!("{path}[{i}]"), f, n)?;
                }
            }
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    leaves(x, &format!("{path}.{k}"), f, n)?;
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
        Ok(())
    }
    fn any_depth(
        v: &mut Value,
        key: &str,
        path: &str,
        f: &mut dyn FnMut(&str, &Value) -> Result<Value>,
        n: &mut usize,
    ) -> Result<()> {
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    let p = format!("{path}.{k}");
                    if k == key {
                        leaves(x, &p, f, n)?;
                    } else {
                        any_depth(x, key, &p, f, n)?;
                    }
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter_mut().enumerate() {
                    any_depth(x, key, &format!("{path}[{i}]"), f, n)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    fn walk(
        v: &mut Value,
        steps: &[Step],
        path: &str,
        f: &mut dyn FnMut(&str, &Value) -> Result<Value>,
        n: &mut usize,
    ) -> Result<()> {
        let Some((first, rest)) = steps.split_first() else {
            return leaves(v, path, f, n);
        };
        match (first, v) {
            (Step::Key(k), Value::Object(o)) => {
                if let Some(x) = o.get_mut(k) {
                    walk(x, rest, &format!("{path}.{k}"), f, n)?;
                }
            }
            (Step::Index(i), Value::Array(a)) => {
                if let Some(x) = a.get_mut(*i) {
                    walk(x, rest, &format!("{path}[{i}]"), f, n)?;
                }
            }
            (Step::Any, Value::Object(o)) => {
                for (k, x) in o.iter_mut() {
                    walk(x, rest, &format!("{path}.{k}"), f, n)?;
                }
            }
            (Step::Any, Value::Array(a)) => {
                for (i, x) in a.iter_mut().enumerate() {
                    walk(x, rest, &format!("{path}[{i}]"), f, n)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    match rule {
        Rule::AnyDepth(k) => any_depth(doc, k, "$", f, count),
        Rule::Path(steps) => walk(doc, steps, "$", f, count),
    }
}

async fn document(ctx: &mut Ctx<'_>, role: &str, decoding: bool) -> Result<Reply> {
    let reason = reason(ctx);
    ctx.seen.extend(["document", "fields"]);
    let mut doc = ctx
        .params
        .get("document")
        .cloned()
        .ok_or_else(|| Error::bad("missing document"))?;
    let fields: Vec<(String, Option<String>)> = match ctx.params.get("fields") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned),
                )
            })
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| (crate::request::value_to_string(v), None))
            .collect(),
        _ => {
            return Err(Error::bad(
                "missing fields: an object {rule: transformation} or a list of rules",
            ))
        }
    };
    if fields.is_empty() || fields.len() > 256 {
        return Err(Error::bad("fields must name between 1 and 256 rules"));
    }
    let kr = ctx.engine.current()?;
    let st = kr.transform.clone();
    let mut rules = Vec::with_capacity(fields.len());
    for (r, t) in &fields {
        rules.push((parse_rule(r)?, st.resolve(role, t.as_deref())?));
    }
    // Every value the rules reach (not the number of rules) is what the
    // audit records and a low-entropy allowance is charged.
    let mut uses = std::collections::BTreeMap::new();
    let mut probe = doc.clone();
    for (rule, t) in &rules {
        let mut n = 0usize;
        apply_rule(
            &mut probe,
            rule,
            &mut |_: &str, v: &Value| Ok(v.clone()),
            &mut n,
        )?;
        *uses.entry(t.name().to_owned()).or_insert(0) += n;
    }
    if decoding {
        let values = uses.values().sum();
        ctx.audit(Event::decode(
            "transform/document/decode",
            role,
            &reason,
            values,
        ))
        .await?;
    } else {
        low_entropy_gate(ctx, role, "transform/document/encode", &uses).await?;
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let now = unix(ctx);
    // Stored tokens being decoded are fetched in one round trip first.
    let mut found = std::collections::HashMap::new();
    if decoding && rules.iter().any(|(_, t)| t.is_stored()) {
        let mut keys = vec![];
        let mut probe = doc.clone();
        for (rule, t) in rules.iter().filter(|(_, t)| t.is_stored()) {
            let mut collect = |_: &str, v: &Value| -> Result<Value> {
                if let Ok(k) = t.stored_key(&text(v), now) {
                    keys.push(k);
                }
                Ok(v.clone())
            };
            apply_rule(&mut probe, rule, &mut collect, &mut 0)?;
        }
        if !keys.is_empty() {
            let got = ctx.store.token_get(keys.clone()).await.map_err(|e| {
                tracing::warn!(error = %e, "token store read failed");
                Error::new(503, "token store unavailable")
            })?;
            found = keys
                .into_iter()
                .zip(got)
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
        }
    }
    let mut entries = vec![];
    let mut count = 0usize;
    for (rule, t) in &rules {
        let mut f = |path: &str, v: &Value| -> Result<Value> {
            let s = text(v);
            let out = match (decoding, t.is_stored()) {
                (true, true) => open_stored(t, &s, &found, now).map(|(z, _)| z.to_string()),
                (true, false) => t
                    .decode(&s, None)
                    .map(|z| z.to_string())
                    .map_err(Error::from),
                (false, true) => {
                    t.issue_stored(&s, 0, None, now)
                        .map_err(Error::from)
                        .map(|(tok, e)| {
                            entries.push(e);
                            tok
                        })
                }
                (false, false) => t.encode(&s, None).map(|e| e.value).map_err(Error::from),
            };
            out.map(Value::String)
                .map_err(|e| Error::bad(format!("field {path}: {}", e.message())))
        };
        apply_rule(&mut doc, rule, &mut f, &mut count)?;
    }
    // No token leaves the enclave before its mapping is durably stored.
    if !entries.is_empty() {
        ctx.store.token_put(entries).await.map_err(|e| {
            tracing::warn!(error = %e, "token store write failed; no tokens returned");
            Error::new(503, "token store unavailable")
        })?;
    }
    let mut data = Map::new();
    data.insert("document".into(), doc);
    data.insert("transformed_fields".into(), json!(count));
    Ok(Reply::Data(Value::Object(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        assert_eq!(parse_rule("email").unwrap(), Rule::AnyDepth("email".into()));
        assert_eq!(
            parse_rule("$.user.contact.*").unwrap(),
            Rule::Path(vec![
                Step::Key("user".into()),
                Step::Key("contact".into()),
                Step::Any
            ])
        );
        assert_eq!(
            parse_rule("$.items[*]['e-mail']").unwrap(),
            Rule::Path(vec![
                Step::Key("items".into()),
                Step::Any,
                Step::Key("e-mail".into())
            ])
        );
        assert_eq!(
            parse_rule("$.a[2]").unwrap(),
            Rule::Path(vec![Step::Key("a".into()), Step::Index(2)])
        );
        for bad in ["", "a.b", "$.", "$..x", "$[", "$[x]", "$a"] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_select_leaves() {
        let mut doc = json!({
            "email": "a@x.io",
            "user": {"email": "b@x.io", "contact": {"phone": "555", "tags": ["t1", 7], "ok": true}},
            "items": [{"email": "c@x.io"}]
        });
        let mut seen = vec![];
        let mut n = 0;
        let mut f = |p: &str, v: &Value| -> Result<Value> {
            seen.push(p.to_owned());
            Ok(json!(format!("T({})", crate::request::value_to_string(v))))
        };
        apply_rule(&mut doc, &parse_rule("email").unwrap(), &mut f, &mut n).unwrap();
        apply_rule(
            &mut doc,
            &parse_rule("$.user.contact.*").unwrap(),
            &mut f,
            &mut n,
        )
        .unwrap();
        assert_eq!(n, 6);
        assert_eq!(doc["email"], "T(a@x.io)");
        assert_eq!(doc["items"][0]["email"], "T(c@x.io)");
        assert_eq!(doc["user"]["contact"]["tags"][1], "T(7)");
        assert_eq!(doc["user"]["contact"]["ok"], true);
        assert!(seen.contains(&"$.user.contact.tags[0]".to_string()));
    }
}
