//! `host-proxy kms policy`: a KMS key policy that releases the keyring's
//! data key only to an enclave with the recorded measurements.
//!
//! The grant to the enclave's instance role is conditioned on
//! `kms:RecipientAttestation:PCRn` (case-insensitive string equality, as AWS
//! documents), and an explicit **Deny** covers the same role when a request
//! carries no attestation (`Null` condition), and one more per bound PCR
//! when a request's value differs (`StringNotEqualsIgnoreCase`, which also
//! matches a missing key). Without the Denies, an IAM policy on the role
//! (which the account-root statement honours) could let the *host* call
//! `Decrypt` and get the plaintext key back, or another image unseal. The
//! KMS emulator in the tests evaluates these exact documents.
//! Verify the record first (`eif record verify`, `eif compare --record-key`);
//! this command only reads it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};

#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Measurement record (measurements/<service>/<release>.json), or
    /// `nitro-cli describe-eif` output, or {"PCR0": "hex", …}.
    #[arg(long)]
    pub record: PathBuf,
    /// The parent instance's IAM role (the enclave calls KMS with its credentials).
    #[arg(long)]
    pub role_arn: String,
    /// AWS account that administers the key (gets the standard root statement).
    #[arg(long)]
    pub account_id: String,
    /// PCRs to bind (default: 0, 1, 2, and 8 when the record has it).
    #[arg(long, value_delimiter = ',')]
    pub pcrs: Vec<u8>,
}

/// Why no key policy can be made from a record and the arguments.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The record cannot be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not JSON: {source}")]
    NotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the record is not a JSON object")]
    NotAnObject,
    /// A `PCRn` entry that is not a string.
    #[error("{key} is not a string")]
    NotAString { key: String },
    /// A `PCRn` entry that is not a SHA-384 digest in hex.
    #[error("{key}: expected 96 hex digits (SHA-384)")]
    NotSha384 { key: String, value: String },
    #[error("--account-id must be 12 digits")]
    AccountId { account_id: String },
    #[error("--role-arn must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)")]
    RoleArn { role_arn: String },
    /// The PCRs to bind leave out PCR0.
    #[error("bind at least PCR0 (the image)")]
    NoPcr0,
    /// A PCR to bind that the record does not have.
    #[error("the record has no PCR{index}")]
    MissingPcr { index: u8 },
    /// A PCR to bind that is all zeros.
    #[error("PCR{index} is all zeros (a debug-mode enclave); never bind a key to it")]
    ZeroPcr { index: u8 },
}

fn pcrs_of(v: &Value) -> Result<BTreeMap<u8, String>, PolicyError> {
    let obj = v
        .get("Measurements")
        .unwrap_or(v)
        .as_object()
        .ok_or(PolicyError::NotAnObject)?;
    let mut out = BTreeMap::new();
    for (k, val) in obj {
        let Some(n) = k.strip_prefix("PCR").and_then(|n| n.parse::<u8>().ok()) else {
            continue;
        };
        let h = val
            .as_str()
            .ok_or_else(|| PolicyError::NotAString { key: k.clone() })?
            .to_ascii_lowercase();
        if h.len() != 96 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PolicyError::NotSha384 {
                key: k.clone(),
                value: h,
            });
        }
        out.insert(n, h);
    }
    Ok(out)
}

