//! Key-policy evaluation, the subset KMS key policies for enclaves use.
//!
//! Semantics follow IAM: an explicit `Deny` wins; otherwise some `Allow`
//! must match; otherwise the request is denied. A statement matches when its
//! principal, action and every condition match. Within one condition
//! operator, all keys must match (AND); within one key, any listed value
//! (OR). Negated operators (`StringNotEquals*`) match when the key is
//! absent. The account-root principal (`arn:aws:iam::<acct>:root`) stands
//! for every principal of that account, as if IAM allowed everything — the
//! conservative assumption for testing that Deny statements do their job.
//!
//! Unknown condition operators make the policy invalid (KMS would refuse
//! `PutKeyPolicy` too), so a typo cannot silently drop a condition.

use std::collections::BTreeMap;

use serde_json::Value;

const OPERATORS: &[&str] = &[
    "StringEquals",
    "StringEqualsIgnoreCase",
    "StringNotEquals",
    "StringNotEqualsIgnoreCase",
    "StringLike",
    "Null",
];

/// Condition keys of one request, e.g. `kms:RecipientAttestation:PCR0` →
/// lowercase hex. Keys compare case-insensitively, as in IAM.
pub type Context = BTreeMap<String, String>;

fn as_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    }
}

/// A key policy this evaluator does not understand (KMS answers
/// `MalformedPolicyDocumentException`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("policy has no Statement")]
    NoStatement,
    #[error("Effect must be Allow or Deny")]
    Effect,
    #[error("statement has no Principal")]
    NoPrincipal,
    #[error("statement has no Action")]
    NoAction,
    #[error("Condition must be an object")]
    ConditionNotObject,
    #[error("unsupported condition operator {0}")]
    Operator(String),
    #[error("{0} must map condition keys to values")]
    OperatorValues(String),
    #[error("no such key")]
    NoSuchKey,
    #[error("random number generator failed")]
    Random,
}

fn statements(policy: &Value) -> Result<Vec<&Value>, PolicyError> {
    match policy.get("Statement") {
        Some(s) => Ok(as_list(s)),
        None => Err(PolicyError::NoStatement),
    }
}

/// Check a policy document is one this evaluator understands.
pub fn validate(policy: &Value) -> Result<(), PolicyError> {
    for s in statements(policy)? {
        match s.get("Effect").and_then(Value::as_str) {
            Some("Allow" | "Deny") => {}
            _ => return Err(PolicyError::Effect),
        }
        if s.get("Principal").is_none() {
            return Err(PolicyError::NoPrincipal);
        }
        if s.get("Action").is_none() {
            return Err(PolicyError::NoAction);
        }
        if let Some(c) = s.get("Condition") {
            let c = c.as_object().ok_or(PolicyError::ConditionNotObject)?;
            for (op, keys) in c {
                if !OPERATORS.contains(&op.as_str()) {
                    return Err(PolicyError::Operator(op.clone()));
                }
                if !keys.is_object() {
                    return Err(PolicyError::OperatorValues(op.clone()));
                }
            }
        }
    }
    Ok(())
}

fn glob(pattern: &str, s: &str) -> bool {
    // `*` any run, `?` one character; case-insensitive (actions are).
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = s.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn account_of(arn: &str) -> Option<&str> {
    arn.split(':').nth(4)
}

fn principal_matches(p: &Value, caller: &str) -> bool {
    let one = |v: &Value| match v.as_str() {
        Some("*") => true,
        Some(s) if s.ends_with(":root") => account_of(s) == account_of(caller),
        Some(s) if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) => {
            account_of(caller) == Some(s)
        }
        Some(s) => s == caller,
        None => false,
    };
    match p {
        Value::String(s) => s == "*",
        Value::Object(m) => m
            .get("AWS")
            .is_some_and(|v| as_list(v).into_iter().any(one)),
        _ => false,
    }
}

fn lookup<'a>(ctx: &'a Context, key: &str) -> Option<&'a str> {
    ctx.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

fn condition_matches(op: &str, key: &str, want: &Value, ctx: &Context) -> bool {
    let have = lookup(ctx, key);
    let wants: Vec<&str> = as_list(want)
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    let any = |f: &dyn Fn(&str, &str) -> bool| have.is_some_and(|h| wants.iter().any(|w| f(h, w)));
    match op {
        "StringEquals" => any(&|h, w| h == w),
        "StringEqualsIgnoreCase" => any(&|h, w| h.eq_ignore_ascii_case(w)),
        "StringNotEquals" => !any(&|h, w| h == w),
        "StringNotEqualsIgnoreCase" => !any(&|h, w| h.eq_ignore_ascii_case(w)),
        "StringLike" => any(&|h, w| glob(w, h)),
        "Null" => {
            let absent = have.is_none();
            wants.iter().any(|w| (*w == "true") == absent)
        }
        _ => false,
    }
}

