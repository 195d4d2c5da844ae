//! AWS KMS seal with attestation: the keyring's data key is released only to
//! an enclave whose measurements the key policy names.
//!
//! `wrap` asks KMS for a data key (`GenerateDataKey`) with a `Recipient`: the
//! enclave's attestation document carrying a fresh RSA-2048 public key. KMS
//! checks the document, applies the key policy's
//! `kms:RecipientAttestation:*` conditions, and returns the data key twice —
//! encrypted under the KMS key (`CiphertextBlob`, stored with the keyring) and
//! as a CMS EnvelopedData to the enclave's public key
//! (`CiphertextForRecipient`), which only this enclave can open. `unwrap`
//! sends the stored `CiphertextBlob` to `Decrypt`, again with a `Recipient`.
//! KMS never returns the plaintext data key to anyone else, and the host,
//! which relays the TLS bytes, sees neither.
//!
//! Why a small client rather than the AWS SDK: the enclave needs four things
//! — SigV4 ([`crate::sigv4`], checked against AWS's test suite), two JSON
//! calls, IMDSv2 credentials, and CMS ([`crate::cms`]). The SDK would add a
//! large dependency tree to the measured image, and still leave CMS parsing
//! and the response checks below to us.
//!
//! What a response must satisfy (a forged or replayed one fails here):
//! - `CiphertextForRecipient` present and `Plaintext` absent: a plaintext data
//!   key means the attestation was stripped on the way;
//! - the CMS opens with *this call's* ephemeral private key (a replayed
//!   response was encrypted to an earlier, discarded key);
//! - `KeyId` is the configured key.
//!
//! Inner blob: `0x01 ‖ len:u16be ‖ CiphertextBlob ‖ nonce ‖ AES-256-GCM(keyring)`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pii_engine::clock::{Clock, SystemClock};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::attest::Attestor;
use crate::nsm::Nsm;
use crate::seal::{
    data_key, gcm_open, gcm_seal, Anchor, Seal, SealConfigError, SealError, SealFuture,
};
use crate::sigv4::Credentials;

mod anchor;
mod aws;

pub use anchor::{parse_anchor_item, DynamoAnchorConfig, ANCHOR_CREDENTIALS_CONTEXT};
pub use aws::parse_imds_credentials;
use aws::{aws_endpoint, unreachable, Cached};

const INNER_VERSION: u8 = 1;
/// Bound into every KMS call; KMS refuses a blob with another context.
const CONTEXT_KEY: &str = "pii-enclave";
const CONTEXT_VALUE: &str = "keyring-v2";
const CONTEXT_DEPLOYMENT: &str = "pii-enclave:deployment";

/// `[seal] type = "aws-kms"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsSealConfig {
    /// Names this deployment; bound into every sealed keyring and every KMS
    /// call's EncryptionContext.
    pub deployment_id: String,
    /// The KMS key's full ARN (responses are checked against it; an alias or
    /// bare key id is refused, since the host could repoint an alias).
    pub key_id: String,
    pub region: String,
    /// Default `https://kms.<region>.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// An HTTP CONNECT proxy inside the enclave (the `[egress]
    /// connect_proxy`), so TLS to KMS terminates here while the host relays.
    /// Used for `https` URLs only (IMDS is plain HTTP on a fixed egress port).
    #[serde(default)]
    pub proxy: Option<String>,
    /// Extra PEM CA files (an enclave image has no system trust store).
    #[serde(default)]
    pub ca_certs: Vec<String>,
    #[serde(default)]
    pub credentials: CredentialSource,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// DANGEROUS, tests only: allow an `http://` KMS endpoint. Without TLS
    /// ending in the enclave, the host can forge `CiphertextForRecipient`
    /// (CMS is not authenticated) and choose the keyring's data key.
    #[serde(default)]
    pub dangerous_allow_http: bool,
    /// The rollback anchor (required unless `dangerous_no_anchor`).
    #[serde(default)]
    pub anchor: Option<DynamoAnchorConfig>,
    /// DANGEROUS, tests only: no rollback anchor (after a restart the host
    /// could serve any older keyring).
    #[serde(default)]
    pub dangerous_no_anchor: bool,
}

