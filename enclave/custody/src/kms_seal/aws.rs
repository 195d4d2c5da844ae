//! Signed AWS JSON calls for the KMS seal: endpoint parsing, SigV4-signed
//! POSTs with retries, IMDSv2 credentials, and bounded response reads.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{CredentialSource, KmsSeal};
use crate::seal::{EndpointError, SealError};
use crate::sigv4::{self, Credentials};

/// Largest KMS or IMDS response read.
const MAX_RESPONSE: usize = 1 << 20;

/// Where a signed AWS call goes.
pub(super) struct AwsEndpoint<'a> {
    pub(super) url: &'a url::Url,
    pub(super) host: &'a str,
    pub(super) service: &'static str,
    pub(super) content_type: &'static str,
}

impl AwsEndpoint<'_> {
    fn kms(s: &KmsSeal) -> AwsEndpoint<'_> {
        AwsEndpoint {
            url: &s.endpoint,
            host: &s.host,
            service: "kms",
            content_type: "application/x-amz-json-1.1",
        }
    }
}

pub(super) struct Cached {
    creds: Credentials,
    /// Unix seconds after which the credentials are fetched again.
    refresh_at: i64,
}

pub(super) fn unreachable(what: impl std::fmt::Display) -> SealError {
    SealError::Unreachable(what.to_string().chars().take(300).collect())
}