/// Build the policy document.
pub fn policy_for(record: &Value, a: &PolicyArgs) -> Result<Value, PolicyError> {
    if a.account_id.len() != 12 || !a.account_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PolicyError::AccountId {
            account_id: a.account_id.clone(),
        });
    }
    if !a.role_arn.starts_with("arn:aws") || !a.role_arn.contains(":role/") {
        return Err(PolicyError::RoleArn {
            role_arn: a.role_arn.clone(),
        });
    }
    let all = pcrs_of(record)?;
    let wanted: Vec<u8> = if a.pcrs.is_empty() {
        [0u8, 1, 2, 8]
            .into_iter()
            .filter(|n| all.contains_key(n))
            .collect()
    } else {
        a.pcrs.clone()
    };
    if !wanted.contains(&0) {
        return Err(PolicyError::NoPcr0);
    }
    let mut cond = serde_json::Map::new();
    for n in &wanted {
        let v = all.get(n).ok_or(PolicyError::MissingPcr { index: *n })?;
        if v.bytes().all(|b| b == b'0') {
            return Err(PolicyError::ZeroPcr { index: *n });
        }
        cond.insert(format!("kms:RecipientAttestation:PCR{n}"), v.clone().into());
    }
    let actions = json!(["kms:Decrypt", "kms:GenerateDataKey"]);
    // Every action that yields or moves key material, for every principal
    // (admins included): none may happen without the attestation below.
    // ReEncrypt* and CreateGrant never carry a Recipient, so they are always
    // denied; they would otherwise move the data key to a key, or a grantee,
    // the host controls.
    let guarded = json!([
        "kms:Decrypt",
        "kms:GenerateDataKey*",
        "kms:ReEncrypt*",
        "kms:CreateGrant"
    ]);
    let mut statements = vec![
        json!({
            "Sid": "KeyAdministration",
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{}:root", a.account_id)},
            "Action": "kms:*",
            "Resource": "*"
        }),
        json!({
            "Sid": "EnclaveWithTheseMeasurementsOnly",
            "Effect": "Allow",
            "Principal": {"AWS": a.role_arn},
            "Action": actions,
            "Resource": "*",
            "Condition": {"StringEqualsIgnoreCase": Value::Object(cond.clone())}
        }),
        // The instance role is the host's: it may never administer the key
        // (change this policy, repoint an alias, disable or delete the key).
        json!({
            "Sid": "DenyKeyAdministrationToTheRole",
            "Effect": "Deny",
            "Principal": {"AWS": a.role_arn},
            "Action": [
                "kms:PutKeyPolicy",
                "kms:CreateAlias",
                "kms:UpdateAlias",
                "kms:DeleteAlias",
                "kms:DisableKey",
                "kms:ScheduleKeyDeletion",
                "kms:UpdateKeyDescription",
                "kms:TagResource",
                "kms:UntagResource"
            ],
            "Resource": "*"
        }),
        // The enclave never encrypts with this key. kms:Encrypt would let the
        // host wrap a data key it chose and serve a keyring it wrote (which
        // the enclave's attested Decrypt would open), so it is denied to
        // every principal, except for the one context the operator needs:
        // sealing the rollback anchor's credentials, which the enclave only
        // decrypts from its measured config.
        json!({
            "Sid": "DenyEncryptExceptAnchorCredentials",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "kms:Encrypt",
            "Resource": "*",
            "Condition": {"StringNotEquals": {"kms:EncryptionContext:pii-enclave": "anchor-credentials-v1"}}
        }),
        json!({
            "Sid": "DenyWithoutAttestation",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": guarded,
            "Resource": "*",
            "Condition": {"Null": {"kms:RecipientAttestation:PCR0": "true"}}
        }),
    ];
    // The account-root statement lets IAM policies grant any principal
    // kms:Decrypt (or ReEncrypt, CreateGrant) too; the Allow above does not
    // stop that. One explicit Deny per PCR does: a request whose PCRn differs
    // (or is absent — negated operators match a missing key) is refused
    // whatever IAM says, for every principal.
    for (k, v) in &cond {
        let n = k.rsplit(':').next().unwrap_or_default();
        statements.push(json!({
            "Sid": format!("DenyOther{n}"),
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": guarded,
            "Resource": "*",
            "Condition": {"StringNotEqualsIgnoreCase": {k.clone(): v.clone()}}
        }));
    }
    Ok(json!({
        "Version": "2012-10-17",
        "Id": "pii-enclave-keyring-seal",
        "Statement": statements
    }))
}

