//! Rego policy decisions, evaluated in-process with `regorus`.
//!
//! The shipped policy is `policy/opa/attestation.rego` (package
//! `pii.attestation`): rules `allow` (bool) and `deny` (set of reasons).
//! Users can supply their own with the same two rules.

use crate::attestation::{verify, Policy};

/// The shipped deployment gate.
pub const ATTESTATION_REGO: &str = include_str!("../../policy/opa/attestation.rego");

/// A policy decision.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reasons: Vec<String>,
}

/// Evaluate `rego` (package `package_path`, e.g. `data.pii.attestation`) on `input`.
pub fn evaluate(
    rego: &str,
    package_path: &str,
    input: &serde_json::Value,
) -> Result<Decision, String> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy("policy.rego".into(), rego.into())
        .map_err(|e| format!("policy: {e}"))?;
    let input =
        regorus::Value::from_json_str(&input.to_string()).map_err(|e| format!("input: {e}"))?;
    engine.set_input(input);
    let allow = engine
        .eval_rule(format!("{package_path}.allow"))
        .map_err(|e| format!("evaluating allow: {e}"))?;
    let allow = allow.as_bool().copied().unwrap_or(false);
    let deny = engine
        .eval_rule(format!("{package_path}.deny"))
        .unwrap_or(regorus::Value::Undefined);
    let mut reasons: Vec<String> = match deny.to_json_str() {
        Ok(s) => serde_json::from_str::<Vec<String>>(&s).unwrap_or_default(),
        Err(_) => vec![],
    };
    reasons.sort();
    Ok(Decision { allow, reasons })
}

/// Fill `input.attestation` from a real verification of `doc` at `at`
/// against `input.expected`, so the policy decides on verified facts.
pub fn attach_attestation(
    input: &mut serde_json::Value,
    doc: &[u8],
    mut policy: Policy,
) -> Result<(), String> {
    if let Some(exp) = input.get("expected") {
        policy.expected_pcrs = crate::attestation::parse_expected(exp)?;
    }
    let att = match verify(doc, &policy) {
        Ok(v) => serde_json::json!({
            "verified": true,
            "module_id": v.doc.module_id,
            "pcrs": v.doc.pcrs.iter().map(|(k, v)| (format!("PCR{k}"), serde_json::json!(hex::encode(v)))).collect::<serde_json::Map<_, _>>(),
            "debug_mode": v.debug_mode,
        }),
        Err(e) => serde_json::json!({"verified": false, "step": e.step(), "reason": e.to_string()}),
    };
    input["attestation"] = att;
    Ok(())
}
