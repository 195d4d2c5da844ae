//! The Vault-compatible HTTP API, evaluated inside the enclave.
//!
//! The host forwards `(method, path, query, token, body)`; this module parses
//! the JSON body, authorizes the caller, routes to the transit engine and
//! renders Vault's envelopes (`{"data": …}` on success, `{"errors": […]}` on
//! failure). Status codes and error strings follow OpenBao's transit engine.

use std::collections::BTreeSet;

use pii_custody::attest::{AttestError, Attestor};
use pii_proto::{ApiRequest, ApiResponse, Method};
use serde_json::{Map, Value};

use crate::auth::{Auth, Capability};
use crate::error::{Error, Result};
use crate::request::{
    unsupported_operation, unsupported_path, value_to_string, Ctx, Params, Reply,
};
use crate::service::Engine;
use crate::store::BlobStore;

fn json_response(status: u16, v: &Value) -> ApiResponse {
    ApiResponse {
        status,
        body: serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec()),
        headers: vec![],
    }
}

/// The header that carries the signed checkpoint of a request's own audit
/// record (see [`crate::audit`]).
pub const RECEIPT_HEADER: &str = "X-Pii-Audit-Receipt";

pub fn error_response(e: &Error) -> ApiResponse {
    json_response(e.status, &serde_json::json!({ "errors": [e.message()] }))
}

