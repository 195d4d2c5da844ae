//! The HTTP side: KMS JSON 1.1 at `POST /`, IMDSv2 under `/latest/`.
//!
//! Why one file: test code: the emulator's server, one handler per KMS action over one key table, read side by side with AWS's API reference.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::policy::{self, Context, Decision, PolicyError};

/// An IAM identity the emulator knows: SigV4 access key → principal ARN.
#[derive(Clone)]
pub struct Principal {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// `arn:aws:iam::<account>:role/<name>`
    pub arn: String,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("arn", &self.arn)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub region: String,
    pub account_id: String,
    pub principals: Vec<Principal>,
    /// DER roots that attestation documents may chain to (dev NSMs').
    pub attestation_roots_der: Vec<Vec<u8>>,
    /// Documents older than this are refused (KMS: five minutes).
    pub max_document_age_secs: i64,
    /// The principal IMDSv2 hands out as the instance role, by access key.
    pub imds_access_key_id: Option<String>,
}

/// One call, for tests to inspect (never holds key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub action: String,
    pub principal: Option<String>,
    /// A valid attestation document was presented.
    pub attested: bool,
    /// `ok` or the error type returned.
    pub outcome: String,
}

struct Key {
    id: String,
    arn: String,
    material: Zeroizing<[u8; 32]>,
    policy: Value,
    description: String,
    created: i64,
}

/// The emulator. Cheap to share (`Arc`).
pub struct Emulator {
    cfg: Config,
    keys: Mutex<BTreeMap<String, Key>>,
    imds_tokens: Mutex<HashSet<String>>,
    calls: Mutex<Vec<CallRecord>>,
}

struct KmsError {
    kind: &'static str,
    message: String,
}

fn err(kind: &'static str, message: impl Into<String>) -> KmsError {
    KmsError {
        kind,
        message: message.into(),
    }
}

impl IntoResponse for KmsError {
    fn into_response(self) -> Response {
        let status = if self.kind == "KMSInternalException" {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        (
            status,
            [("content-type", "application/x-amz-json-1.1")],
            json!({"__type": self.kind, "message": self.message}).to_string(),
        )
            .into_response()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

fn uuid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The encryption context as canonical bytes (sorted keys), bound as AAD.
fn context_aad(ctx: &BTreeMap<String, String>) -> Vec<u8> {
    serde_json::to_vec(ctx).unwrap_or_default()
}

fn parse_context(v: &Value) -> Result<BTreeMap<String, String>, KmsError> {
    parse_named_context(v, "EncryptionContext")
}

fn parse_named_context(v: &Value, field: &str) -> Result<BTreeMap<String, String>, KmsError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_owned()))
                    .ok_or_else(|| {
                        err(
                            "ValidationException",
                            "EncryptionContext values must be strings",
                        )
                    })
            })
            .collect(),
        Some(_) => Err(err(
            "ValidationException",
            "EncryptionContext must be an object",
        )),
    }
}

fn b64_field(v: &Value, name: &str) -> Result<Vec<u8>, KmsError> {
    let s = v
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| err("ValidationException", format!("{name} is required")))?;
    B64.decode(s)
        .map_err(|_| err("SerializationException", format!("{name} is not base64")))
}

/// A verified `Recipient`: the enclave's public key and condition keys.
struct Recipient {
    spki: Vec<u8>,
    keys: Context,
}

impl Emulator {
    pub fn new(cfg: Config) -> Arc<Emulator> {
        Arc::new(Emulator {
            cfg,
            keys: Mutex::new(BTreeMap::new()),
            imds_tokens: Mutex::new(HashSet::new()),
            calls: Mutex::new(Vec::new()),
        })
    }