pub(super) async fn read_limited(resp: reqwest::Response) -> Result<Vec<u8>, SealError> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE as u64)
    {
        return Err(unreachable("response too large"));
    }
    let mut resp = resp;
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
        if out.len() + chunk.len() > MAX_RESPONSE {
            return Err(unreachable("response too large"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl KmsSeal {
    async fn credentials(&self) -> Result<Credentials, SealError> {
        let mut g = self.creds.lock().await;
        if let Some(c) = g.as_ref() {
            if self.clock.unix() < c.refresh_at {
                return Ok(c.creds.clone());
            }
        }
        let (creds, refresh_at) = match &self.cfg.credentials {
            CredentialSource::Env => {
                let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
                let (Some(id), Some(secret)) =
                    (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
                else {
                    return Err(unreachable(
                        "no AWS credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set",
                    ));
                };
                let c = Credentials {
                    access_key_id: id,
                    secret_access_key: Zeroizing::new(secret),
                    session_token: var("AWS_SESSION_TOKEN"),
                };
                (c, i64::MAX)
            }
            CredentialSource::Imds { endpoint } => self.imds(endpoint).await?,
        };
        *g = Some(Cached {
            creds: creds.clone(),
            refresh_at,
        });
        Ok(creds)
    }

    /// IMDSv2: a session token, the role name, then the role's credentials.
    async fn imds(&self, endpoint: &str) -> Result<(Credentials, i64), SealError> {
        let base = endpoint.trim_end_matches('/');
        let get = |r: reqwest::RequestBuilder| async move {
            let resp = r
                .send()
                .await
                .map_err(|e| unreachable(format!("IMDS: {e}")))?;
            let status = resp.status();
            let body = read_limited(resp).await?;
            if !status.is_success() {
                return Err(unreachable(format!("IMDS answered {status}")));
            }
            String::from_utf8(body).map_err(|_| unreachable("IMDS: not UTF-8"))
        };
        let token = Zeroizing::new(
            get(self
                .http
                .put(format!("{base}/latest/api/token"))
                .header("x-aws-ec2-metadata-token-ttl-seconds", "21600"))
            .await?,
        );
        let path = format!("{base}/latest/meta-data/iam/security-credentials/");
        let role = get(self
            .http
            .get(&path)
            .header("x-aws-ec2-metadata-token", token.as_str()))
        .await?;
        let role = role.lines().next().unwrap_or_default().trim().to_owned();
        if role.is_empty() || role.contains('/') {
            return Err(unreachable("IMDS: the instance has no IAM role"));
        }
        let body = Zeroizing::new(
            get(self
                .http
                .get(format!("{path}{role}"))
                .header("x-aws-ec2-metadata-token", token.as_str()))
            .await?,
        );
        let creds = parse_imds_credentials(&body)?;
        tracing::info!(role = %role, "AWS credentials from IMDSv2");
        Ok(creds)
    }

    /// One SigV4-signed AWS JSON POST; the status and the JSON answer.
    pub(super) async fn signed_post(
        &self,
        to: &AwsEndpoint<'_>,
        creds: &Credentials,
        target: &str,
        body: &[u8],
    ) -> Result<(reqwest::StatusCode, Value), CallError> {
        let mut req = sigv4::Request {
            method: "POST",
            path: "/",
            query: "",
            headers: vec![
                ("host".into(), to.host.to_owned()),
                ("content-type".into(), to.content_type.into()),
                ("x-amz-target".into(), target.to_owned()),
            ],
            body,
        };
        let auth = sigv4::sign(
            &mut req,
            creds,
            &self.cfg.region,
            to.service,
            &sigv4::amz_date(self.clock.unix()),
        );
        let mut rb = self.http.post(to.url.clone());
        for (k, v) in &req.headers {
            if k != "host" {
                rb = rb.header(k.as_str(), v.as_str());
            }
        }
        let resp = rb
            .header("authorization", auth)
            .body(body.to_vec())
            .send()
            .await?;
        let status = resp.status();
        let bytes = read_limited(resp).await.map_err(CallError::Read)?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| CallError::NotJson(status))?;
        Ok((status, v))
    }

    /// One signed KMS JSON call. Retries throttling and 5xx twice.
    pub(super) async fn call(&self, action: &str, body: &Value) -> Result<Value, SealError> {
        let body = serde_json::to_vec(body).map_err(|_| SealError::Malformed)?;
        let mut delay = Duration::from_millis(100);
        for attempt in 0..3 {
            let creds = self.credentials().await?;
            let target = format!("TrentService.{action}");
            let (status, v) = self
                .signed_post(&AwsEndpoint::kms(self), &creds, &target, &body)
                .await
                .map_err(|e| unreachable(format!("KMS {action}: {e}")))?;
            if status.is_success() {
                return Ok(v);
            }
            let kind = aws_error_kind(&v);
            let msg: String = v
                .get("message")
                .or_else(|| v.get("Message"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            let retry = status.is_server_error()
                || kind.contains("Throttling")
                || kind == "KMSInternalException";
            if retry && attempt < 2 {
                tracing::warn!(action, %status, kind = %kind, "KMS call failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 4;
                continue;
            }
            let stale = matches!(
                kind.as_str(),
                "ExpiredTokenException"
                    | "UnrecognizedClientException"
                    | "InvalidSignatureException"
            );
            if stale {
                // Credentials rotated or expired: fetch them again, once.
                *self.creds.lock().await = None;
                if attempt == 0 {
                    continue;
                }
            }
            return Err(match kind.as_str() {
                "ExpiredTokenException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "AccessDeniedException"
                | "KMSInvalidStateException"
                | "DisabledException"
                | "NotFoundException"
                | "IncorrectKeyException"
                | "InvalidCiphertextException"
                | "ValidationException" => {
                    SealError::Denied(format!("KMS {action}: {kind}: {msg}"))
                }
                _ => unreachable(format!("KMS {action}: {status} {kind}: {msg}")),
            });
        }
        Err(unreachable(format!("KMS {action}: gave up after retries")))
    }
}

/// The credentials document IMDS serves (the host answers IMDS: untrusted),
/// and when to refresh it: five minutes before its `Expiration`.
pub fn parse_imds_credentials(body: &str) -> Result<(Credentials, i64), SealError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ImdsCreds {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
        expiration: String,
    }
    let c: ImdsCreds = serde_json::from_str(body)
        .map_err(|_| unreachable("IMDS: malformed credentials document"))?;
    let expires = sigv4::parse_rfc3339_utc(&c.expiration)
        .ok_or_else(|| unreachable("IMDS: malformed Expiration"))?;
    Ok((
        Credentials {
            access_key_id: c.access_key_id,
            secret_access_key: Zeroizing::new(c.secret_access_key),
            session_token: c.token,
        },
        // Refresh five minutes early (and never cache an expired set).
        expires.saturating_sub(300),
    ))
}

/// An AWS JSON error's type without its namespace (`…#AccessDeniedException`).
pub(super) fn aws_error_kind(v: &Value) -> String {
    v.get("__type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .rsplit('#')
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Why one signed AWS call got no JSON answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(super) enum CallError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("answered {0} with non-JSON")]
    NotJson(reqwest::StatusCode),
    #[error(transparent)]
    Read(SealError),
}

/// An AWS endpoint URL (`given`, else `default`) and its `host[:port]`; plain
/// http only with the dangerous switch (the host relays these bytes).
pub(super) fn aws_endpoint(
    what: &'static str,
    given: Option<String>,
    default: &str,
    dangerous_allow_http: bool,
) -> Result<(url::Url, String), EndpointError> {
    let ep = given.unwrap_or_else(|| default.to_owned());
    let Some(url) = url::Url::parse(&ep)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
    else {
        return Err(EndpointError::NotUrl { what, ep });
    };
    if url.scheme() == "http" && !dangerous_allow_http {
        return Err(EndpointError::PlainHttp { what, ep });
    }
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    Ok((url, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_expiration_parses() {
        assert_eq!(
            sigv4::parse_rfc3339_utc("2015-08-30T12:36:00Z"),
            Some(1_440_938_160)
        );
        assert_eq!(
            sigv4::parse_rfc3339_utc("2015-08-30T12:36:00.123Z"),
            Some(1_440_938_160)
        );
        assert_eq!(sigv4::parse_rfc3339_utc("yesterday"), None);
    }
}
