//! A Transit client: the batch calls a column migration needs, against the
//! sidecar or any Vault/OpenBao, with bounded retries on the answers that
//! mean "try again" (429, 5xx, connection errors) and none on the others.
//!
//! Plaintext and tokens never appear in an error or a log line: errors
//! carry the path, the status and Vault's own `errors` strings.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use zeroize::Zeroizing;

type Client = pii_http_client::Client<Full<Bytes>>;

/// Items per call: at most 6 JSON strings each (value, context and
/// reference, keys and values) stay under Vault's and OpenBao's default
/// limit of 1,000 strings per request.
pub const MAX_ITEMS: usize = 150;

/// Largest answer read per call (150 items of a few hundred bytes are well
/// under 1 MiB); with at most `in_flight` × 50 calls at once this bounds
/// what a hostile server can make the tool buffer.
const MAX_ANSWER: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransitError {
    #[error("{addr}: {why}{}", if *.why == pii_http_client::EndpointError::PlainHttp { " or --insecure-http" } else { "" })]
    Endpoint {
        addr: String,
        why: pii_http_client::EndpointError,
    },
    #[error("mount path {0:?} holds characters other than [A-Za-z0-9-_/]")]
    Mount(String),
    #[error("Transit CA certificates (--ca-cert): {0}")]
    Roots(pii_http_client::RootsError),
    #[error("{path}: TLS: {why} (a private CA? name it with --ca-cert or VAULT_CACERT)")]
    Tls { path: String, why: String },
    #[error("{path}: HTTP {status}: {errors}")]
    Refused {
        path: String,
        status: u16,
        errors: String,
    },
    #[error("{path}: unavailable after {attempts} attempts: {last}")]
    Unavailable {
        path: String,
        attempts: u32,
        last: String,
    },
    #[error("{path}: unexpected answer: {why}")]
    BadAnswer { path: String, why: String },
    #[error("{path}: item {index}: {error}")]
    Item {
        path: String,
        index: usize,
        error: String,
    },
}

impl TransitError {
    /// Refused because the key or path does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, TransitError::Refused { status: 404, .. })
    }
}

/// How the Transit server is reached, beyond its address.
#[derive(Clone, Debug, Default)]
pub struct Connect {
    /// Allow plain http:// to a non-loopback address.
    pub insecure_http: bool,
    /// Verify https:// servers against exactly this PEM file's certificates
    /// (a private CA, as `VAULT_CACERT`); the platform's roots otherwise.
    pub ca_file: Option<PathBuf>,
}

/// Retry policy for answers that mean "try again".
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub first_wait: Duration,
    pub max_wait: Duration,
    /// Deadline for one request (headers and body).
    pub deadline: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        // 10 attempts, 0.1 s doubling to 5 s: about 25 s of waiting, enough
        // for a sidecar to reconnect to a restarted enclave.
        Retry {
            attempts: 10,
            first_wait: Duration::from_millis(100),
            max_wait: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        }
    }
}

/// The state of a key, as `transit/keys/:name` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub latest_version: u32,
    pub min_decryption_version: u32,
    pub min_available_version: u32,
    pub min_encryption_version: u32,
    pub derived: bool,
}

/// One item's outcome in a decrypt batch: Vault reports failures per item.
pub type ItemResult<T> = Result<T, ItemError>;

/// Vault's error string for one failed batch item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ItemError(pub String);

