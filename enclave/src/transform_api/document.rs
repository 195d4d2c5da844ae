//! JSON documents: field rules (`$.user.email`, `ssn`) and the
//! `transform/document/{encode,decode}` endpoints that apply them.

use serde_json::{json, Map, Value};

use super::codec::{low_entropy_gate, open_stored, reason, unix};
use crate::audit::Event;
use crate::error::{Error, Result};
use crate::request::{Ctx, Reply};

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

pub(super) async fn document(ctx: &mut Ctx<'_>, role: &str, decoding: bool) -> Result<Reply> {
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