    /// Create a key directly (tests); returns its ARN.
    pub fn create_key(&self, policy: Option<Value>) -> Result<String, PolicyError> {
        let policy = policy.unwrap_or_else(|| self.default_policy());
        policy::validate(&policy)?;
        let id = uuid();
        let arn = format!(
            "arn:aws:kms:{}:{}:key/{id}",
            self.cfg.region, self.cfg.account_id
        );
        let mut material = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(&mut material[..]).map_err(|_| PolicyError::Random)?;
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id.clone(),
            Key {
                id,
                arn: arn.clone(),
                material,
                policy,
                description: String::new(),
                created: now(),
            },
        );
        Ok(arn)
    }

    /// Replace a key's policy (tests).
    pub fn put_key_policy(&self, key: &str, policy: Value) -> Result<(), PolicyError> {
        policy::validate(&policy)?;
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let id = resolve(&keys, key).ok_or(PolicyError::NoSuchKey)?;
        if let Some(k) = keys.get_mut(&id) {
            k.policy = policy;
        }
        Ok(())
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn default_policy(&self) -> Value {
        json!({"Version": "2012-10-17", "Statement": [{
            "Sid": "Enable IAM User Permissions", "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{}:root", self.cfg.account_id)},
            "Action": "kms:*", "Resource": "*"}]})
    }

    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/", post(kms))
            .route("/latest/api/token", put(imds_token))
            .route(
                "/latest/meta-data/iam/security-credentials/",
                get(imds_role),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/{role}",
                get(imds_creds),
            )
            .with_state(self)
    }

    /// Serve on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    fn record(&self, action: &str, principal: Option<&str>, attested: bool, outcome: &str) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(CallRecord {
                action: action.to_owned(),
                principal: principal.map(str::to_owned),
                attested,
                outcome: outcome.to_owned(),
            });
    }

    fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<&Principal, KmsError> {
        let hs: Vec<(String, String)> = headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let req = crate::sigv4::Received {
            method: method.as_str(),
            path: uri.path(),
            query: uri.query().unwrap_or(""),
            headers: &hs,
            body,
        };
        let key_id = crate::sigv4::verify(&req, &self.cfg.region, "kms", now(), |id| {
            self.cfg
                .principals
                .iter()
                .find(|p| p.access_key_id == id)
                .map(|p| p.secret_access_key.clone())
        })
        .map_err(|e| {
            use crate::sigv4::VerifyError as V;
            match e {
                V::UnknownKey => err(
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                ),
                V::Expired => err(
                    "InvalidSignatureException",
                    "Signature expired or x-amz-date missing",
                ),
                other => err("InvalidSignatureException", other.to_string()),
            }
        })?;
        let p = self
            .cfg
            .principals
            .iter()
            .find(|p| p.access_key_id == key_id)
            .ok_or_else(|| err("UnrecognizedClientException", "unknown access key"))?;
        if let Some(t) = &p.session_token {
            let sent = headers
                .get("x-amz-security-token")
                .and_then(|v| v.to_str().ok());
            if sent != Some(t.as_str()) {
                return Err(err(
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                ));
            }
        }
        Ok(p)
    }

    /// Verify `Recipient.AttestationDocument` as KMS does.
    fn recipient(&self, req: &Value) -> Result<Option<Recipient>, KmsError> {
        let Some(r) = req.get("Recipient").filter(|r| !r.is_null()) else {
            return Ok(None);
        };
        match r.get("KeyEncryptionAlgorithm").and_then(Value::as_str) {
            Some("RSAES_OAEP_SHA_256") | None => {}
            Some(_) => {
                return Err(err(
                    "ValidationException",
                    "KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256",
                ))
            }
        }
        let doc = b64_field(r, "AttestationDocument")?;
        let mut verified = Err("no attestation root configured".to_owned());
        for root in &self.cfg.attestation_roots_der {
            let policy = verifier::attestation::Policy::dangerous_with_root(now(), root.clone());
            verified = verifier::attestation::verify(&doc, &policy).map_err(|e| e.to_string());
            if verified.is_ok() {
                break;
            }
        }
        let v = verified.map_err(|e| {
            err(
                "ValidationException",
                format!("invalid attestation document: {e}"),
            )
        })?;
        let age = now() - (v.doc.timestamp_ms / 1000) as i64;
        if !(-60..=self.cfg.max_document_age_secs).contains(&age) {
            return Err(err(
                "ValidationException",
                "attestation document is too old",
            ));
        }
        let spki = v.doc.public_key.clone().ok_or_else(|| {
            err(
                "ValidationException",
                "attestation document has no public key",
            )
        })?;
        let mut keys = Context::new();
        for (n, pcr) in &v.doc.pcrs {
            keys.insert(format!("kms:RecipientAttestation:PCR{n}"), hex::encode(pcr));
        }
        if let Some(p0) = v.doc.pcrs.get(&0) {
            keys.insert(
                "kms:RecipientAttestation:ImageSha384".into(),
                hex::encode(p0),
            );
        }
        Ok(Some(Recipient { spki, keys }))
    }

    fn authorize(
        &self,
        key: &Key,
        who: &Principal,
        action: &str,
        ctx: &BTreeMap<String, String>,
        recipient: Option<&Recipient>,
    ) -> Result<(), KmsError> {
        let mut c = Context::new();
        for (k, v) in ctx {
            c.insert(format!("kms:EncryptionContext:{k}"), v.clone());
        }
        if let Some(r) = recipient {
            c.extend(r.keys.clone());
        }
        c.insert("aws:PrincipalArn".into(), who.arn.clone());
        c.insert(
            "kms:CallerAccount".into(),
            who.arn.split(':').nth(4).unwrap_or("").to_owned(),
        );
        match policy::evaluate(&key.policy, &who.arn, &format!("kms:{action}"), &c) {
            Decision::Allow => Ok(()),
            Decision::ExplicitDeny(sid) => Err(err(
                "AccessDeniedException",
                format!("User: {} is not authorized to perform: kms:{action} on resource: {} with an explicit deny in a resource-based policy ({sid})", who.arn, key.arn),
            )),
            Decision::ImplicitDeny => Err(err(
                "AccessDeniedException",
                format!("User: {} is not authorized to perform: kms:{action} on resource: {} because no resource-based policy allows the kms:{action} action", who.arn, key.arn),
            )),
        }
    }

    fn seal_blob(
        key: &Key,
        plaintext: &[u8],
        ctx: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>, KmsError> {
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &key.material[..])
                .map_err(|_| err("KMSInternalException", "key"))?,
        );
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| err("KMSInternalException", "rng"))?;
        let mut aad = key.id.as_bytes().to_vec();
        aad.extend(context_aad(ctx));
        let mut out = vec![1u8];
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut body,
        )
        .map_err(|_| err("KMSInternalException", "seal"))?;
        out.extend(body);
        Ok(out)
    }

    fn open_blob(
        key: &Key,
        blob: &[u8],
        ctx: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let rest = &blob[1 + 36..];
        if rest.len() < NONCE_LEN + 16 {
            return Err(err("InvalidCiphertextException", ""));
        }
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &key.material[..])
                .map_err(|_| err("KMSInternalException", "key"))?,
        );
        let nonce = Nonce::try_assume_unique_for_key(&rest[..NONCE_LEN])
            .map_err(|_| err("InvalidCiphertextException", ""))?;
        let mut aad = key.id.as_bytes().to_vec();
        aad.extend(context_aad(ctx));
        let mut buf = Zeroizing::new(rest[NONCE_LEN..].to_vec());
        let n = aead
            .open_in_place(nonce, Aad::from(&aad), &mut buf)
            .map_err(|_| err("InvalidCiphertextException", ""))?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    /// `Plaintext`, or `CiphertextForRecipient` when a recipient was given.
    fn deliver(
        out: &mut Value,
        plaintext: &[u8],
        recipient: Option<&Recipient>,
    ) -> Result<(), KmsError> {
        match recipient {
            Some(r) => {
                let cms = crate::cms::envelope(&r.spki, plaintext).map_err(|e| {
                    err(
                        "ValidationException",
                        format!("attestation public key: {e}"),
                    )
                })?;
                out["CiphertextForRecipient"] = B64.encode(cms).into();
            }
            None => out["Plaintext"] = B64.encode(plaintext).into(),
        }
        Ok(())
    }

    fn dispatch(
        &self,
        action: &str,
        who: &Principal,
        req: &Value,
        attested: &mut bool,
    ) -> Result<Value, KmsError> {
        match action {
            "CreateKey" => {
                let policy = match req.get("Policy").and_then(Value::as_str) {
                    Some(p) => Some(serde_json::from_str(p).map_err(|_| {
                        err("MalformedPolicyDocumentException", "policy is not JSON")
                    })?),
                    None => None,
                };
                let arn = self
                    .create_key(policy)
                    .map_err(|e| err("MalformedPolicyDocumentException", e.to_string()))?;
                let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
                let id =
                    resolve(&keys, &arn).ok_or_else(|| err("KMSInternalException", "lost key"))?;
                if let Some(k) = keys.get_mut(&id) {
                    k.description = req
                        .get("Description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    return Ok(json!({"KeyMetadata": metadata(k, &self.cfg.account_id)}));
                }
                Err(err("KMSInternalException", "lost key"))
            }
            _ => {
                let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
                let key_ref = match action {
                    "Decrypt" | "ReEncrypt" => match req
                        .get(if action == "Decrypt" {
                            "KeyId"
                        } else {
                            "SourceKeyId"
                        })
                        .and_then(Value::as_str)
                    {
                        Some(k) => Some(k.to_owned()),
                        None => {
                            let blob = b64_field(req, "CiphertextBlob")?;
                            Some(
                                blob_key_id(&blob)
                                    .ok_or_else(|| err("InvalidCiphertextException", ""))?
                                    .to_owned(),
                            )
                        }
                    },
                    _ => req.get("KeyId").and_then(Value::as_str).map(str::to_owned),
                }
                .ok_or_else(|| err("ValidationException", "KeyId is required"))?;
                let id = resolve(&keys, &key_ref).ok_or_else(|| {
                    err(
                        "NotFoundException",
                        format!("Key '{key_ref}' does not exist"),
                    )
                })?;
                let key = keys
                    .get(&id)
                    .ok_or_else(|| err("NotFoundException", "no such key"))?;
                let ctx = if action == "ReEncrypt" {
                    parse_named_context(req, "SourceEncryptionContext")?
                } else {
                    parse_context(req)?
                };
                let recipient = self.recipient(req)?;
                *attested = recipient.is_some();
                if action == "ReEncrypt" {
                    // Two permissions, as in AWS: ReEncryptFrom on the source
                    // key, ReEncryptTo on the destination key.
                    self.authorize(key, who, "ReEncryptFrom", &ctx, None)?;
                    let dst_ref = req
                        .get("DestinationKeyId")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            err("ValidationException", "DestinationKeyId is required")
                        })?;
                    let dst_id = resolve(&keys, dst_ref).ok_or_else(|| {
                        err(
                            "NotFoundException",
                            format!("Key '{dst_ref}' does not exist"),
                        )
                    })?;
                    let dst = keys
                        .get(&dst_id)
                        .ok_or_else(|| err("NotFoundException", "no such key"))?;
                    let dst_ctx = parse_named_context(req, "DestinationEncryptionContext")?;
                    self.authorize(dst, who, "ReEncryptTo", &dst_ctx, None)?;
                    let blob = b64_field(req, "CiphertextBlob")?;
                    if blob_key_id(&blob) != Some(key.id.as_str()) {
                        return Err(err("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation."));
                    }
                    let pt = Self::open_blob(key, &blob, &ctx)?;
                    let out = Self::seal_blob(dst, &pt, &dst_ctx)?;
                    return Ok(json!({"CiphertextBlob": B64.encode(out), "KeyId": dst.arn,
                                     "SourceKeyId": key.arn}));
                }
                self.authorize(key, who, action, &ctx, recipient.as_ref())?;
                if action == "PutKeyPolicy" {
                    let text = req
                        .get("Policy")
                        .and_then(Value::as_str)
                        .ok_or_else(|| err("ValidationException", "Policy is required"))?;
                    let p: Value = serde_json::from_str(text).map_err(|_| {
                        err("MalformedPolicyDocumentException", "policy is not JSON")
                    })?;
                    drop(keys);
                    self.put_key_policy(&id, p)
                        .map_err(|e| err("MalformedPolicyDocumentException", e.to_string()))?;
                    return Ok(json!({}));
                }
                self.act(action, key, req, &ctx, recipient.as_ref())
            }
        }
    }

    fn act(
        &self,
        action: &str,
        key: &Key,
        req: &Value,
        ctx: &BTreeMap<String, String>,
        recipient: Option<&Recipient>,
    ) -> Result<Value, KmsError> {
        match action {
            "DescribeKey" => Ok(json!({"KeyMetadata": metadata(key, &self.cfg.account_id)})),
            "GetKeyPolicy" => {
                Ok(json!({"Policy": key.policy.to_string(), "PolicyName": "default"}))
            }
            "Encrypt" => {
                let pt = Zeroizing::new(b64_field(req, "Plaintext")?);
                if pt.is_empty() || pt.len() > 4096 {
                    return Err(err(
                        "ValidationException",
                        "Plaintext must be 1 to 4096 bytes",
                    ));
                }
                let blob = Self::seal_blob(key, &pt, ctx)?;
                Ok(
                    json!({"CiphertextBlob": B64.encode(blob), "KeyId": key.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
                )
            }
            "Decrypt" => {
                let blob = b64_field(req, "CiphertextBlob")?;
                if blob_key_id(&blob) != Some(key.id.as_str()) {
                    return Err(err("IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation."));
                }
                let pt = Self::open_blob(key, &blob, ctx)?;
                let mut out = json!({"KeyId": key.arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"});
                Self::deliver(&mut out, &pt, recipient)?;
                Ok(out)
            }
            "CreateGrant" => {
                let mut id = [0u8; 16];
                aws_lc_rs::rand::fill(&mut id).map_err(|_| err("KMSInternalException", "rng"))?;
                // Recorded only: the emulator does not honour grants, so a
                // test can see that the policy refused one, never rely on one.
                Ok(json!({"GrantId": hex::encode(id), "GrantToken": hex::encode(id)}))
            }
            "GenerateDataKey" | "GenerateDataKeyWithoutPlaintext" => {
                let n = match (
                    req.get("KeySpec").and_then(Value::as_str),
                    req.get("NumberOfBytes").and_then(Value::as_u64),
                ) {
                    (Some("AES_256"), None) => 32,
                    (Some("AES_128"), None) => 16,
                    (None, Some(n)) if (1..=1024).contains(&n) => n as usize,
                    _ => {
                        return Err(err(
                            "ValidationException",
                            "give KeySpec (AES_256, AES_128) or NumberOfBytes (1-1024)",
                        ))
                    }
                };
                let mut dk = Zeroizing::new(vec![0u8; n]);
                aws_lc_rs::rand::fill(&mut dk).map_err(|_| err("KMSInternalException", "rng"))?;
                let blob = Self::seal_blob(key, &dk, ctx)?;
                let mut out = json!({"CiphertextBlob": B64.encode(blob), "KeyId": key.arn});
                if action == "GenerateDataKey" {
                    Self::deliver(&mut out, &dk, recipient)?;
                }
                Ok(out)
            }
            other => Err(err(
                "UnknownOperationException",
                format!("{other} is not emulated"),
            )),
        }
    }
}

fn blob_key_id(blob: &[u8]) -> Option<&str> {
    if blob.len() < 1 + 36 || blob[0] != 1 {
        return None;
    }
    std::str::from_utf8(&blob[1..37]).ok()
}

fn resolve(keys: &BTreeMap<String, Key>, r: &str) -> Option<String> {
    if keys.contains_key(r) {
        return Some(r.to_owned());
    }
    keys.values().find(|k| k.arn == r).map(|k| k.id.clone())
}

fn metadata(k: &Key, account: &str) -> Value {
    json!({"KeyId": k.id, "Arn": k.arn, "AWSAccountId": account, "Enabled": true,
        "KeyState": "Enabled", "KeyUsage": "ENCRYPT_DECRYPT", "KeySpec": "SYMMETRIC_DEFAULT",
        "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
        "Description": k.description, "CreationDate": k.created, "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER", "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"]})
}

async fn kms(
    State(em): State<Arc<Emulator>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("TrentService."))
        .unwrap_or("")
        .to_owned();
    let who = match em.authenticate(&method, &uri, &headers, &body) {
        Ok(p) => p.clone(),
        Err(e) => {
            em.record(&action, None, false, e.kind);
            return e.into_response();
        }
    };
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            em.record(&action, Some(&who.arn), false, "SerializationException");
            return err("SerializationException", "body is not a JSON object").into_response();
        }
    };
    let mut attested = false;
    let r = em.dispatch(&action, &who, &req, &mut attested);
    match r {
        Ok(v) => {
            em.record(&action, Some(&who.arn), attested, "ok");
            (
                StatusCode::OK,
                [("content-type", "application/x-amz-json-1.1")],
                v.to_string(),
            )
                .into_response()
        }
        Err(e) => {
            tracing::info!(action = %action, kind = e.kind, "KMS emulator refused");
            em.record(&action, Some(&who.arn), attested, e.kind);
            e.into_response()
        }
    }
}