pub struct Transit {
    http: Client,
    base: String,
    mount: String,
    token: Zeroizing<String>,
    retry: Retry,
    /// Items per Transit call.
    max_items: usize,
    /// Retries made, for metrics.
    pub retries: prometheus_client::metrics::counter::Counter,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl Transit {
    /// `addr` is `https://…`, or `http://` to the loopback interface (the
    /// sidecar beside us) unless `insecure_http` allows it elsewhere: the
    /// token and plaintext travel in every request.
    pub fn new(
        addr: &str,
        mount: &str,
        token: Zeroizing<String>,
        retry: Retry,
        connect: &Connect,
    ) -> Result<Transit, TransitError> {
        let bad = |why| TransitError::Endpoint {
            addr: pii_http_client::redact(addr),
            why,
        };
        let reach = pii_http_client::classify(addr).map_err(&bad)?;
        if reach == pii_http_client::Reach::RemoteHttp && !connect.insecure_http {
            return Err(bad(pii_http_client::EndpointError::PlainHttp));
        }
        if mount.is_empty()
            || !mount
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_/".contains(&b))
        {
            return Err(TransitError::Mount(mount.to_owned()));
        }
        let http = pii_http_client::client_with_roots(16, connect.ca_file.as_deref())
            .map_err(TransitError::Roots)?;
        Ok(Transit {
            http,
            base: addr.trim_end_matches('/').to_owned(),
            mount: mount.trim_matches('/').to_owned(),
            token,
            retry,
            max_items: MAX_ITEMS,
            retries: Default::default(),
        })
    }

    /// One call with retries; the parsed JSON answer of a 2xx (or of a 400
    /// that carries `batch_results`: Vault answers batch failures so).
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, TransitError> {
        let url = format!("{}/v1/{}/{path}", self.base, self.mount);
        let label = format!("{}/{path}", self.mount);
        let body = match body {
            Some(b) => {
                Zeroizing::new(serde_json::to_vec(b).map_err(|e| TransitError::BadAnswer {
                    path: label.clone(),
                    why: e.to_string(),
                })?)
            }
            None => Zeroizing::new(Vec::new()),
        };
        let mut wait = self.retry.first_wait;
        let mut last = String::new();
        for attempt in 1..=self.retry.attempts {
            if attempt > 1 {
                self.retries.inc();
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(self.retry.max_wait);
            }
            let req = hyper::Request::builder()
                .method(method)
                .uri(&url)
                .header("X-Vault-Token", self.token.as_str())
                .header("Content-Type", "application/json")
                .body(Full::new(Bytes::copy_from_slice(&body)))
                .map_err(|e| TransitError::BadAnswer {
                    path: label.clone(),
                    why: e.to_string(),
                })?;
            let answer = tokio::time::timeout(self.retry.deadline, async {
                let resp = self.http.request(req).await.map_err(|e| {
                    let tls = pii_http_client::is_tls_failure(&e);
                    (pii_http_client::describe(&e), tls)
                })?;
                let status = resp.status().as_u16();
                let bytes = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| (e.to_string(), false))?
                    .to_bytes();
                Ok::<_, (String, bool)>((status, bytes))
            })
            .await;
            let (status, bytes) = match answer {
                Err(_) => {
                    last = format!("no answer within {:?}", self.retry.deadline);
                    continue;
                }
                // The server's certificate or the handshake: not transient.
                Ok(Err((why, true))) => return Err(TransitError::Tls { path: label, why }),
                Ok(Err((e, false))) => {
                    last = e;
                    continue;
                }
                Ok(Ok(a)) => a,
            };
            let v: Value = if bytes.is_empty() {
                Value::Null
            } else {
                match serde_json::from_slice(&bytes) {
                    Ok(v) => v,
                    Err(_) if retryable(status) => {
                        last = format!("HTTP {status}");
                        continue;
                    }
                    Err(_) => {
                        return Err(TransitError::BadAnswer {
                            path: label,
                            why: format!("HTTP {status}, not JSON"),
                        })
                    }
                }
            };
            if (200..300).contains(&status) {
                return Ok(v);
            }
            let errors = v["errors"]
                .as_array()
                .map(|e| {
                    e.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            if retryable(status) {
                last = format!("HTTP {status}: {errors}");
                continue;
            }
            if status == 400 && v["data"]["batch_results"].is_array() {
                return Ok(v);
            }
            return Err(TransitError::Refused {
                path: label,
                status,
                errors,
            });
        }
        Err(TransitError::Unavailable {
            path: label,
            attempts: self.retry.attempts,
            last,
        })
    }

    fn results<'a>(path: &str, v: &'a Value, n: usize) -> Result<&'a [Value], TransitError> {
        let r = v["data"]["batch_results"]
            .as_array()
            .ok_or_else(|| TransitError::BadAnswer {
                path: path.to_owned(),
                why: "no batch_results".into(),
            })?;
        if r.len() != n {
            return Err(TransitError::BadAnswer {
                path: path.to_owned(),
                why: format!("{} results for {n} items", r.len()),
            });
        }
        if let Some(i) = r
            .iter()
            .enumerate()
            .position(|(i, x)| x["reference"].as_str() != Some(i.to_string().as_str()))
        {
            return Err(TransitError::BadAnswer {
                path: path.to_owned(),
                why: format!(
                    "result {i} does not carry its item's reference (reordered or dropped)"
                ),
            });
        }
        Ok(r)
    }

    /// Each result's `field`, or the batch fails at the first item error.
    fn all_ok(path: &str, v: &Value, n: usize, field: &str) -> Result<Vec<String>, TransitError> {
        Self::results(path, v, n)?
            .iter()
            .enumerate()
            .map(|(index, r)| match r[field].as_str() {
                Some(s) if r["error"].as_str().is_none_or(str::is_empty) => Ok(s.to_owned()),
                _ => Err(TransitError::Item {
                    path: path.to_owned(),
                    index,
                    error: r["error"].as_str().unwrap_or("no result").to_owned(),
                }),
            })
            .collect()
    }

