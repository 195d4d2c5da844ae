//! The KMS seal's rollback anchor: a DynamoDB item written with
//! check-and-set by the anchor's own IAM principal, and the audit
//! checkpoints kept next to it.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::aws::{aws_error_kind, unreachable, AwsEndpoint};
use super::{KmsSeal, CONTEXT_DEPLOYMENT, CONTEXT_KEY};
use crate::seal::{Advance, Anchor, Head, SealError, SealFuture};
use crate::sigv4::Credentials;

/// `[seal.anchor]`: the keyring's rollback anchor in a DynamoDB table.
///
/// The record is written with check-and-set (`ConditionExpression`) using the
/// credentials of the anchor's own IAM principal, never the instance role's:
/// the host holds the instance role, and could rewrite a record the role can
/// write. Those credentials are in `credentials_ciphertext`, encrypted under
/// the seal's KMS key with the EncryptionContext
/// `{"pii-enclave": "anchor-credentials-v1", "pii-enclave:deployment": <id>}`;
/// the key policy releases them only to the attested enclave. The table's
/// resource policy must allow writes to that principal alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoAnchorConfig {
    /// Table with a string partition key `deployment`.
    pub table: String,
    /// Default `https://dynamodb.<region>.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Base64 KMS `CiphertextBlob` of `{"AccessKeyId": …, "SecretAccessKey": …}`
    /// (`aws kms encrypt --encryption-context pii-enclave=anchor-credentials-v1,pii-enclave:deployment=<id>`).
    pub credentials_ciphertext: String,
    /// Set once the first keyring is anchored: a missing record is then a
    /// rollback (the record was deleted), not a new deployment.
    #[serde(default)]
    pub expect_record: bool,
}

/// The EncryptionContext value of the anchor's sealed credentials.
pub const ANCHOR_CREDENTIALS_CONTEXT: &str = "anchor-credentials-v1";

impl KmsSeal {
    /// The anchor principal's credentials, released by KMS (attested Decrypt)
    /// to this enclave only; kept in memory.
    async fn anchor_credentials(&self) -> Result<Credentials, SealError> {
        let mut g = self.anchor_creds.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let a = self.cfg.anchor.as_ref().ok_or(SealError::Malformed)?;
        let blob = B64.decode(a.credentials_ciphertext.trim()).map_err(|_| {
            SealError::Denied("seal.anchor.credentials_ciphertext is not base64".into())
        })?;
        let ctx = BTreeMap::from([
            (CONTEXT_KEY, ANCHOR_CREDENTIALS_CONTEXT.to_owned()),
            (CONTEXT_DEPLOYMENT, self.cfg.deployment_id.clone()),
        ]);
        let pt = self.decrypt_in(&blob, ctx).await?;
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Sealed {
            access_key_id: String,
            secret_access_key: String,
            #[serde(default)]
            session_token: Option<String>,
        }
        let c: Sealed = serde_json::from_slice(&pt).map_err(|_| {
            SealError::Denied(
                "the anchor credentials are not {\"AccessKeyId\", \"SecretAccessKey\"} JSON".into(),
            )
        })?;
        let creds = Credentials {
            access_key_id: c.access_key_id,
            secret_access_key: Zeroizing::new(c.secret_access_key),
            session_token: c.session_token,
        };
        *g = Some(creds.clone());
        Ok(creds)
    }

    /// One DynamoDB call with the anchor's credentials; `true` when a
    /// condition check failed (a lost compare-and-swap).
    async fn dynamo_call(&self, op: &str, body: Value) -> Result<(bool, Value), SealError> {
        let (url, host) = self.dynamo.as_ref().ok_or(SealError::Malformed)?;
        let creds = self.anchor_credentials().await?;
        let to = AwsEndpoint {
            url,
            host,
            service: "dynamodb",
            content_type: "application/x-amz-json-1.0",
        };
        let body = serde_json::to_vec(&body).map_err(|_| SealError::Malformed)?;
        let (status, v) = self
            .signed_post(&to, &creds, &format!("DynamoDB_20120810.{op}"), &body)
            .await
            .map_err(|e| unreachable(format!("DynamoDB {op}: {e}")))?;
        if status.is_success() {
            return Ok((false, v));
        }
        let kind = aws_error_kind(&v);
        if kind == "ConditionalCheckFailedException" {
            return Ok((true, v));
        }
        if matches!(
            kind.as_str(),
            "UnrecognizedClientException" | "InvalidSignatureException" | "ExpiredTokenException"
        ) {
            *self.anchor_creds.lock().await = None;
        }
        Err(unreachable(format!("DynamoDB {op}: {status} {kind}")))
    }

    /// A consistent read of the anchor table's item `key` (the whole answer).
    async fn get_item(&self, key: &str) -> Result<Value, SealError> {
        let req = json!({
            "TableName": self.anchor_table(),
            "Key": {"deployment": {"S": key}},
            "ConsistentRead": true,
        });
        Ok(self.dynamo_call("GetItem", req).await?.1)
    }

    /// The audit checkpoints' item: `<deployment>#audit-checkpoints` (the
    /// anchor user's `dynamodb:LeadingKeys` must allow it too).
    fn checkpoints_key(&self) -> String {
        format!("{}#audit-checkpoints", self.cfg.deployment_id)
    }

    fn anchor_table(&self) -> &str {
        self.cfg
            .anchor
            .as_ref()
            .map(|a| a.table.as_str())
            .unwrap_or("")
    }
}