async fn imds_token(State(em): State<Arc<Emulator>>, headers: HeaderMap) -> Response {
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    if !ttl.is_some_and(|t| (1..=21_600).contains(&t)) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let t = random_hex(24);
    em.imds_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(t.clone());
    t.into_response()
}

fn imds_principal<'a>(em: &'a Emulator, headers: &HeaderMap) -> Result<&'a Principal, StatusCode> {
    let t = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .ok_or(StatusCode::UNAUTHORIZED)?;
    if !em
        .imds_tokens
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(t)
    {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let id = em
        .cfg
        .imds_access_key_id
        .as_deref()
        .ok_or(StatusCode::NOT_FOUND)?;
    em.cfg
        .principals
        .iter()
        .find(|p| p.access_key_id == id)
        .ok_or(StatusCode::NOT_FOUND)
}

fn role_name(p: &Principal) -> &str {
    p.arn.rsplit('/').next().unwrap_or("")
}

async fn imds_role(State(em): State<Arc<Emulator>>, headers: HeaderMap) -> Response {
    match imds_principal(&em, &headers) {
        Ok(p) => role_name(p).to_owned().into_response(),
        Err(s) => s.into_response(),
    }
}

async fn imds_creds(
    State(em): State<Arc<Emulator>>,
    Path(role): Path<String>,
    headers: HeaderMap,
) -> Response {
    match imds_principal(&em, &headers) {
        Ok(p) if role_name(p) == role => {
            let exp = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(now() + 6 * 3600).unwrap_or(0));
            let iso = humantime::format_rfc3339_seconds(exp).to_string();
            json!({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": p.access_key_id,
                "SecretAccessKey": p.secret_access_key, "Token": p.session_token,
                "Expiration": iso, "LastUpdated": iso})
            .to_string()
            .into_response()
        }
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
        Err(s) => s.into_response(),
    }
}