    /// Splits a batch into calls of at most `max_items` items, made at once;
    /// results in order. (Vault and OpenBao refuse JSON with more than
    /// 1,000 strings by default: `max_request_json_strings`.)
    async fn chunked<'a, I, T, F, Fut>(&self, items: &'a [I], f: F) -> Result<Vec<T>, TransitError>
    where
        F: Fn(&'a [I]) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, TransitError>>,
    {
        let parts = futures_util::future::try_join_all(items.chunks(self.max_items).map(f)).await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// Ciphertexts (`vault:vN:…`), in order.
    pub async fn encrypt(
        &self,
        key: &str,
        items: &[(&[u8], Option<&[u8]>)],
    ) -> Result<Vec<String>, TransitError> {
        self.chunked(items, |c| self.encrypt_call(key, c)).await
    }

    /// Plaintexts, each item's failure kept (verify lists them).
    pub async fn decrypt(
        &self,
        key: &str,
        items: &[(&str, Option<&[u8]>)],
    ) -> Result<Vec<ItemResult<Zeroizing<Vec<u8>>>>, TransitError> {
        self.chunked(items, |c| self.decrypt_call(key, c)).await
    }

    /// The same ciphertexts under the key's latest version, in order.
    pub async fn rewrap(
        &self,
        key: &str,
        items: &[(&str, Option<&[u8]>)],
    ) -> Result<Vec<String>, TransitError> {
        self.chunked(items, |c| self.rewrap_call(key, c)).await
    }

    /// HMACs (`vault:vN:…`) of the inputs under `key`, for a blind index.
    pub async fn hmac(&self, key: &str, inputs: &[&[u8]]) -> Result<Vec<String>, TransitError> {
        self.chunked(inputs, |c| self.hmac_call(key, c)).await
    }

    async fn encrypt_call(
        &self,
        key: &str,
        items: &[(&[u8], Option<&[u8]>)],
    ) -> Result<Vec<String>, TransitError> {
        let path = format!("encrypt/{key}");
        let input: Vec<Value> = items
            .iter()
            .enumerate()
            .map(|(i, (pt, ctx))| item(i, "plaintext", pt, *ctx))
            .collect();
        let v = self
            .call("POST", &path, Some(&json!({ "batch_input": input })))
            .await?;
        Self::all_ok(&path, &v, items.len(), "ciphertext")
    }

    /// Plaintexts, each item's failure kept (verify lists them).
    async fn decrypt_call(
        &self,
        key: &str,
        items: &[(&str, Option<&[u8]>)],
    ) -> Result<Vec<ItemResult<Zeroizing<Vec<u8>>>>, TransitError> {
        let path = format!("decrypt/{key}");
        let input = ciphertext_items(items);
        let v = self
            .call("POST", &path, Some(&json!({ "batch_input": input })))
            .await?;
        Ok(Self::results(&path, &v, items.len())?
            .iter()
            .map(|r| match (r["plaintext"].as_str(), r["error"].as_str()) {
                (_, Some(e)) if !e.is_empty() => Err(ItemError(e.to_owned())),
                (Some(p), _) => base64::engine::general_purpose::STANDARD
                    .decode(p)
                    .map(Zeroizing::new)
                    .map_err(|_| ItemError("plaintext is not base64".into())),
                (None, _) => Err(ItemError("no plaintext".into())),
            })
            .collect())
    }

    /// The same ciphertexts under the key's latest version, in order.
    async fn rewrap_call(
        &self,
        key: &str,
        items: &[(&str, Option<&[u8]>)],
    ) -> Result<Vec<String>, TransitError> {
        let path = format!("rewrap/{key}");
        let input = ciphertext_items(items);
        let v = self
            .call("POST", &path, Some(&json!({ "batch_input": input })))
            .await?;
        Self::all_ok(&path, &v, items.len(), "ciphertext")
    }

    /// HMACs (`vault:vN:…`) of the inputs under `key`, for a blind index.
    async fn hmac_call(&self, key: &str, inputs: &[&[u8]]) -> Result<Vec<String>, TransitError> {
        let path = format!("hmac/{key}/sha2-256");
        let input: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(n, i)| item(n, "input", i, None))
            .collect();
        let v = self
            .call("POST", &path, Some(&json!({ "batch_input": input })))
            .await?;
        Self::all_ok(&path, &v, inputs.len(), "hmac")
    }

    pub async fn key(&self, key: &str) -> Result<KeyInfo, TransitError> {
        let path = format!("keys/{key}");
        let v = self.call("GET", &path, None).await?;
        let d = &v["data"];
        let num = |f: &str| -> Result<u32, TransitError> {
            d[f].as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| TransitError::BadAnswer {
                    path: path.clone(),
                    why: format!("no {f}"),
                })
        };
        Ok(KeyInfo {
            latest_version: num("latest_version")?,
            min_decryption_version: num("min_decryption_version")?,
            min_available_version: num("min_available_version").unwrap_or(0),
            min_encryption_version: num("min_encryption_version").unwrap_or(0),
            derived: d["derived"].as_bool().unwrap_or(false),
        })
    }

    pub async fn create_key(&self, key: &str, derived: bool) -> Result<(), TransitError> {
        self.call(
            "POST",
            &format!("keys/{key}"),
            Some(&json!({ "derived": derived })),
        )
        .await
        .map(drop)
    }

    pub async fn rotate(&self, key: &str) -> Result<(), TransitError> {
        self.call("POST", &format!("keys/{key}/rotate"), Some(&json!({})))
            .await
            .map(drop)
    }

    /// Raises `min_decryption_version` (and `min_encryption_version`, which
    /// Vault requires before a trim, when given).
    pub async fn set_min_versions(
        &self,
        key: &str,
        decryption: u32,
        encryption: Option<u32>,
    ) -> Result<(), TransitError> {
        let mut body = json!({ "min_decryption_version": decryption });
        if let Some(e) = encryption {
            body["min_encryption_version"] = json!(e);
        }
        self.call("POST", &format!("keys/{key}/config"), Some(&body))
            .await
            .map(drop)
    }

    pub async fn trim(&self, key: &str, min_available: u32) -> Result<(), TransitError> {
        self.call(
            "POST",
            &format!("keys/{key}/trim"),
            Some(&json!({ "min_available_version": min_available })),
        )
        .await
        .map(drop)
    }
}