fn statement_matches(s: &Value, caller: &str, action: &str, ctx: &Context) -> bool {
    let principal = s
        .get("Principal")
        .is_some_and(|p| principal_matches(p, caller));
    let act = s.get("Action").is_some_and(|a| {
        as_list(a)
            .into_iter()
            .filter_map(Value::as_str)
            .any(|pat| glob(pat, action))
    });
    let cond = match s.get("Condition").and_then(Value::as_object) {
        None => true,
        Some(c) => c.iter().all(|(op, keys)| {
            keys.as_object().is_some_and(|m| {
                m.iter()
                    .all(|(k, want)| condition_matches(op, k, want, ctx))
            })
        }),
    };
    principal && act && cond
}

/// Outcome of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by the statement with this Sid (or index).
    ExplicitDeny(String),
    ImplicitDeny,
}

/// Evaluate `action` (`kms:Decrypt`) by `caller` (an IAM ARN) under `policy`.
pub fn evaluate(policy: &Value, caller: &str, action: &str, ctx: &Context) -> Decision {
    let Ok(stmts) = statements(policy) else {
        return Decision::ImplicitDeny;
    };
    let mut allowed = false;
    for (i, s) in stmts.iter().enumerate() {
        if !statement_matches(s, caller, action, ctx) {
            continue;
        }
        match s.get("Effect").and_then(Value::as_str) {
            Some("Deny") => {
                let sid = s
                    .get("Sid")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("statement {i}"));
                return Decision::ExplicitDeny(sid);
            }
            Some("Allow") => allowed = true,
            _ => {}
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ROLE: &str = "arn:aws:iam::123456789012:role/pii-node";

    fn ctx(pairs: &[(&str, &str)]) -> Context {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn iam_semantics() {
        let p = json!({"Statement": [
            {"Sid": "A", "Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": ["kms:Decrypt"],
             "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "AB"}}},
            {"Sid": "D", "Effect": "Deny", "Principal": {"AWS": ROLE}, "Action": "kms:*",
             "Resource": "*", "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:PCR0": "ab"}}}
        ]});
        validate(&p).unwrap();
        let good = ctx(&[("kms:RecipientAttestation:PCR0", "ab")]);
        assert_eq!(evaluate(&p, ROLE, "kms:Decrypt", &good), Decision::Allow);
        assert_eq!(
            evaluate(
                &p,
                ROLE,
                "kms:Decrypt",
                &ctx(&[("kms:RecipientAttestation:PCR0", "cd")])
            ),
            Decision::ExplicitDeny("D".into())
        );
        // Negated operators match an absent key.
        assert_eq!(
            evaluate(&p, ROLE, "kms:Decrypt", &Context::new()),
            Decision::ExplicitDeny("D".into())
        );
        assert_eq!(
            evaluate(&p, ROLE, "kms:Encrypt", &good),
            Decision::ImplicitDeny
        );
        assert_eq!(
            evaluate(
                &p,
                "arn:aws:iam::123456789012:role/other",
                "kms:Decrypt",
                &good
            ),
            Decision::ImplicitDeny
        );
        let root = json!({"Statement": {"Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*"}});
        assert_eq!(evaluate(&root, ROLE, "kms:Decrypt", &good), Decision::Allow);
        assert_eq!(
            evaluate(
                &root,
                "arn:aws:iam::999999999999:role/x",
                "kms:Decrypt",
                &good
            ),
            Decision::ImplicitDeny
        );
        let null = json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:Gen*",
            "Condition": {"Null": {"kms:RecipientAttestation:PCR0": "false"}}}});
        assert_eq!(
            evaluate(&null, ROLE, "kms:GenerateDataKey", &good),
            Decision::Allow
        );
        assert_eq!(
            evaluate(&null, ROLE, "kms:GenerateDataKey", &Context::new()),
            Decision::ImplicitDeny
        );
        assert!(
            validate(&json!({"Statement": [{"Effect": "Allow", "Principal": "*",
            "Action": "kms:*", "Condition": {"StringEqualz": {}}}]}))
            .is_err()
        );
        assert!(glob("kms:*", "kms:Decrypt") && glob("KMS:decrypt", "kms:Decrypt"));
        assert!(!glob("kms:Decrypt", "kms:DecryptX") && glob("a*b*c", "aXXbYc"));
    }
}
