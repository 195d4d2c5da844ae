//! The AWS WAFv2 target: four IP sets (enforce and shadow, IPv4 and IPv6)
//! that a web ACL references from a Block rule and a Count rule.
//!
//! JSON 1.1 protocol (`X-Amz-Target: AWSWAF_20190729.*`) signed with SigV4
//! by AWS's own signer crate (aws-sigv4). An IP set holds at most 10,000
//! addresses; `UpdateIPSet` replaces a set's whole list under its
//! `LockToken` (a stale token is re-read and retried), and writes are spaced
//! about a second apart to stay inside WAF's control-plane quota. Sets that
//! do not exist are created.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{json, Value};

use super::{http, Lists, WafError, OWNER_MARK};

/// Addresses per IP set (AWS's limit).
pub const IP_SET_CAPACITY: usize = 10_000;

pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl Credentials {
    /// From AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN.
    pub fn from_env() -> Option<Self> {
        Some(Credentials {
            access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok()?,
            secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok()?,
            session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
        })
    }
}

pub struct WafV2 {
    http: http::Client,
    endpoint: String,
    region: String,
    /// REGIONAL or CLOUDFRONT.
    pub scope: String,
    /// Sets are named `<prefix>-enforce-v4` etc.
    pub prefix: String,
    creds: Credentials,
    /// Pause between writes.
    pub write_gap: Duration,
    last_write: Option<std::time::Instant>,
}

#[derive(Debug, Clone)]
struct IpSet {
    name: String,
    id: String,
    lock: String,
    addresses: Vec<String>,
}

const SETS: [(&str, bool); 4] = [
    ("enforce-v4", true),
    ("enforce-v6", true),
    ("shadow-v4", false),
    ("shadow-v6", false),
];

impl WafV2 {
    /// `endpoint`: `https://wafv2.<region>.amazonaws.com` unless overridden (tests: moto).
    pub fn new(
        endpoint: Option<String>,
        region: &str,
        scope: &str,
        prefix: &str,
        creds: Credentials,
    ) -> Result<Self, WafError> {
        let endpoint = endpoint.unwrap_or_else(|| format!("https://wafv2.{region}.amazonaws.com"));
        // Signed requests carry the session token: plain HTTP only to a
        // local test server (moto on the loopback interface).
        let http = http::client("wafv2", &endpoint)?;
        Ok(WafV2 {
            http,
            endpoint,
            region: region.to_owned(),
            scope: scope.to_owned(),
            prefix: prefix.to_owned(),
            creds,
            write_gap: Duration::from_millis(1100),
            last_write: None,
        })
    }

    fn err(&self, message: String) -> WafError {
        WafError::Target {
            target: format!("wafv2 {}", self.endpoint),
            message,
        }
    }

