//! The sidecar HTTP API.
//!
//! Everything under `/v1/` is forwarded to the enclave as an opaque
//! `(method, path, query, token, body)`; the enclave authorizes, executes and
//! renders the Vault response. The proxy adds only transport concerns: body
//! limits, deadlines, health, metrics, and 503 when the enclave is away.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method as HttpMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use pii_proto::{ApiRequest, ErrorCode, Method, Request, Response as EnclaveResponse, SealState};
use serde_json::json;

use crate::metrics::{Metrics, OpLabels, RequestLabels};
use crate::pool::{Pool, PoolError};

/// Shared state of the HTTP layer.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    /// Load shedding in front of the enclave hop.
    pub shed: pii_loadshed::Gate,
    /// Keys the per-client fair share by a hash of the token (a per-process
    /// random key: the hash says nothing about the token elsewhere).
    pub client_hasher: std::collections::hash_map::RandomState,
}

/// The audit receipt header the enclave sets on decrypt/decode answers.
const RECEIPT_HEADER: &str = "x-pii-audit-receipt";

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/sys/health", get(sys_health).head(sys_health))
        .route("/v1/attestation", get(attestation))
        .fallback(proxy)
        .with_state(state)
}

fn vault_error(status: StatusCode, msg: &str) -> Response {
    let body = json!({ "errors": [msg] }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn enclave_status(st: &AppState) -> Option<pii_proto::EnclaveStatus> {
    match st.pool.call(Request::Status, Duration::from_secs(2)).await {
        Ok(EnclaveResponse::Status(s)) => Some(s),
        _ => None,
    }
}

async fn readyz(State(st): State<AppState>) -> Response {
    match enclave_status(&st).await {
        Some(s) if s.seal == SealState::Unsealed => (StatusCode::OK, "ready\n").into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "enclave sealed\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "enclave unreachable\n").into_response(),
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    st.metrics.loadshed(&st.shed.snapshot());
    if let Some(s) = enclave_status(&st).await {
        let max = s
            .nonce_usage
            .iter()
            .map(|u| u.encryptions)
            .max()
            .unwrap_or(0);
        let past_half = s
            .nonce_usage
            .iter()
            .filter(|u| u.encryptions > 1 << 31)
            .count();
        let m = &st.metrics;
        m.key_random_nonces_max
            .set(i64::try_from(max).unwrap_or(i64::MAX));
        m.key_versions_past_half_budget
            .set(i64::try_from(past_half).unwrap_or(i64::MAX));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

/// Vault's `/v1/sys/health`: 200 unsealed, 503 sealed or unreachable.
async fn sys_health(State(st): State<AppState>) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let status = enclave_status(&st).await;
    let (code, sealed, backend, version, reachable) = match &status {
        Some(s) => (
            if s.seal == SealState::Unsealed {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            s.seal != SealState::Unsealed,
            s.seal_backend.clone(),
            s.keyring_version,
            true,
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            true,
            String::new(),
            0,
            false,
        ),
    };
    let seal_error = status.as_ref().and_then(|s| s.seal_error.clone());
    // `backend unreachable`: the seal backend's last call failed. Keys in
    // memory still serve (200); a sealed enclave waits for the backend (503).
    let rollback = status.as_ref().and_then(|s| s.rollback_detected.clone());
    let anchor = status.as_ref().and_then(|s| s.anchor_error.clone());
    let seal_status = match (&status, &seal_error) {
        (None, _) => "enclave unreachable",
        (Some(_), _) if rollback.is_some() => "rollback detected",
        (Some(_), _) if anchor.is_some() => "anchor unreachable",
        (Some(_), Some(_)) => "backend unreachable",
        (Some(s), None) if s.seal == SealState::Unsealed => "unsealed",
        (Some(_), None) => "sealed",
    };
    let body = json!({
        "initialized": true,
        "sealed": sealed,
        "standby": false,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": now,
        "version": format!("pii-enclave {}", env!("CARGO_PKG_VERSION")),
        "cluster_name": "pii-enclave",
        "enclave_reachable": reachable,
        "seal_backend": backend,
        "seal_status": seal_status,
        "seal_error": seal_error,
        "rollback_detected": rollback,
        "anchor_unreachable": anchor,
        "keyring_version": version,
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `GET /v1/attestation?nonce=HEX[&user_data=HEX][&format=json]`: a fresh
/// attestation document from the enclave, raw (`application/cbor`) or as a
/// JSON view of its fields. The same as the API call `GET /v1/sys/attestation`
/// (a token whose policy grants `read` on `sys/attestation` is needed), in the
/// shapes the verifier and curl want. The enclave decides every field: the
/// caller's nonce, no public key, and the enclave's own `user_data` (only the
/// SHA-256 of the caller's `user_data`). The proxy only relays: verify the
/// document (`verifier verify`), never this view.
async fn attestation(State(st): State<AppState>, uri: Uri, headers: HeaderMap) -> Response {
    let q = uri.query().unwrap_or("");
    let json_view = q.split('&').any(|kv| kv == "format=json");
    let resp = forward(
        &st,
        HttpMethod::GET,
        "sys/attestation",
        q,
        &headers,
        Body::empty(),
    )
    .await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let Ok(body) = read_body(resp.into_body(), 1 << 20).await else {
        return vault_error(
            StatusCode::BAD_GATEWAY,
            "unreadable answer from the enclave",
        );
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    use base64::Engine as _;
    let Some(document) = v["data"]["document"]
        .as_str()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
    else {
        return vault_error(
            StatusCode::BAD_GATEWAY,
            "unexpected answer from the enclave",
        );
    };
    if !json_view {
        return ([(header::CONTENT_TYPE, "application/cbor")], document).into_response();
    }
    let mut view = attestation_view(&document).unwrap_or_else(|| json!({}));
    view["document"] = json!(base64::engine::general_purpose::STANDARD.encode(&document));
    if let Some(ud) = view["user_data"]
        .as_str()
        .and_then(|h| hex::decode(h).ok())
        .and_then(|b| pii_proto::attest::UserData::decode(&b).ok())
    {
        view["enclave_user_data"] = json!({
            "v": ud.v,
            "purpose": ud.purpose.as_str(),
            "audit_key_sha256": ud.audit_key_sha256.map(hex::encode),
            "caller_data_sha256": ud.caller_data_sha256.map(hex::encode),
        });
    }
    if let Some(p) = v["data"]["dangerous_dev_root_pem"].as_str() {
        view["dangerous_dev_root_pem"] = json!(p);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        view.to_string(),
    )
        .into_response()
}

/// Unverified view of a document's payload fields.
fn attestation_view(doc: &[u8]) -> Option<serde_json::Value> {
    use ciborium::value::Value;
    let v: Value = ciborium::from_reader(doc).ok()?;
    let v = match v {
        Value::Tag(_, inner) => *inner,
        o => o,
    };
    let payload = match v {
        Value::Array(a) => match a.get(2) {
            Some(Value::Bytes(p)) => p.clone(),
            _ => return None,
        },
        _ => return None,
    };
    let Value::Map(m) = ciborium::from_reader::<Value, _>(payload.as_slice()).ok()? else {
        return None;
    };
    let mut out = serde_json::Map::new();
    for (k, v) in m {
        let Some(k) = k.as_text().map(str::to_owned) else {
            continue;
        };
        let j = match (k.as_str(), v) {
            ("pcrs", Value::Map(p)) => json!(p
                .into_iter()
                .filter_map(|(i, b)| Some((
                    format!("PCR{}", i128::from(i.as_integer()?)),
                    json!(hex::encode(b.as_bytes()?))
                )))
                .collect::<serde_json::Map<_, _>>()),
            ("certificate" | "cabundle", _) => continue,
            (_, Value::Text(t)) => json!(t),
            (_, Value::Integer(i)) => json!(i128::from(i) as i64),
            (_, Value::Bytes(b)) => json!(hex::encode(b)),
            (_, Value::Null) => serde_json::Value::Null,
            _ => continue,
        };
        out.insert(
            if k == "timestamp" {
                "timestamp_ms".into()
            } else {
                k
            },
            j,
        );
    }
    out.insert("verified".into(), json!(false));
    Some(serde_json::Value::Object(out))
}

fn method(m: &HttpMethod) -> Option<Method> {
    Some(match m.as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "LIST" => Method::List,
        _ => return None,
    })
}

fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers.get("x-vault-token").and_then(|v| v.to_str().ok()) {
        return Some(t.to_owned());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_owned())
}

/// Operation class for metrics: the first two path segments, without key names.
fn op_class(path: &str) -> String {
    let mut it = path.split('/').filter(|s| !s.is_empty());
    match (it.next(), it.next()) {
        (Some("transit"), Some(op)) if op.len() <= 16 => format!("transit/{op}"),
        (Some(a), _) if a.len() <= 16 => a.to_owned(),
        _ => "other".into(),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(vault_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "http: request body too large",
        )),
        Err(_) => Err(vault_error(
            StatusCode::BAD_REQUEST,
            "failed to read request body",
        )),
    }
}

async fn proxy(
    State(st): State<AppState>,
    m: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let t0 = Instant::now();
    let Some(path) = uri.path().strip_prefix("/v1/") else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"errors\":[]}",
        )
            .into_response();
    };
    let op = op_class(path);
    let resp = match st.shed.acquire(client_key(&st, &headers), false).await {
        Ok(permit) => {
            let resp = forward(&st, m, path, uri.query().unwrap_or(""), &headers, body).await;
            // An enclave that is away answers fast and says nothing about
            // its speed: no latency sample.
            if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
                drop(permit);
            } else {
                permit.done();
            }
            resp
        }
        Err(r) => shed_response(r),
    };
    st.metrics
        .requests
        .get_or_create(&RequestLabels {
            op: op.clone(),
            status: resp.status().as_u16(),
        })
        .inc();
    st.metrics
        .latency
        .get_or_create(&OpLabels { op })
        .observe(t0.elapsed().as_secs_f64());
    resp
}

/// The fair-share key of a request: its token's hash (one key for all
/// requests without a token).
fn client_key(st: &AppState, headers: &HeaderMap) -> pii_loadshed::ClientKey {
    use std::hash::BuildHasher as _;
    pii_loadshed::ClientKey(match token(headers) {
        Some(t) => st.client_hasher.hash_one(t),
        None => 0,
    })
}

/// A refusal by the shedder: Vault's error shape, and when to come back.
fn shed_response(r: pii_loadshed::Reject) -> Response {
    let (status, msg) = match r {
        pii_loadshed::Reject::OverShare { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "pii-enclave sidecar: this client is over its share of the enclave; retry later",
        ),
        pii_loadshed::Reject::Overloaded { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "pii-enclave sidecar: the enclave is overloaded; retry later",
        ),
    };
    let mut resp = vault_error(status, msg);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after_s()));
    resp
}

async fn forward(
    st: &AppState,
    m: HttpMethod,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let Some(method) = method(&m) else {
        return vault_error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation");
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > st.max_request_bytes {
            return vault_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "http: request body too large",
            );
        }
    }
    let body = match read_body(body, st.max_request_bytes).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    st.metrics.request_bytes.inc_by(body.len() as u64);
    let req = Request::Api(ApiRequest {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        token: token(headers),
        body: body.to_vec(),
    });
    match st.pool.call(req, st.request_timeout).await {
        Ok(EnclaveResponse::Api(a)) => {
            let status =
                StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut r = Response::new(Body::from(a.body));
            *r.status_mut() = status;
            if status != StatusCode::NO_CONTENT {
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            // Only headers we know, and only valid values, are passed on.
            for (name, value) in &a.headers {
                if name.eq_ignore_ascii_case(RECEIPT_HEADER) {
                    if let Ok(v) = HeaderValue::from_str(value) {
                        r.headers_mut()
                            .insert(axum::http::HeaderName::from_static(RECEIPT_HEADER), v);
                    }
                }
            }
            r
        }
        Ok(EnclaveResponse::Error(code)) => {
            let (s, msg) = match code {
                ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "enclave unavailable"),
                ErrorCode::DeadlineExceeded => {
                    (StatusCode::GATEWAY_TIMEOUT, "enclave deadline exceeded")
                }
                ErrorCode::TooLarge => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "response too large for the enclave link",
                ),
                ErrorCode::BadRequest => {
                    (StatusCode::BAD_REQUEST, "request rejected by the enclave")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "enclave internal error"),
            };
            vault_error(s, msg)
        }
        Ok(_) => vault_error(
            StatusCode::BAD_GATEWAY,
            "unexpected answer from the enclave",
        ),
        Err(PoolError::Unavailable) => {
            vault_error(StatusCode::SERVICE_UNAVAILABLE, "enclave unavailable")
        }
        Err(PoolError::Timeout) => {
            vault_error(StatusCode::GATEWAY_TIMEOUT, "enclave deadline exceeded")
        }
        Err(PoolError::TooLarge) => vault_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "http: request body too large",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_classes() {
        let mut h = HeaderMap::new();
        assert_eq!(token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(token(&h).as_deref(), Some("abc"));
        h.insert("x-vault-token", HeaderValue::from_static("xyz"));
        assert_eq!(token(&h).as_deref(), Some("xyz"));
        assert_eq!(op_class("transit/encrypt/pii"), "transit/encrypt");
        assert_eq!(op_class("auth/token/lookup-self"), "auth");
        assert_eq!(op_class(&"x".repeat(100)), "other");
    }
}
