//! The HTTPS client the cloud WAF targets share (`pii-http-client`: plain
//! HTTP only to a loopback test server, credentials travel in every
//! request), with bounded answers and deadlines.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::WafError;

pub type Client = pii_http_client::Client<Full<Bytes>>;

/// Largest answer read from a WAF API.
pub const MAX_ANSWER: usize = 16 << 20;
/// Longest wait for one answer.
pub const DEADLINE: Duration = Duration::from_secs(30);

fn err(target: &str, message: String) -> WafError {
    WafError::Target {
        target: target.to_owned(),
        message,
    }
}

/// A client for `endpoint`, refused when it is plain `http://` to anything
/// but the loopback interface (`pii_http_client::check_endpoint`).
pub fn client(target: &str, endpoint: &str) -> Result<Client, WafError> {
    let shown = pii_http_client::redact(endpoint);
    pii_http_client::check_endpoint(endpoint)
        .map_err(|why| err(target, format!("{shown}: {why}")))?;
    pii_http_client::client(32).map_err(|e| err(target, format!("{shown}: {e}")))
}

/// Sends `req` and reads the answer (status, headers, at most
/// [`MAX_ANSWER`] bytes) within [`DEADLINE`].
pub async fn send(
    http: &Client,
    target: &str,
    what: &str,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, hyper::HeaderMap, Bytes), WafError> {
    let resp = tokio::time::timeout(DEADLINE, http.request(req))
        .await
        .map_err(|_| err(target, format!("{what}: no answer within 30 s")))?
        .map_err(|e| err(target, format!("{what}: {e}")))?;
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(
        DEADLINE,
        http_body_util::Limited::new(body, MAX_ANSWER).collect(),
    )
    .await
    .map_err(|_| err(target, format!("{what}: answer not read within 30 s")))?
    .map_err(|e| err(target, format!("{what}: {e}")))?
    .to_bytes();
    Ok((parts.status, parts.headers, bytes))
}