pub fn policy(a: &PolicyArgs) -> Result<Value, PolicyError> {
    let text = std::fs::read(&a.record).map_err(|source| PolicyError::Read {
        path: a.record.clone(),
        source,
    })?;
    let v: Value = serde_json::from_slice(&text).map_err(|source| PolicyError::NotJson {
        path: a.record.clone(),
        source,
    })?;
    policy_for(&v, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/pii-node";

    fn args(pcrs: Vec<u8>) -> PolicyArgs {
        PolicyArgs {
            record: PathBuf::new(),
            role_arn: ROLE_ARN.into(),
            account_id: "123456789012".into(),
            pcrs,
        }
    }

    #[test]
    fn binds_recorded_pcrs_and_denies_unattested_calls() {
        let rec = json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }",
            "PCR0": "A".repeat(96), "PCR1": "b".repeat(96), "PCR2": "c".repeat(96)}});
        let p = policy_for(&rec, &args(vec![])).unwrap();
        let allow = &p["Statement"][1];
        let c = &allow["Condition"]["StringEqualsIgnoreCase"];
        assert_eq!(c["kms:RecipientAttestation:PCR0"], "a".repeat(96));
        assert_eq!(c["kms:RecipientAttestation:PCR2"], "c".repeat(96));
        assert!(c.get("kms:RecipientAttestation:PCR8").is_none());
        assert_eq!(p["Statement"][2]["Sid"], "DenyKeyAdministrationToTheRole");
        assert_eq!(p["Statement"][2]["Principal"]["AWS"], ROLE_ARN);
        assert_eq!(
            p["Statement"][3]["Sid"],
            "DenyEncryptExceptAnchorCredentials"
        );
        assert_eq!(p["Statement"][3]["Principal"]["AWS"], "*");
        let null_deny = &p["Statement"][4];
        assert_eq!(null_deny["Effect"], "Deny");
        assert_eq!(
            null_deny["Condition"]["Null"]["kms:RecipientAttestation:PCR0"],
            "true"
        );
        // One explicit Deny per bound PCR, so IAM grants cannot bypass them.
        let denies: Vec<&Value> = p["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["Condition"].get("StringNotEqualsIgnoreCase").is_some())
            .collect();
        assert_eq!(denies.len(), 3);
        assert!(denies.iter().all(|s| s["Effect"] == "Deny"));
        // Every principal, and every action that yields or moves key material.
        for d in denies.iter().copied().chain([null_deny]) {
            assert_eq!(d["Principal"]["AWS"], "*", "{d}");
            let acts: Vec<&str> = d["Action"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            for a in [
                "kms:Decrypt",
                "kms:GenerateDataKey*",
                "kms:ReEncrypt*",
                "kms:CreateGrant",
            ] {
                assert!(acts.contains(&a), "{a} in {d}");
            }
        }
        assert_eq!(
            denies[0]["Condition"]["StringNotEqualsIgnoreCase"]["kms:RecipientAttestation:PCR0"],
            "a".repeat(96)
        );
    }

    #[test]
    fn refuses_unsafe_or_incomplete_input() {
        let zero = json!({"PCR0": "0".repeat(96), "PCR1": "b".repeat(96)});
        let e = policy_for(&zero, &args(vec![])).unwrap_err();
        assert!(matches!(e, PolicyError::ZeroPcr { index: 0 }), "{e:?}");
        assert!(e.to_string().contains("debug"), "{e}");
        let rec = json!({"PCR0": "a".repeat(96)});
        let e = policy_for(&rec, &args(vec![0, 8])).unwrap_err();
        assert!(matches!(e, PolicyError::MissingPcr { index: 8 }), "{e:?}");
        assert!(e.to_string().contains("no PCR8"), "{e}");
        assert!(matches!(
            policy_for(&rec, &args(vec![1])),
            Err(PolicyError::NoPcr0)
        ));
        assert!(matches!(
            policy_for(&json!({"PCR0": "zz"}), &args(vec![])),
            Err(PolicyError::NotSha384 { key, .. }) if key == "PCR0"
        ));
        assert!(matches!(
            policy_for(&json!({"PCR0": 7}), &args(vec![])),
            Err(PolicyError::NotAString { key }) if key == "PCR0"
        ));
        assert!(matches!(
            policy_for(&json!(["PCR0"]), &args(vec![])),
            Err(PolicyError::NotAnObject)
        ));
        let mut bad = args(vec![]);
        bad.account_id = "12".into();
        assert!(matches!(
            policy_for(&rec, &bad),
            Err(PolicyError::AccountId { account_id }) if account_id == "12"
        ));
        let mut bad = args(vec![]);
        bad.role_arn = "arn:aws:iam::123456789012:user/someone".into();
        assert!(matches!(
            policy_for(&rec, &bad),
            Err(PolicyError::RoleArn { .. })
        ));
    }

    #[test]
    fn unreadable_or_non_json_records_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(vec![]);
        a.record = dir.path().join("missing.json");
        let e = policy(&a).unwrap_err();
        assert!(
            matches!(&e, PolicyError::Read { path, .. } if *path == a.record),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with(&a.record.display().to_string()),
            "{e}"
        );
        a.record = dir.path().join("bad.json");
        std::fs::write(&a.record, "{").unwrap();
        let e = policy(&a).unwrap_err();
        assert!(matches!(e, PolicyError::NotJson { .. }), "{e:?}");
        assert!(e.to_string().contains(": not JSON: "), "{e}");
    }
}