/// The rollback anchor's DynamoDB item (`GetItem`'s `Item`), strictly.
pub fn parse_anchor_item(item: Option<&Value>) -> Result<Option<Head>, SealError> {
    let Some(item) = item.filter(|i| !i.is_null()) else {
        return Ok(None);
    };
    let malformed = || SealError::Unreachable("the rollback anchor item is malformed".into());
    let generation = item["generation"]["N"]
        .as_str()
        .and_then(|n| n.parse().ok())
        .ok_or_else(malformed)?;
    let hash = item["blob_sha256"]["S"]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
        .ok_or_else(malformed)?;
    Ok(Some(Head { generation, hash }))
}

impl Anchor for KmsSeal {
    fn expects_record(&self) -> bool {
        self.cfg.anchor.as_ref().is_some_and(|a| a.expect_record)
    }

    fn describe(&self) -> String {
        format!(
            "DynamoDB {}/{}",
            self.anchor_table(),
            self.cfg.deployment_id
        )
    }

    fn read(&self) -> SealFuture<'_, Option<Head>> {
        Box::pin(async move {
            let v = self.get_item(&self.cfg.deployment_id).await?;
            parse_anchor_item(v.get("Item"))
        })
    }

    fn advance(&self, expected: Option<Head>, next: Head) -> SealFuture<'_, Advance> {
        Box::pin(async move {
            let mut req = json!({
                "TableName": self.anchor_table(),
                "Item": {
                    "deployment": {"S": self.cfg.deployment_id},
                    "generation": {"N": next.generation.to_string()},
                    "blob_sha256": {"S": hex::encode(next.hash)},
                },
            });
            match expected {
                None => {
                    req["ConditionExpression"] = "attribute_not_exists(#d)".into();
                    // Only names the expression uses may be given.
                    req["ExpressionAttributeNames"] = json!({"#d": "deployment"});
                }
                Some(e) => {
                    req["ConditionExpression"] = "#g = :g AND #h = :h".into();
                    req["ExpressionAttributeNames"] =
                        json!({"#g": "generation", "#h": "blob_sha256"});
                    req["ExpressionAttributeValues"] = json!({
                        ":g": {"N": e.generation.to_string()},
                        ":h": {"S": hex::encode(e.hash)},
                    });
                }
            }
            let (lost, _) = self.dynamo_call("PutItem", req).await?;
            if lost {
                Ok(Advance::Conflict(Anchor::read(self).await?))
            } else {
                Ok(Advance::Done)
            }
        })
    }

    fn read_checkpoints(&self) -> SealFuture<'_, (u64, Option<Vec<u8>>)> {
        Box::pin(async move {
            let v = self.get_item(&self.checkpoints_key()).await?;
            let Some(item) = v.get("Item").filter(|i| !i.is_null()) else {
                return Ok((0, None));
            };
            let malformed =
                || SealError::Unreachable("the audit checkpoint item is malformed".into());
            let n = item["n"]["N"]
                .as_str()
                .and_then(|n| n.parse().ok())
                .ok_or_else(malformed)?;
            let set = item["checkpoints"]["S"].as_str().ok_or_else(malformed)?;
            Ok((n, Some(set.as_bytes().to_vec())))
        })
    }

    fn write_checkpoints(&self, version: u64, bytes: Vec<u8>) -> SealFuture<'_, bool> {
        Box::pin(async move {
            let set = String::from_utf8(bytes).map_err(|_| SealError::Malformed)?;
            let mut req = json!({
                "TableName": self.anchor_table(),
                "Item": {
                    "deployment": {"S": self.checkpoints_key()},
                    "n": {"N": (version + 1).to_string()},
                    "checkpoints": {"S": set},
                },
            });
            if version == 0 {
                req["ConditionExpression"] = "attribute_not_exists(#d)".into();
                req["ExpressionAttributeNames"] = json!({"#d": "deployment"});
            } else {
                req["ConditionExpression"] = "#n = :n".into();
                req["ExpressionAttributeNames"] = json!({"#n": "n"});
                req["ExpressionAttributeValues"] = json!({":n": {"N": version.to_string()}});
            }
            let (lost, _) = self.dynamo_call("PutItem", req).await?;
            Ok(!lost)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_items_are_parsed_strictly() {
        let h = "ab".repeat(32);
        let good =
            json!({"deployment": {"S": "d"}, "generation": {"N": "7"}, "blob_sha256": {"S": h}});
        let head = parse_anchor_item(Some(&good)).unwrap().unwrap();
        assert_eq!(head.generation, 7);
        assert_eq!(head.hash, [0xab; 32]);
        assert_eq!(parse_anchor_item(None).unwrap(), None);
        assert_eq!(parse_anchor_item(Some(&Value::Null)).unwrap(), None);
        for bad in [
            json!({"generation": {"S": "7"}, "blob_sha256": {"S": h}}),
            json!({"generation": {"N": "-1"}, "blob_sha256": {"S": h}}),
            json!({"generation": {"N": "7"}, "blob_sha256": {"S": "ab"}}),
            json!({"generation": {"N": "7"}, "blob_sha256": {"S": "zz".repeat(32)}}),
            json!({"generation": {"N": "7"}}),
            json!("garbage"),
        ] {
            assert!(parse_anchor_item(Some(&bad)).is_err(), "{bad}");
        }
    }
}