/// Every item carries its index as `reference`, which Vault, OpenBao and
/// the sidecar echo: [`Transit::results`] checks each answer against it, so
/// answers reordered by anything between us and Transit are refused rather
/// than written to the wrong rows.
fn ciphertext_items(items: &[(&str, Option<&[u8]>)]) -> Vec<Value> {
    items
        .iter()
        .enumerate()
        .map(|(i, (ct, ctx))| {
            let mut o = json!({ "ciphertext": ct, "reference": i.to_string() });
            if let Some(c) = ctx {
                o["context"] = Value::String(b64(c));
            }
            o
        })
        .collect()
}

fn item(index: usize, field: &str, value: &[u8], ctx: Option<&[u8]>) -> Value {
    let mut o = json!({ field: b64(value), "reference": index.to_string() });
    if let Some(c) = ctx {
        o["context"] = Value::String(b64(c));
    }
    o
}

/// Answers that mean the server may do it later: rate limits, the sidecar's
/// 503 while the enclave is away, gateway errors.
fn retryable(status: u16) -> bool {
    matches!(status, 412 | 429 | 500 | 502 | 503 | 504)
}

/// The key version of a Transit ciphertext or HMAC (`vault:v7:…` → 7).
pub fn version_of(s: &str) -> Option<u32> {
    let rest = s.strip_prefix("vault:v")?;
    let (v, _) = rest.split_once(':')?;
    v.parse().ok().filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_only_from_well_formed_prefixes() {
        assert_eq!(version_of("vault:v1:abc"), Some(1));
        assert_eq!(version_of("vault:v12:"), Some(12));
        for bad in [
            "vault:v0:x",
            "vault:vx:x",
            "vault:v1",
            "v1:x",
            "",
            "vault:v-1:x",
        ] {
            assert_eq!(version_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_http_goes_only_to_loopback() {
        let t = |a: &str, insecure| {
            Transit::new(
                a,
                "transit",
                Zeroizing::new("t".into()),
                Retry::default(),
                &Connect {
                    insecure_http: insecure,
                    ca_file: None,
                },
            )
        };
        assert!(t("http://127.0.0.1:8210", false).is_ok());
        assert!(t("http://[::1]:8210/", false).is_ok());
        assert!(t("https://vault.example:8200", false).is_ok());
        assert!(t("http://vault.example:8200", false).is_err());
        assert!(t("http://vault.example:8200", true).is_ok());
        assert!(t("http://localhost:x@evil.example/", false).is_err());
        assert!(t("ftp://127.0.0.1/", false).is_err());
        assert!(Transit::new(
            "http://127.0.0.1:8210",
            "transit/../sys",
            Zeroizing::new("t".into()),
            Retry::default(),
            &Connect::default()
        )
        .is_err());
    }

    #[test]
    fn a_ca_file_that_holds_no_certificate_is_refused_up_front() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        for (file, want) in [
            (dir.path().join("missing.pem"), "missing.pem"),
            (empty, "no CA certificates"),
        ] {
            let e = Transit::new(
                "https://vault.example:8200",
                "transit",
                Zeroizing::new("t".into()),
                Retry::default(),
                &Connect {
                    insecure_http: false,
                    ca_file: Some(file),
                },
            )
            .err()
            .expect("refused");
            assert!(matches!(e, TransitError::Roots(_)), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