fn request_id() -> String {
    let mut b = [0u8; 16];
    if pii_engine::keyring::random(&mut b).is_err() {
        return String::new();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn envelope(data: Value, warnings: Option<Vec<String>>) -> Value {
    serde_json::json!({
        "request_id": request_id(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": warnings,
        "auth": null,
    })
}

/// Go's JSON decoder messages for the common failures, so clients see what
/// Vault would say.
fn json_error(body: &[u8], e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let detail = match e.classify() {
        Category::Eof => "unexpected EOF".to_string(),
        Category::Syntax | Category::Io => {
            // Offset of the failing character, as Go reports "invalid character 'x' …".
            let offset = line_col_to_offset(body, e.line(), e.column());
            match body.get(offset.saturating_sub(1)) {
                Some(c) if offset > 0 => {
                    let ch = if c.is_ascii_graphic() || *c == b' ' {
                        format!("'{}'", *c as char)
                    } else {
                        format!("'\\x{c:02x}'")
                    };
                    // OpenBao reports every syntax error this way (observed).
                    let context = "looking for beginning of value";
                    format!("invalid character {ch} {context}")
                }
                _ => e.to_string(),
            }
        }
        Category::Data => e.to_string(),
    };
    format!("failed to decode JSON input: {detail}")
}

fn line_col_to_offset(body: &[u8], line: usize, col: usize) -> usize {
    let mut l = 1;
    let mut start = 0;
    for (i, b) in body.iter().enumerate() {
        if l == line {
            break;
        }
        if *b == b'\n' {
            l += 1;
            start = i + 1;
        }
    }
    (start + col).min(body.len())
}

/// Parse a request body: JSON object, empty = `{}`.
pub fn parse_body(body: &[u8]) -> Result<Params> {
    let trimmed = body.iter().all(|b| b.is_ascii_whitespace());
    if trimmed {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => {
            let kind = match other {
                Value::Array(_) => "array",
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "bool",
                _ => "null",
            };
            if kind == "null" {
                return Ok(Map::new());
            }
            Err(Error::bad(format!(
                "failed to decode JSON input: json: cannot unmarshal {kind} into Go value of type map[string]interface {{}}"
            )))
        }
        Err(e) => Err(Error::bad(json_error(body, &e))),
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Capability a request needs by default (handlers may ask for `create`).
pub fn capability_for(method: Method) -> Capability {
    match method {
        Method::Get => Capability::Read,
        Method::Put | Method::Post => Capability::Update,
        Method::Delete => Capability::Delete,
        Method::List => Capability::List,
    }
}

/// `create` or `update` for a write, decided as Vault decides it: paths with
/// an existence check need `create` when their object is missing and
/// `update` when it exists; every other write needs `update`. In Transit only
/// `encrypt/<key>` has one (it creates the key); in Transform the
/// configuration objects do (alphabets, templates, transformations, roles),
/// as Vault's own configuration paths (database roles, AppRole roles) do.
pub fn write_capability(engine: &Engine, path: &str) -> Capability {
    let mut it = path.split('/');
    let (a, b, c, d, rest) = (it.next(), it.next(), it.next(), it.next(), it.next());
    if rest.is_some() {
        return Capability::Update;
    }
    let Ok(kr) = engine.current() else {
        return Capability::Update;
    };
    let t = &kr.transform.doc;
    let exists = match (a, b, c, d) {
        (Some("transit"), Some("encrypt"), Some(name), None) => kr.keys.contains_key(name),
        (Some("transform"), Some("alphabet"), Some(n), None) => t.alphabets.contains_key(n),
        (Some("transform"), Some("template"), Some(n), None) => t.templates.contains_key(n),
        (Some("transform"), Some("role"), Some(n), None) => t.roles.contains_key(n),
        (Some("transform"), Some("transformations"), Some(_), Some(n)) => {
            t.transformations.contains_key(n)
        }
        _ => true,
    };
    if exists {
        Capability::Update
    } else {
        Capability::Create
    }
}

/// Paths whose success returns plaintext.
fn is_reveal(path: &str) -> bool {
    [
        "transit/decrypt/",
        "transform/decode/",
        "transform/document/decode/",
    ]
    .iter()
    .any(|p| path.starts_with(p))
}

/// The answer to one API call.
#[derive(Debug)]
pub struct Answer {
    pub response: ApiResponse,
    /// A refusal in it might not hold against a newer keyring (see
    /// [`crate::error::ApiError::newer_keyring_may_help`]).
    pub newer_keyring_may_help: bool,
}

impl Answer {
    fn plain(response: ApiResponse) -> Answer {
        Answer {
            response,
            newer_keyring_may_help: false,
        }
    }
}

/// Serve one API call.
pub async fn handle(
    engine: &Engine,
    auth: &Auth,
    attestor: &Attestor,
    store: &dyn BlobStore,
    req: ApiRequest,
) -> Answer {
    let mut method = req.method;
    if method == Method::Get && query_param(&req.query, "list") == Some("true") {
        method = Method::List;
    }
    let path = req.path.trim_start_matches('/');
    let path = if method == Method::List {
        path.trim_end_matches('/')
    } else {
        path
    };
    let Some(identity) = auth.authenticate(req.token.as_deref()) else {
        return Answer::plain(error_response(&Error::denied()));
    };
    // Vault checks the ACL before parsing the body. Every token may look
    // itself up (Vault's `default` policy grants the same). LIST is checked
    // on the path with a trailing slash, as Vault's HTTP layer sends it.
    let self_lookup = path == "auth/token/lookup-self" || path == "sys/capabilities-self";
    // Root may do anything: no need to look up whether the object exists.
    let cap = match method {
        Method::Post | Method::Put if !identity.is_root() => write_capability(engine, path),
        m => capability_for(m),
    };
    let allowed = self_lookup
        || identity.is_root()
        || if method == Method::List {
            identity.allows(&format!("{path}/"), cap)
        } else {
            identity.allows(path, cap)
        };
    if !allowed {
        // Refused attempts to reveal plaintext are audited too (best effort:
        // the answer is 403 either way).
        if is_reveal(path) {
            let target = path.rsplit('/').next().unwrap_or_default();
            let mut e = crate::audit::Event::decode(path, target, "", 0).0;
            e.kind = "denied".into();
            e.caller = identity.display_name.clone();
            e.token = identity.token_id.clone();
            e.policies = identity.policy_names.clone();
            if engine.is_unsealed() {
                if let Err(err) = engine.audit(store, e).await {
                    tracing::warn!(error = %err, "could not audit a denied request");
                }
            }
        }
        return Answer::plain(error_response(&Error::denied()));
    }
    let params = match parse_body(&req.body) {
        Ok(p) => p,
        Err(e) => return Answer::plain(error_response(&e)),
    };
    let mut ctx = Ctx {
        engine,
        store,
        attestor,
        query: &req.query,
        identity: &identity,
        method,
        path,
        params,
        seen: BTreeSet::new(),
        receipt: None,
        newer_keyring_may_help: false,
    };
    let result = route(&mut ctx).await;
    let mut resp = match result {
        Ok(Reply::Data(data)) => {
            let warnings = ctx.ignored_warning();
            json_response(200, &envelope(data, warnings))
        }
        Ok(Reply::Batch { status, data }) => {
            json_response(status, &envelope(data, ctx.ignored_warning()))
        }
        Ok(Reply::NoContent) => ApiResponse {
            status: 204,
            body: vec![],
            headers: vec![],
        },
        Ok(Reply::NotFound) => json_response(404, &serde_json::json!({ "errors": [] })),
        Err(e) => {
            ctx.newer_keyring_may_help |= e.newer_keyring_may_help;
            error_response(&e)
        }
    };
    if let Some(r) = ctx.receipt.take() {
        resp.headers
            .push((RECEIPT_HEADER.to_owned(), r.to_receipt()));
    }
    Answer {
        response: resp,
        newer_keyring_may_help: ctx.newer_keyring_may_help,
    }
}

/// Top-level routing.
async fn route(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let path = ctx.path.to_owned();
    let segs: Vec<&str> = path.split('/').collect();
    match segs.as_slice() {
        ["transit", rest @ ..] => crate::transit_api::route(ctx, rest).await,
        ["transform", rest @ ..] => crate::transform_api::route(ctx, rest).await,
        ["sys", "audit-key"] => match ctx.method {
            Method::Get => {
                let key = ctx.engine.audit_key(ctx.store).await?;
                use aws_lc_rs::signature::KeyPair;
                Ok(Reply::Data(serde_json::json!({
                    "algorithm": "ed25519",
                    "public_key": hex::encode(key.public_key().as_ref()),
                })))
            }
            _ => Err(unsupported_operation()),
        },
        ["sys", "attestation"] => match ctx.method {
            Method::Get => attestation(ctx).await,
            _ => Err(unsupported_operation()),
        },
        ["sys", "bootstrap", "vault"] => match ctx.method {
            Method::Get => bootstrap_document(ctx).await,
            Method::Post | Method::Put => bootstrap_deliver(ctx).await,
            _ => Err(unsupported_operation()),
        },
        ["sys", "capabilities-self"] => match ctx.method {
            Method::Post | Method::Put => capabilities_self(ctx),
            _ => Err(unsupported_operation()),
        },
        ["auth", "token", "lookup-self"] => match ctx.method {
            Method::Get | Method::Post | Method::Put => Ok(Reply::Data(serde_json::json!({
                "display_name": ctx.identity.display_name,
                "policies": ctx.identity.policy_names,
                "ttl": 0,
                "renewable": false,
                "type": "service",
            }))),
            _ => Err(unsupported_operation()),
        },
        _ => Err(unsupported_path()),
    }
}

/// `POST sys/capabilities-self {"paths": [...]}`: the caller's capabilities
/// on each path, as Vault reports them (every token may ask about itself).
fn capabilities_self(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let paths = ctx.take("paths").cloned();
    let path = ctx.take("path").cloned();
    // `paths`, or the deprecated `path`; either a list or a comma-separated string.
    let mut paths: Vec<String> = match paths.or(path) {
        Some(Value::Array(a)) => a.iter().map(value_to_string).collect(),
        Some(v) => value_to_string(&v)
            .split(',')
            .map(|p| p.trim().to_owned())
            .collect(),
        None => vec![],
    };
    paths.retain(|p| !p.is_empty());
    if paths.is_empty() {
        return Err(Error::bad("paths must be supplied"));
    }
    let mut out = Map::new();
    for p in &paths {
        let caps = ctx.identity.capabilities(p.trim_start_matches('/'));
        out.insert(p.clone(), serde_json::json!(caps));
    }
    // Vault repeats a single path's answer under "capabilities" (old clients).
    if let [only] = paths.as_slice() {
        let v = out[only].clone();
        out.insert("capabilities".into(), v);
    }
    Ok(Reply::Data(Value::Object(out)))
}

/// `GET sys/attestation?nonce=HEX[&user_data=HEX]`: a document with the
/// caller's nonce, no public key, and the enclave's own `user_data` (which
/// binds only the SHA-256 of the caller's data). See [`pii_custody::attest`].
async fn attestation(ctx: &mut Ctx<'_>) -> Result<Reply> {
    only_query_params(ctx.query, &["nonce", "user_data", "format"])?;
    let hex_param = |name: &str| query_hex(ctx.query, name);
    let nonce = hex_param("nonce")?.ok_or_else(|| Error::bad("nonce is required"))?;
    let caller_data = hex_param("user_data")?;
    // Only an existing audit key (made when the host connects): a `read` on
    // this path never causes a keyring write.
    let audit_pub = ctx
        .engine
        .current()
        .ok()
        .and_then(|kr| kr.audit_key.clone())
        .map(|k| {
            use aws_lc_rs::signature::KeyPair as _;
            k.public_key().as_ref().to_vec()
        });
    let attestor = ctx.attestor.clone();
    let doc = tokio::task::spawn_blocking(move || {
        attestor.report(&nonce, caller_data.as_deref(), audit_pub.as_deref())
    })
    .await
    .map_err(|_| Error::internal("attestation task failed"))?;
    document_reply(ctx, doc)
}

fn attest_error(e: AttestError) -> Error {
    match e {
        AttestError::BadNonce | AttestError::CallerDataTooLong => Error::bad(e.to_string()),
        AttestError::NoNsm => Error::new(503, e.to_string()),
        AttestError::NotForUs => Error::bad(format!(
            "{e} (was it encrypted to another enclave's document, or before a restart?)"
        )),
        AttestError::Nsm(err) => {
            tracing::error!(error = %err, "attestation failed");
            Error::new(503, "attestation failed")
        }
        // Key generation, and whatever a later NSM layer adds: unavailable.
        _ => Error::new(503, e.to_string()),
    }
}

fn document_reply(ctx: &Ctx<'_>, doc: std::result::Result<Vec<u8>, AttestError>) -> Result<Reply> {
    let doc = doc.map_err(attest_error)?;
    use base64::Engine as _;
    Ok(Reply::Data(serde_json::json!({
        "document": base64::engine::general_purpose::STANDARD.encode(&doc),
        "dangerous_dev_root_pem": ctx.attestor.dangerous_dev_root_pem(),
    })))
}

fn query_hex(query: &str, name: &str) -> Result<Option<Vec<u8>>> {
    match query_param(query, name) {
        None => Ok(None),
        Some(v) => hex::decode(v)
            .map(Some)
            .map_err(|_| Error::bad(format!("{name} must be hex"))),
    }
}

/// Refuse query parameters outside `allowed` (a document binds nothing else).
fn only_query_params(query: &str, allowed: &[&str]) -> Result<()> {
    for (k, _) in query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
    {
        if !allowed.contains(&k) {
            return Err(Error::bad(format!(
                "unknown parameter {k:?}: a document binds only {} \
                 (the enclave never binds a caller's public key)",
                allowed.join(", ")
            )));
        }
    }
    Ok(())
}

/// `GET sys/bootstrap/vault?nonce=HEX`: a document binding the enclave's
/// bootstrap key, for `host-proxy vault bootstrap` to verify.
async fn bootstrap_document(ctx: &mut Ctx<'_>) -> Result<Reply> {
    only_query_params(ctx.query, &["nonce"])?;
    let nonce = query_hex(ctx.query, "nonce")?.ok_or_else(|| Error::bad("nonce is required"))?;
    let attestor = ctx.attestor.clone();
    let doc = tokio::task::spawn_blocking(move || attestor.bootstrap_document(&nonce))
        .await
        .map_err(|_| Error::internal("attestation task failed"))?;
    document_reply(ctx, doc)
}

/// `POST sys/bootstrap/vault {"ciphertext": base64}`: a secret_id encrypted to
/// the bootstrap key. It is opened here, handed to the seal, and never
/// returned; the answer says only whether the enclave is now unsealed.
async fn bootstrap_deliver(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let ct = ctx
        .str("ciphertext")
        .ok_or_else(|| Error::bad("missing ciphertext"))?;
    let ct = pii_engine::b64::decode(&ct).map_err(|_| Error::bad("ciphertext must be base64"))?;
    let attestor = ctx.attestor.clone();
    let secret = tokio::task::spawn_blocking(move || attestor.open_bootstrap(&ct))
        .await
        .map_err(|_| Error::internal("bootstrap task failed"))?
        .map_err(attest_error)?;
    ctx.engine
        .provide_seal_credential(secret)
        .await
        .map_err(|e| Error::bad(format!("the seal refused the credential: {e}")))?;
    if !ctx.engine.is_unsealed() {
        if let Err(e) = ctx.engine.load(ctx.store).await {
            tracing::warn!(error = %e, "unseal after the Vault bootstrap failed");
        }
    }
    Ok(Reply::Data(serde_json::json!({
        "sealed": !ctx.engine.is_unsealed(),
        "seal_error": ctx.engine.seal_error(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_read_like_go() {
        assert_eq!(
            parse_body(b"{bad json").unwrap_err().message(),
            "failed to decode JSON input: invalid character 'b' looking for beginning of value"
        );
        assert_eq!(
            parse_body(b"[1,2]").unwrap_err().message(),
            "failed to decode JSON input: json: cannot unmarshal array into Go value of type map[string]interface {}"
        );
        assert_eq!(
            parse_body(b"{\"a\":1").unwrap_err().message(),
            "failed to decode JSON input: unexpected EOF"
        );
        assert!(parse_body(b"").unwrap().is_empty());
        assert!(parse_body(b" \n").unwrap().is_empty());
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
    }
}