    async fn call(&self, op: &str, body: Value) -> Result<Value, WafError> {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let payload = serde_json::to_vec(&body).map_err(|e| self.err(e.to_string()))?;
        let target = format!("AWSWAF_20190729.{op}");
        let url = format!("{}/", self.endpoint.trim_end_matches('/'));
        let host = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_owned();
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target.as_str()),
            ("host", host.as_str()),
        ];
        let identity = aws_credential_types::Credentials::new(
            &self.creds.access_key_id,
            &self.creds.secret_access_key,
            self.creds.session_token.clone(),
            None,
            "pii-fraud",
        )
        .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("wafv2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| self.err(format!("signing: {e}")))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(&payload),
        )
        .map_err(|e| self.err(format!("signing: {e}")))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| self.err(format!("signing: {e}")))?
            .into_parts();
        let mut req = hyper::Request::post(&url);
        for (k, v) in headers.iter().copied().filter(|(k, _)| *k != "host") {
            req = req.header(k, v);
        }
        for (k, v) in instructions.headers() {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| self.err(e.to_string()))?;
        let (status, _, bytes) =
            http::send(&self.http, &format!("wafv2 {}", self.endpoint), op, req).await?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            let kind = v["__type"].as_str().unwrap_or("");
            let msg = v["message"]
                .as_str()
                .or(v["Message"].as_str())
                .unwrap_or("");
            return Err(self.err(format!("{op}: HTTP {status} {kind} {msg}")));
        }
        Ok(v)
    }

    /// Every IP set in the scope: name, id, description.
    async fn sets(&self) -> Result<Vec<(String, String, String)>, WafError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut body = json!({ "Scope": self.scope, "Limit": 100 });
            if let Some(m) = &marker {
                body["NextMarker"] = json!(m);
            }
            let v = self.call("ListIPSets", body).await?;
            for s in v["IPSets"].as_array().into_iter().flatten() {
                if let (Some(n), Some(i)) = (s["Name"].as_str(), s["Id"].as_str()) {
                    let d = s["Description"].as_str().unwrap_or_default();
                    out.push((n.to_owned(), i.to_owned(), d.to_owned()));
                }
            }
            match v["NextMarker"].as_str() {
                Some(m)
                    if !m.is_empty() && v["IPSets"].as_array().is_some_and(|a| !a.is_empty()) =>
                {
                    marker = Some(m.to_owned())
                }
                _ => return Ok(out),
            }
        }
    }

    async fn get(&self, name: &str, id: &str) -> Result<IpSet, WafError> {
        let v = self
            .call(
                "GetIPSet",
                json!({ "Name": name, "Scope": self.scope, "Id": id }),
            )
            .await?;
        Ok(IpSet {
            name: name.to_owned(),
            id: id.to_owned(),
            lock: v["LockToken"].as_str().unwrap_or_default().to_owned(),
            addresses: v["IPSet"]["Addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
        })
    }

    async fn pace(&mut self) {
        if let Some(t) = self.last_write {
            let since = t.elapsed();
            if since < self.write_gap {
                tokio::time::sleep(self.write_gap - since).await;
            }
        }
        self.last_write = Some(std::time::Instant::now());
    }

    /// The four sets, created when missing.
    async fn ensure(&mut self) -> Result<Vec<IpSet>, WafError> {
        let existing = self.sets().await?;
        let mut out = Vec::new();
        for (suffix, _) in SETS {
            let name = format!("{}-{suffix}", self.prefix);
            let id = match existing.iter().find(|(n, _, _)| *n == name) {
                // A set of that name that someone else made is theirs.
                Some((_, _, d)) if d != OWNER_MARK => {
                    return Err(self.err(format!(
                        "IP set {name} exists and was not made by waf-sync (its Description is not {OWNER_MARK:?}): pick another --set-prefix, or hand the set over by setting that Description"
                    )))
                }
                Some((_, id, _)) => id.clone(),
                None => {
                    self.pace().await;
                    let version = if suffix.ends_with("v6") {
                        "IPV6"
                    } else {
                        "IPV4"
                    };
                    let v = self
                        .call(
                            "CreateIPSet",
                            json!({ "Name": name, "Scope": self.scope, "IPAddressVersion": version, "Addresses": [],
                                    "Description": OWNER_MARK }),
                        )
                        .await?;
                    v["Summary"]["Id"]
                        .as_str()
                        .ok_or_else(|| self.err("CreateIPSet: no Id".into()))?
                        .to_owned()
                }
            };
            out.push(self.get(&name, &id).await?);
        }
        Ok(out)
    }

    pub async fn current(&mut self) -> Result<Lists, WafError> {
        let sets = self.ensure().await?;
        let mut lists = Lists::default();
        for (set, (_, enforce)) in sets.iter().zip(SETS) {
            let l = if enforce {
                &mut lists.enforce
            } else {
                &mut lists.shadow
            };
            l.extend(set.addresses.iter().cloned());
        }
        Ok(lists)
    }

    /// Writes each set whose contents differ (one call per changed set).
    pub async fn apply(&mut self, want: &Lists) -> Result<usize, WafError> {
        let sets = self.ensure().await?;
        let mut writes = 0;
        for (set, (suffix, enforce)) in sets.into_iter().zip(SETS) {
            let v6 = suffix.ends_with("v6");
            let src = if enforce { &want.enforce } else { &want.shadow };
            let mut addrs: Vec<String> = src
                .iter()
                .filter(|a| a.contains(':') == v6)
                .cloned()
                .collect();
            addrs.truncate(IP_SET_CAPACITY);
            let mut have = set.addresses.clone();
            have.sort();
            if have == addrs {
                continue;
            }
            let mut lock = set.lock.clone();
            for attempt in 0..3 {
                self.pace().await;
                let r = self
                    .call(
                        "UpdateIPSet",
                        json!({ "Name": set.name, "Scope": self.scope, "Id": set.id, "Addresses": addrs, "LockToken": lock }),
                    )
                    .await;
                match r {
                    Ok(_) => break,
                    Err(WafError::Target { message, .. })
                        if message.contains("WAFOptimisticLockException") && attempt < 2 =>
                    {
                        lock = self.get(&set.name, &set.id).await?.lock;
                    }
                    Err(e) => return Err(e),
                }
            }
            writes += 1;
        }
        Ok(writes)
    }
}
