//! Rego policy decisions, evaluated in-process with `regorus`.
//!
//! The shipped policy is `policy/opa/attestation.rego` (package
//! `pii.attestation`): rules `allow` (bool) and `deny` (set of reasons).
//! Users can supply their own with the same two rules.

use crate::attestation::{verify, Policy};

/// The shipped deployment gate.
pub const ATTESTATION_REGO: &str = include_str!("../../policy/opa/attestation.rego");

/// An engine error (regorus reports `anyhow` errors; kept with their causes).
type EngineError = Box<dyn std::error::Error + Send + Sync>;

/// Why a policy could not be evaluated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The Rego source does not parse or compile.
    #[error("policy: {source}")]
    Policy { source: EngineError },
    /// The input is not a value the engine takes.
    #[error("input: {source}")]
    Input { source: EngineError },
    /// Evaluating a rule failed (not: the rule is false or undefined).
    #[error("evaluating {rule}: {source}")]
    Eval {
        rule: &'static str,
        source: EngineError,
    },
    /// `input.expected` is not a set of expected PCRs.
    #[error(transparent)]
    Expected(#[from] crate::attestation::ExpectedPcrsError),
}

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
) -> Result<Decision, PolicyError> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy("policy.rego".into(), rego.into())
        .map_err(|e| PolicyError::Policy { source: e.into() })?;
    let input = regorus::Value::from_json_str(&input.to_string())
        .map_err(|e| PolicyError::Input { source: e.into() })?;
    engine.set_input(input);
    let allow = engine
        .eval_rule(format!("{package_path}.allow"))
        .map_err(|e| PolicyError::Eval {
            rule: "allow",
            source: e.into(),
        })?;
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
) -> Result<(), PolicyError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_what_failed() {
        let input = serde_json::json!({});
        let e = evaluate("package p\nallow := ", "data.p", &input).unwrap_err();
        assert!(matches!(e, PolicyError::Policy { .. }), "{e:?}");
        assert!(e.to_string().starts_with("policy: "), "{e}");
        let mut bad = serde_json::json!({"expected": {"PCR0": "zz"}});
        let e = attach_attestation(&mut bad, b"", Policy::aws(0)).unwrap_err();
        assert!(
            matches!(
                &e,
                PolicyError::Expected(crate::attestation::ExpectedPcrsError::NotHex { key, .. })
                    if key == "PCR0"
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "PCR0: not hex");
    }
}