fn default_timeout_secs() -> u64 {
    10
}

/// Where AWS credentials come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "source", rename_all = "kebab-case")]
pub enum CredentialSource {
    /// IMDSv2 of the parent instance, reached through an egress port
    /// (`{listen = "127.0.0.1:8169", upstream = "169.254.169.254:80"}`).
    Imds {
        #[serde(default = "default_imds")]
        endpoint: String,
    },
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`
    /// injected into the enclave's environment at boot.
    Env,
}

fn default_imds() -> String {
    "http://169.254.169.254".into()
}

impl Default for CredentialSource {
    fn default() -> Self {
        CredentialSource::Imds {
            endpoint: default_imds(),
        }
    }
}

/// The seal.
pub struct KmsSeal {
    cfg: KmsSealConfig,
    endpoint: url::Url,
    host: String,
    http: reqwest::Client,
    attestor: Attestor,
    creds: Mutex<Option<Cached>>,
    /// RSA keys for the next calls, generated in the background (keygen is
    /// ~80 ms; each key is still used for one call only).
    spare: Arc<std::sync::Mutex<Vec<PrivateDecryptingKey>>>,
    refilling: Arc<std::sync::atomic::AtomicBool>,
    /// DynamoDB endpoint and host of the anchor, when there is one.
    dynamo: Option<(url::Url, String)>,
    /// The anchor principal's credentials, once released by KMS.
    anchor_creds: Mutex<Option<Credentials>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for KmsSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsSeal")
            .field("key_id", &self.cfg.key_id)
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl KmsSeal {
    pub const ID: &'static str = "aws-kms";

    pub fn new(cfg: KmsSealConfig, nsm: Arc<dyn Nsm>) -> Result<KmsSeal, SealConfigError> {
        if !is_key_arn(&cfg.key_id) {
            return Err(SealConfigError::KeyNotArn(cfg.key_id));
        }
        crate::seal::check_deployment_id(&cfg.deployment_id)?;
        if cfg.region.is_empty()
            || !cfg
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(SealConfigError::BadRegion(cfg.region));
        }
        let (endpoint, host) = aws_endpoint(
            "seal.endpoint",
            cfg.endpoint.clone(),
            &format!("https://kms.{}.amazonaws.com", cfg.region),
            cfg.dangerous_allow_http,
        )?;
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(cfg.timeout_secs))
            .redirect(reqwest::redirect::Policy::none());
        b = match &cfg.proxy {
            // https only: plain-http IMDS goes to its own egress port directly.
            Some(p) => b.proxy(
                reqwest::Proxy::https(p).map_err(|e| SealConfigError::Proxy(e.to_string()))?,
            ),
            None => b.no_proxy(),
        };
        for path in &cfg.ca_certs {
            let ca = |e: &dyn std::fmt::Display| SealConfigError::CaCert {
                path: path.clone(),
                why: e.to_string(),
            };
            let pem = std::fs::read(path).map_err(|e| ca(&e))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| ca(&e))?;
            b = b.add_root_certificate(cert);
        }
        let http = b
            .build()
            .map_err(|e| SealConfigError::HttpClient(e.to_string()))?;
        let dynamo = match (&cfg.anchor, cfg.dangerous_no_anchor) {
            (Some(a), _) => {
                if a.table.is_empty() || B64.decode(a.credentials_ciphertext.trim()).is_err() {
                    return Err(SealConfigError::AnchorIncomplete);
                }
                let (url, host) = aws_endpoint(
                    "seal.anchor.endpoint",
                    a.endpoint.clone(),
                    &format!("https://dynamodb.{}.amazonaws.com", cfg.region),
                    cfg.dangerous_allow_http,
                )?;
                Some((url, host))
            }
            (None, true) => None,
            (None, false) => return Err(SealConfigError::AnchorMissing),
        };
        Ok(KmsSeal {
            cfg,
            endpoint,
            host,
            http,
            attestor: Attestor::new(Some(nsm)),
            creds: Mutex::new(None),
            spare: Arc::new(std::sync::Mutex::new(Vec::new())),
            refilling: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            dynamo,
            anchor_creds: Mutex::new(None),
            clock: Arc::new(SystemClock),
        })
    }

    /// Read the time (SigV4 dates, credential refresh) from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> KmsSeal {
        self.clock = clock;
        self
    }
}

impl KmsSeal {
    /// A never-used RSA-2048 key: a spare if there is one; then the spares
    /// are topped up off the async threads. A keyring write makes two calls
    /// in a row (seal, then the verifying unseal), hence two spares.
    async fn fresh_key(&self) -> Result<PrivateDecryptingKey, SealError> {
        use std::sync::atomic::Ordering;
        const SPARES: usize = 2;
        let generate =
            || PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(|_| SealError::Rng);
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let key = match spare {
            Some(k) => k,
            None => tokio::task::spawn_blocking(generate)
                .await
                .map_err(|_| SealError::Rng)??,
        };
        if !self.refilling.swap(true, Ordering::AcqRel) {
            let (pool, flag) = (self.spare.clone(), self.refilling.clone());
            tokio::task::spawn_blocking(move || {
                while pool.lock().unwrap_or_else(|e| e.into_inner()).len() < SPARES {
                    match generate() {
                        Ok(k) => pool.lock().unwrap_or_else(|e| e.into_inner()).push(k),
                        Err(_) => break,
                    }
                }
                flag.store(false, Ordering::Release);
            });
        }
        Ok(key)
    }

    /// A fresh RSA-2048 key and an attestation document carrying its public half.
    async fn recipient(&self) -> Result<(PrivateDecryptingKey, Value), SealError> {
        let key = self.fresh_key().await?;
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| SealError::Rng)?
            .as_ref()
            .to_vec();
        let doc = self
            .attestor
            .bind_own_key(pii_proto::attest::Purpose::KmsRecipient, spki)
            .map_err(|e| unreachable(format!("attestation: {e}")))?;
        Ok((
            key,
            json!({
                "AttestationDocument": B64.encode(doc),
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            }),
        ))
    }

    /// The EncryptionContext of every call: KMS refuses a `CiphertextBlob`
    /// under any other, so a data key does not move between deployments.
    pub fn encryption_context(deployment_id: &str) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            (CONTEXT_KEY, CONTEXT_VALUE.to_owned()),
            (CONTEXT_DEPLOYMENT, deployment_id.to_owned()),
        ])
    }

    fn context(&self) -> BTreeMap<&'static str, String> {
        Self::encryption_context(&self.cfg.deployment_id)
    }

    /// Check a `GenerateDataKey`/`Decrypt` answer and open its CMS.
    fn plaintext_from(
        &self,
        v: &Value,
        key: &PrivateDecryptingKey,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if v.get("Plaintext").is_some_and(|p| !p.is_null()) {
            tracing::error!(
                "SECURITY: KMS returned a plaintext data key: the attestation was dropped on the way, \
                 or the response is forged; refusing it"
            );
            return Err(SealError::Denied(
                "KMS response carries a plaintext key (attestation stripped?)".into(),
            ));
        }
        let key_id = v.get("KeyId").and_then(Value::as_str).unwrap_or("");
        if !self.is_our_key(key_id) {
            return Err(SealError::Denied(format!(
                "KMS answered for key {key_id:?}, not the configured key"
            )));
        }
        let cms = v
            .get("CiphertextForRecipient")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                SealError::Denied("KMS response has no CiphertextForRecipient".into())
            })?;
        let cms = B64.decode(cms).map_err(|_| SealError::Malformed)?;
        let pt = crate::cms::open(&cms, key).map_err(|e| {
            tracing::warn!(error = %e, "CiphertextForRecipient refused (forged, replayed or corrupted)");
            SealError::Authentication
        })?;
        Ok(pt)
    }

    /// As [`Self::plaintext_from`], for a 32-byte data key.
    fn data_key_from(
        &self,
        v: &Value,
        key: &PrivateDecryptingKey,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let dk = self.plaintext_from(v, key)?;
        if dk.len() != 32 {
            return Err(SealError::Authentication);
        }
        Ok(dk)
    }

    fn is_our_key(&self, returned: &str) -> bool {
        // `new` accepts only a full key ARN: an alias could be repointed by
        // the host (kms:UpdateAlias) at a key it can decrypt with.
        returned == self.cfg.key_id
    }

    async fn generate(&self) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), SealError> {
        let (key, recipient) = self.recipient().await?;
        let v = self
            .call(
                "GenerateDataKey",
                &json!({
                    "KeyId": self.cfg.key_id,
                    "KeySpec": "AES_256",
                    "EncryptionContext": self.context(),
                    "Recipient": recipient,
                }),
            )
            .await?;
        let dk = self.data_key_from(&v, &key)?;
        let blob = v
            .get("CiphertextBlob")
            .and_then(Value::as_str)
            .and_then(|s| B64.decode(s).ok())
            .filter(|b| !b.is_empty() && b.len() <= usize::from(u16::MAX))
            .ok_or(SealError::Malformed)?;
        Ok((dk, blob))
    }

    async fn decrypt(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.decrypt_in(blob, self.context()).await
    }

    /// Attested Decrypt of `blob` under `context`.
    async fn decrypt_in(
        &self,
        blob: &[u8],
        context: BTreeMap<&'static str, String>,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (key, recipient) = self.recipient().await?;
        let v = self
            .call(
                "Decrypt",
                &json!({
                    "KeyId": self.cfg.key_id,
                    "CiphertextBlob": B64.encode(blob),
                    "EncryptionContext": context,
                    "Recipient": recipient,
                }),
            )
            .await?;
        self.plaintext_from(&v, &key)
    }
}

impl Seal for KmsSeal {
    fn id(&self) -> &str {
        Self::ID
    }

    fn anchor(&self) -> Option<&dyn Anchor> {
        self.dynamo.is_some().then_some(self as &dyn Anchor)
    }

    fn binding(&self) -> String {
        format!(
            "deployment={};kms-key={}",
            self.cfg.deployment_id, self.cfg.key_id
        )
    }

    fn wrap<'a>(&'a self, plaintext: &'a [u8], aad: &'a [u8]) -> SealFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let (dk, blob) = self.generate().await?;
            let sealed = gcm_seal(&data_key(&dk)?, plaintext, aad)?;
            let n = u16::try_from(blob.len()).map_err(|_| SealError::Malformed)?;
            let mut out = Vec::with_capacity(3 + blob.len() + sealed.len());
            out.push(INNER_VERSION);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&blob);
            out.extend_from_slice(&sealed);
            Ok(out)
        })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a [u8],
        aad: &'a [u8],
    ) -> SealFuture<'a, Zeroizing<Vec<u8>>> {
        Box::pin(async move {
            let (blob, sealed) = split(wrapped)?;
            let dk = self.decrypt(blob).await?;
            gcm_open(&data_key(&dk)?, sealed, aad)
        })
    }
}

/// `arn:<partition>:kms:<region>:<account>:key/<id>`.
fn is_key_arn(s: &str) -> bool {
    let p: Vec<&str> = s.split(':').collect();
    p.len() == 6
        && p[0] == "arn"
        && p[1].starts_with("aws")
        && p[2] == "kms"
        && !p[3].is_empty()
        && p[4].len() == 12
        && p[4].bytes().all(|b| b.is_ascii_digit())
        && p[5].strip_prefix("key/").is_some_and(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `(CiphertextBlob, sealed keyring)` of an inner blob.
pub fn split(wrapped: &[u8]) -> Result<(&[u8], &[u8]), SealError> {
    if wrapped.len() < 3 || wrapped[0] != INNER_VERSION {
        return Err(SealError::Malformed);
    }
    let n = usize::from(u16::from_be_bytes([wrapped[1], wrapped[2]]));
    let blob = wrapped.get(3..3 + n).ok_or(SealError::Malformed)?;
    Ok((blob, &wrapped[3 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_defaults_and_rejects_typos() {
        let c: KmsSealConfig = toml::from_str(
            r#"
            deployment_id = "pii-prod-eu-west-1"
            key_id = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            region = "eu-west-1"
            proxy = "http://127.0.0.1:3128"
            "#,
        )
        .unwrap();
        assert!(
            matches!(c.credentials, CredentialSource::Imds { ref endpoint } if endpoint == "http://169.254.169.254")
        );
        assert!(toml::from_str::<KmsSealConfig>(
            "deployment_id='d'\nkey_id='k'\nregion='r'\nregoin='x'"
        )
        .is_err());
        let c: KmsSealConfig = toml::from_str(
            "deployment_id='d'\nkey_id='k'\nregion='eu-west-1'\n[credentials]\nsource='env'",
        )
        .unwrap();
        assert!(matches!(c.credentials, CredentialSource::Env));
    }

    struct NoNsm;
    impl Nsm for NoNsm {
        fn attest(&self, _: &crate::nsm::AttestRequest) -> Result<Vec<u8>, crate::nsm::NsmError> {
            Err(crate::nsm::NsmError("none".into()))
        }
        fn random(&self, _: usize) -> Result<Vec<u8>, crate::nsm::NsmError> {
            Err(crate::nsm::NsmError("none".into()))
        }
        fn describe_pcr(&self, _: u16) -> Result<Vec<u8>, crate::nsm::NsmError> {
            Err(crate::nsm::NsmError("none".into()))
        }
    }

    #[test]
    fn plain_http_kms_needs_the_dangerous_switch() {
        let cfg = |endpoint: &str, dangerous_allow_http| KmsSealConfig {
            deployment_id: "d".into(),
            key_id: "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab".into(),
            region: "eu-west-1".into(),
            endpoint: Some(endpoint.into()),
            proxy: None,
            ca_certs: vec![],
            credentials: CredentialSource::Env,
            timeout_secs: 1,
            dangerous_allow_http,
            anchor: None,
            dangerous_no_anchor: true,
        };
        let e = KmsSeal::new(cfg("http://127.0.0.1:1", false), Arc::new(NoNsm)).unwrap_err();
        assert!(e.to_string().contains("plain http"), "{e}");
        assert!(KmsSeal::new(cfg("http://127.0.0.1:1", true), Arc::new(NoNsm)).is_ok());
        assert!(KmsSeal::new(cfg("https://127.0.0.1:1", false), Arc::new(NoNsm)).is_ok());
        // The default endpoint is AWS's https one.
        let mut c = cfg("https://x", false);
        c.endpoint = None;
        assert!(KmsSeal::new(c, Arc::new(NoNsm)).is_ok());
        // Only a full key ARN: an alias or bare id could be made to name another key.
        for k in [
            "alias/pii",
            "1234abcd-12ab",
            "arn:aws:kms:eu-west-1:111122223333:alias/pii",
            "",
        ] {
            let mut c = cfg("https://x", false);
            c.key_id = k.into();
            let e = KmsSeal::new(c, Arc::new(NoNsm)).unwrap_err();
            assert!(e.to_string().contains("full KMS key ARN"), "{k}: {e}");
        }
        // No anchor: refused unless the test switch says so.
        let mut c = cfg("https://x", false);
        c.dangerous_no_anchor = false;
        let e = KmsSeal::new(c.clone(), Arc::new(NoNsm)).unwrap_err();
        assert!(e.to_string().contains("seal.anchor is required"), "{e}");
        c.anchor = Some(DynamoAnchorConfig {
            table: "t".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            credentials_ciphertext: "AAAA".into(),
            expect_record: false,
        });
        let e = KmsSeal::new(c.clone(), Arc::new(NoNsm)).unwrap_err();
        assert!(e.to_string().contains("plain http"), "{e}");
        c.anchor.as_mut().unwrap().endpoint = None;
        assert!(KmsSeal::new(c, Arc::new(NoNsm)).is_ok());
    }

    #[test]
    fn inner_blob_split_is_bounds_checked() {
        assert_eq!(split(&[]), Err(SealError::Malformed));
        assert_eq!(split(&[2, 0, 0]), Err(SealError::Malformed));
        assert_eq!(split(&[1, 0, 5, 1, 2]), Err(SealError::Malformed));
        assert_eq!(split(&[1, 0, 2, 7, 8, 9]), Ok((&[7u8, 8][..], &[9u8][..])));
    }
}
