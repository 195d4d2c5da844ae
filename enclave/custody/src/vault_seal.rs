//! Vault/OpenBao Transit seal: envelope encryption of the keyring under a
//! Transit key-encryption key the enclave never sees.
//!
//! `wrap` draws a fresh 256-bit data key, seals the keyring with AES-256-GCM
//! (the blob's associated data bound), and has Vault encrypt the data key
//! with the KEK (`transit/encrypt/<kek>`); `unwrap` has Vault decrypt the
//! data key (`transit/decrypt/<kek>`). Vault only ever sees a random data key,
//! never the keyring. The enclave is the Vault client (vaultrs): in
//! production its TLS terminates inside the enclave and the host's egress
//! relay only copies bytes.
//!
//! Authentication is AppRole, and the secret_id reaches the enclave only
//! encrypted to it: `host-proxy vault bootstrap --sidecar …` fetches a
//! document binding the enclave's bootstrap key (`crate::attest`), verifies
//! it against the expected measurements, creates a single-use secret_id and
//! sends it RSA-OAEP-encrypted to that key (`POST sys/bootstrap/vault`). The
//! host relays only ciphertext, and a secret_id that has been used is worth
//! nothing. Tokens are renewed; on expiry or a 403 the enclave logs in again
//! with the secret_id it keeps in memory, if the role allows another use.
//!
//! `dangerous_wrapped_secret_id` (tests only) takes a response-wrapped
//! secret_id from the config instead; whoever reads the config can unwrap it
//! first, so it proves nothing against a hostile host.
//!
//! KEK rotation: rotate the key in Vault; every keyring write seals under the
//! newest version, and [`VaultTransitSeal::rewrap`] re-encrypts a stored data
//! key without Vault seeing the keyring.
//!
//! Why one file: the Vault seal is one client whose login, token renewal, attested bootstrap, data-key wrap/unwrap and rollback anchor all share one session state and one lock.

use std::sync::Arc;
use std::time::Duration;

use pii_engine::clock::{Clock, SystemClock};

use aws_lc_rs::aead::NONCE_LEN;
use base64::Engine as _;
use serde::Deserialize;
use tokio::sync::Mutex;
use vaultrs::client::{Client as _, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use crate::seal::{
    data_key, gcm_open, gcm_seal, Advance, Anchor, Head, Seal, SealConfigError, SealError,
    SealFuture,
};

/// `[seal] type = "vault-transit"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSealConfig {
    /// Names this deployment; bound into every sealed keyring, so a keyring
    /// does not move between deployments that share a KEK and an image.
    pub deployment_id: String,
    /// Vault's address as seen from the enclave (an egress tunnel port).
    pub address: String,
    #[serde(default = "default_mount")]
    pub mount: String,
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default = "default_approle")]
    pub approle_mount: String,
    pub role_id: String,
    /// DANGEROUS, tests only: a response-wrapping token around the
    /// secret_id. The host can read the config and unwrap it first; in
    /// production the secret_id arrives encrypted to the enclave
    /// (`host-proxy vault bootstrap --sidecar`).
    #[serde(default)]
    pub dangerous_wrapped_secret_id: Option<String>,
    /// PEM CA certificate file(s) to trust for Vault's TLS.
    #[serde(default)]
    pub ca_certs: Vec<String>,
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// KV v2 mount holding the rollback anchor: the keyring's newest
    /// (generation, blob hash) at `keyring-head/<deployment_id>`, written
    /// with check-and-set using the enclave's own token.
    #[serde(default = "default_anchor_mount")]
    pub anchor_kv_mount: String,
    /// DANGEROUS, tests only: no rollback anchor (after a restart the host
    /// could serve any older keyring).
    #[serde(default)]
    pub dangerous_no_anchor: bool,
    /// Set once the first keyring is anchored: a missing anchor record is
    /// then a rollback, not a new deployment.
    #[serde(default)]
    pub anchor_expect_record: bool,
    /// DANGEROUS, tests only: allow `http://` Vault. Without TLS ending in the
    /// enclave, the host that relays the bytes reads the secret_id, the token
    /// and every data key.
    #[serde(default)]
    pub dangerous_allow_http: bool,
}

fn default_anchor_mount() -> String {
    "pii-enclave-anchor".into()
}

fn default_mount() -> String {
    "transit".into()
}
fn default_key() -> String {
    "pii-enclave-kek".into()
}
fn default_approle() -> String {
    "approle".into()
}
fn default_timeout_secs() -> u64 {
    10
}

struct Session {
    /// Reused for every call of the session (one connection pool).
    client: std::sync::Arc<VaultClient>,
    renew_at: Duration,
    expires: Duration,
}

struct State {
    wrapped: Option<Zeroizing<String>>,
    secret_id: Option<Zeroizing<String>>,
    session: Option<Session>,
}

/// The seal. Cheap to clone the config; state is behind one async mutex.
pub struct VaultTransitSeal {
    cfg: VaultSealConfig,
    state: Mutex<State>,
    /// Token renewal times (monotonic).
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for VaultTransitSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultTransitSeal")
            .field("address", &self.cfg.address)
            .field("key", &self.cfg.key)
            .finish_non_exhaustive()
    }
}

fn unreachable_err(e: ClientError) -> SealError {
    // Never include request bodies: only the error's kind and Vault's message.
    SealError::Unreachable(match e {
        ClientError::APIError { code, errors } => {
            format!("Vault answered {code}: {}", errors.join("; "))
        }
        other => other.to_string().chars().take(300).collect(),
    })
}

fn is_auth_error(e: &ClientError) -> bool {
    matches!(e, ClientError::APIError { code: 403, .. })
}

impl VaultTransitSeal {
    pub const ID: &'static str = "vault-transit";

    pub fn new(cfg: VaultSealConfig) -> Result<Self, SealConfigError> {
        let ok = cfg.address.starts_with("http://") || cfg.address.starts_with("https://");
        if !ok || url::Url::parse(&cfg.address).is_err() {
            return Err(SealConfigError::NotHttpUrl(cfg.address));
        }
        if cfg.address.starts_with("http://") && !cfg.dangerous_allow_http {
            return Err(SealConfigError::PlainHttp(cfg.address));
        }
        if cfg.role_id.is_empty() {
            return Err(SealConfigError::EmptyRoleId);
        }
        crate::seal::check_deployment_id(&cfg.deployment_id)?;
        let wrapped = cfg
            .dangerous_wrapped_secret_id
            .clone()
            .filter(|s| !s.is_empty())
            .map(Zeroizing::new);
        Ok(Self {
            cfg,
            state: Mutex::new(State {
                wrapped,
                secret_id: None,
                session: None,
            }),
            clock: Arc::new(SystemClock),
        })
    }

    /// Time token renewals on `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> VaultTransitSeal {
        self.clock = clock;
        self
    }

    fn client(&self, token: &str) -> Result<VaultClient, SealError> {
        let settings = VaultClientSettingsBuilder::default()
            .address(&self.cfg.address)
            .token(token)
            .ca_certs(self.cfg.ca_certs.clone())
            .verify(true)
            .timeout(Some(Duration::from_secs(self.cfg.timeout_secs)))
            .build()
            .map_err(|e| SealError::Unreachable(format!("Vault client settings: {e}")))?;
        VaultClient::new(settings).map_err(unreachable_err)
    }

    /// Log in (unwrapping the secret_id the first time) unless the current
    /// token is still good; renew it when due.
    async fn session(&self, st: &mut State) -> Result<(), SealError> {
        let now = self.clock.monotonic();
        if let Some(s) = &st.session {
            if now < s.renew_at {
                return Ok(());
            }
            if now < s.expires {
                match s.client.renew(None).await {
                    Ok(info) => {
                        let ttl = Duration::from_secs(info.lease_duration.max(1));
                        if let Some(s) = st.session.as_mut() {
                            s.renew_at = now + ttl * 2 / 3;
                            s.expires = now + ttl;
                        }
                        return Ok(());
                    }
                    // A failed renewal (Vault or the relay briefly away) is
                    // not a reason to drop a token that is still valid: the
                    // secret_id is single-use, so a new login may be impossible.
                    Err(e) if !is_auth_error(&e) => {
                        tracing::warn!(error = %unreachable_err(e), "Vault token renewal failed; keeping the token until it expires");
                        return Ok(());
                    }
                    Err(_) => tracing::warn!("Vault refused the token renewal; logging in again"),
                }
            }
            st.session = None;
        }
        if st.secret_id.is_none() {
            let wrapped = st.wrapped.take().ok_or_else(|| {
                SealError::Unreachable(
                    "waiting for a secret_id: deliver one with `host-proxy vault bootstrap --sidecar …`"
                        .into(),
                )
            })?;
            // The wrapping token is the client token of the unwrap call (it
            // carries no other rights and is revoked by the call).
            let unwrapper = self.client(wrapped.as_str())?;
            #[derive(Deserialize)]
            struct Unwrapped {
                secret_id: String,
            }
            let u: Unwrapped = vaultrs::sys::wrapping::unwrap(&unwrapper, None)
                .await
                .map_err(|e| {
                    if matches!(e, ClientError::APIError { code: 400, .. }) {
                        tracing::error!(
                            "SECURITY: the wrapped secret_id was already unwrapped or has expired; \
                             if this enclave did not unwrap it, someone else did: revoke the AppRole secret_id"
                        );
                        SealError::Unreachable("wrapped secret_id already used or expired (possible theft)".into())
                    } else {
                        unreachable_err(e)
                    }
                })?;
            st.secret_id = Some(Zeroizing::new(u.secret_id));
        }
        let secret_id = st
            .secret_id
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let secret_id = Zeroizing::new(secret_id);
        let anon = self.client("")?;
        let info = vaultrs::auth::approle::login(
            &anon,
            &self.cfg.approle_mount,
            &self.cfg.role_id,
            &secret_id,
        )
        .await
        .map_err(unreachable_err)?;
        let ttl = Duration::from_secs(info.lease_duration.max(1));
        let mut client = anon;
        client.set_token(&info.client_token);
        tracing::info!(ttl_secs = ttl.as_secs(), "logged in to Vault with AppRole");
        st.session = Some(Session {
            client: std::sync::Arc::new(client),
            renew_at: now + ttl * 2 / 3,
            expires: now + ttl,
        });
        Ok(())
    }

    /// Run a Transit call with a valid session; on 403 log in once more.
    async fn with_client<T, F, Fut>(&self, f: F) -> Result<T, SealError>
    where
        F: Fn(std::sync::Arc<VaultClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut st = self.state.lock().await;
        for attempt in 0..2 {
            self.session(&mut st).await?;
            let client = match &st.session {
                Some(s) => s.client.clone(),
                None => return Err(SealError::Unreachable("no Vault session".into())),
            };
            match f(client).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt == 0 && is_auth_error(&e) => {
                    tracing::warn!("Vault refused the token; logging in again");
                    st.session = None;
                }
                Err(e) => return Err(unreachable_err(e)),
            }
        }
        Err(SealError::Unreachable("Vault refused a fresh token".into()))
    }

    async fn encrypt_dek(&self, dek: &[u8]) -> Result<String, SealError> {
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(dek));
        let (mount, key) = (self.cfg.mount.clone(), self.cfg.key.clone());
        self.with_client(|c| {
            let (mount, key, b64) = (mount.clone(), key.clone(), b64.to_string());
            async move { vaultrs::transit::data::encrypt(c.as_ref(), &mount, &key, &b64, None).await }
        })
        .await
        .map(|r| r.ciphertext)
    }

    async fn decrypt_dek(&self, ct: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (mount, key) = (self.cfg.mount.clone(), self.cfg.key.clone());
        let r = self
            .with_client(|c| {
                let (mount, key, ct) = (mount.clone(), key.clone(), ct.to_owned());
                async move { vaultrs::transit::data::decrypt(c.as_ref(), &mount, &key, &ct, None).await }
            })
            .await?;
        let dek = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(r.plaintext.as_bytes())
                .map_err(|_| SealError::Malformed)?,
        );
        if dek.len() != 32 {
            return Err(SealError::Malformed);
        }
        Ok(dek)
    }

    /// Re-encrypt a wrapped blob's data key under the KEK's newest version
    /// (`transit/rewrap`); the keyring ciphertext is unchanged.
    pub async fn rewrap(&self, wrapped: &[u8]) -> Result<Vec<u8>, SealError> {
        let (ct, rest) = split(wrapped)?;
        let (mount, key) = (self.cfg.mount.clone(), self.cfg.key.clone());
        let r = self
            .with_client(|c| {
                let (mount, key, ct) = (mount.clone(), key.clone(), ct.to_owned());
                async move { vaultrs::transit::data::rewrap(c.as_ref(), &mount, &key, &ct, None).await }
            })
            .await?;
        Ok(join(&r.ciphertext, rest))
    }
}

/// Inner layout: `len:u16 ‖ vault ciphertext (ASCII) ‖ nonce ‖ AES-GCM(keyring) ‖ tag`.
fn join(vault_ct: &str, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + vault_ct.len() + rest.len());
    out.extend_from_slice(&(vault_ct.len() as u16).to_be_bytes());
    out.extend_from_slice(vault_ct.as_bytes());
    out.extend_from_slice(rest);
    out
}

fn split(wrapped: &[u8]) -> Result<(&str, &[u8]), SealError> {
    let n = usize::from(u16::from_be_bytes(
        wrapped
            .get(..2)
            .ok_or(SealError::Malformed)?
            .try_into()
            .map_err(|_| SealError::Malformed)?,
    ));
    let ct = wrapped.get(2..2 + n).ok_or(SealError::Malformed)?;
    let ct = std::str::from_utf8(ct).map_err(|_| SealError::Malformed)?;
    if !ct.starts_with("vault:v") {
        return Err(SealError::Malformed);
    }
    let rest = &wrapped[2 + n..];
    if rest.len() < NONCE_LEN + 16 {
        return Err(SealError::Malformed);
    }
    Ok((ct, rest))
}

impl Seal for VaultTransitSeal {
    fn id(&self) -> &str {
        Self::ID
    }

    fn anchor(&self) -> Option<&dyn Anchor> {
        (!self.cfg.dangerous_no_anchor).then_some(self as &dyn Anchor)
    }

    fn provide_credential(&self, secret: Zeroizing<Vec<u8>>) -> SealFuture<'_, ()> {
        Box::pin(async move {
            let s = std::str::from_utf8(&secret)
                .ok()
                .filter(|s| {
                    s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
                .ok_or(SealError::Malformed)?;
            let mut st = self.state.lock().await;
            if st
                .session
                .as_ref()
                .is_some_and(|sess| self.clock.monotonic() < sess.expires)
            {
                // Anyone who can reach the API could otherwise replace a
                // working (single-use, already spent) credential and cut the
                // enclave off from Vault.
                return Err(SealError::Denied(
                    "the seal already has a working Vault session; restart the enclave to bootstrap it again"
                        .into(),
                ));
            }
            st.secret_id = Some(Zeroizing::new(s.to_owned()));
            st.wrapped = None;
            st.session = None;
            drop(st);
            tracing::info!("Vault secret_id received through the attested bootstrap");
            Ok(())
        })
    }

    fn binding(&self) -> String {
        format!(
            "deployment={};vault-kek={}/{}",
            self.cfg.deployment_id, self.cfg.mount, self.cfg.key
        )
    }

    fn wrap<'a>(&'a self, plaintext: &'a [u8], aad: &'a [u8]) -> SealFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let mut dek = Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(dek.as_mut()).map_err(|_| SealError::Rng)?;
            let body = gcm_seal(&data_key(dek.as_ref())?, plaintext, aad)?;
            let vault_ct = self.encrypt_dek(dek.as_ref()).await?;
            Ok(join(&vault_ct, &body))
        })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a [u8],
        aad: &'a [u8],
    ) -> SealFuture<'a, Zeroizing<Vec<u8>>> {
        Box::pin(async move {
            let (ct, rest) = split(wrapped)?;
            let dek = self.decrypt_dek(ct).await?;
            gcm_open(&data_key(&dek)?, rest, aad)
        })
    }
}

/// The anchor record as stored in KV v2.
#[derive(serde::Serialize, Deserialize)]
struct HeadRecord {
    generation: String,
    hash: String,
}

impl VaultTransitSeal {
    fn anchor_path(&self) -> String {
        format!("keyring-head/{}", self.cfg.deployment_id)
    }

    /// `(KV version, head)` of the record; version 0 when there is none.
    async fn read_head(&self) -> Result<(u32, Option<Head>), SealError> {
        let (version, rec) = self.kv_read::<HeadRecord>(self.anchor_path()).await?;
        Ok((version, rec.map(|r| r.head()).transpose()?))
    }

    /// `(KV version, data)` of a record of the anchor's mount; version 0
    /// when there is none. The version and the data come from one version.
    async fn kv_read<T: serde::de::DeserializeOwned + Send>(
        &self,
        path: String,
    ) -> Result<(u32, Option<T>), SealError> {
        let mount = self.cfg.anchor_kv_mount.clone();
        let meta = self
            .with_client(|c| {
                let (mount, path) = (mount.clone(), path.clone());
                async move {
                    match vaultrs::kv2::read_metadata(c.as_ref(), &mount, &path).await {
                        Ok(m) => Ok(Some(m.current_version)),
                        Err(ClientError::APIError { code: 404, .. }) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            })
            .await?;
        let Some(version) = meta.filter(|v| *v > 0) else {
            return Ok((0, None));
        };
        let rec: T = self
            .with_client(|c| {
                let (mount, path) = (mount.clone(), path.clone());
                async move { vaultrs::kv2::read_version(c.as_ref(), &mount, &path, version).await }
            })
            .await?;
        let version = u32::try_from(version).map_err(|_| malformed_head())?;
        Ok((version, Some(rec)))
    }

    /// Write `rec` if the record is still at `version` (0: absent); false
    /// when check-and-set lost.
    async fn kv_cas_write(
        &self,
        path: String,
        rec: serde_json::Value,
        version: u32,
    ) -> Result<bool, SealError> {
        let mount = self.cfg.anchor_kv_mount.clone();
        self.with_client(|c| {
            let (mount, path, rec) = (mount.clone(), path.clone(), rec.clone());
            async move {
                let opts = vaultrs::api::kv2::requests::SetSecretRequestOptions { cas: version };
                match vaultrs::kv2::set_with_options(c.as_ref(), &mount, &path, &rec, opts).await {
                    Ok(_) => Ok(true),
                    // check-and-set lost: someone advanced it meanwhile.
                    Err(ClientError::APIError { code: 400, errors })
                        if errors.iter().any(|e| e.contains("check-and-set")) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    fn checkpoints_path(&self) -> String {
        format!("audit-checkpoints/{}", self.cfg.deployment_id)
    }
}

/// The audit checkpoints as stored in KV v2 (one string field: the set's JSON).
#[derive(serde::Serialize, Deserialize)]
struct CheckpointRecord {
    checkpoints: String,
}

fn malformed_head() -> SealError {
    SealError::Unreachable("the rollback anchor record is malformed".into())
}

impl HeadRecord {
    fn head(&self) -> Result<Head, SealError> {
        let generation = self.generation.parse().map_err(|_| malformed_head())?;
        let hash = hex::decode(&self.hash)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or_else(malformed_head)?;
        Ok(Head { generation, hash })
    }
}

impl Anchor for VaultTransitSeal {
    fn expects_record(&self) -> bool {
        self.cfg.anchor_expect_record
    }

    fn describe(&self) -> String {
        format!(
            "Vault KV {}/{}",
            self.cfg.anchor_kv_mount,
            self.anchor_path()
        )
    }

    fn read(&self) -> SealFuture<'_, Option<Head>> {
        // One call (the newest version); `advance` also needs the KV version.
        Box::pin(async move {
            let (mount, path) = (self.cfg.anchor_kv_mount.clone(), self.anchor_path());
            let rec: Option<HeadRecord> = self
                .with_client(|c| {
                    let (mount, path) = (mount.clone(), path.clone());
                    async move {
                        match vaultrs::kv2::read(c.as_ref(), &mount, &path).await {
                            Ok(r) => Ok(Some(r)),
                            Err(ClientError::APIError { code: 404, .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                })
                .await?;
            rec.map(|r| r.head()).transpose()
        })
    }

    fn advance(&self, expected: Option<Head>, next: Head) -> SealFuture<'_, Advance> {
        Box::pin(async move {
            let (version, current) = self.read_head().await?;
            if current != expected {
                return Ok(Advance::Conflict(current));
            }
            let rec = HeadRecord {
                generation: next.generation.to_string(),
                hash: hex::encode(next.hash),
            };
            let rec = serde_json::to_value(&rec).map_err(|_| SealError::Malformed)?;
            if self.kv_cas_write(self.anchor_path(), rec, version).await? {
                Ok(Advance::Done)
            } else {
                Ok(Advance::Conflict(self.read_head().await?.1))
            }
        })
    }

    fn read_checkpoints(&self) -> SealFuture<'_, (u64, Option<Vec<u8>>)> {
        Box::pin(async move {
            let (v, rec) = self
                .kv_read::<CheckpointRecord>(self.checkpoints_path())
                .await?;
            Ok((u64::from(v), rec.map(|r| r.checkpoints.into_bytes())))
        })
    }

    fn write_checkpoints(&self, version: u64, bytes: Vec<u8>) -> SealFuture<'_, bool> {
        Box::pin(async move {
            let version = u32::try_from(version).map_err(|_| SealError::Malformed)?;
            let rec = CheckpointRecord {
                checkpoints: String::from_utf8(bytes).map_err(|_| SealError::Malformed)?,
            };
            let rec = serde_json::to_value(&rec).map_err(|_| SealError::Malformed)?;
            self.kv_cas_write(self.checkpoints_path(), rec, version)
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trip_and_malformed() {
        let rest = vec![7u8; NONCE_LEN + 20];
        let j = join("vault:v3:abc", &rest);
        let (ct, r) = split(&j).unwrap();
        assert_eq!(ct, "vault:v3:abc");
        assert_eq!(r, &rest[..]);
        assert_eq!(split(&[0]).unwrap_err(), SealError::Malformed);
        assert_eq!(
            split(&join("nope", &rest)).unwrap_err(),
            SealError::Malformed
        );
        assert_eq!(
            split(&join("vault:v1:x", &[1, 2])).unwrap_err(),
            SealError::Malformed
        );
        let mut huge = vec![0xff, 0xff];
        huge.extend_from_slice(b"vault:v1");
        assert_eq!(split(&huge).unwrap_err(), SealError::Malformed);
    }

    #[test]
    fn config_is_checked() {
        let cfg = |addr: &str, wrapped: Option<&str>| VaultSealConfig {
            address: addr.into(),
            mount: default_mount(),
            key: default_key(),
            approle_mount: default_approle(),
            deployment_id: "d".into(),
            role_id: "r".into(),
            dangerous_wrapped_secret_id: wrapped.map(str::to_owned),
            ca_certs: vec![],
            timeout_secs: 1,
            anchor_kv_mount: default_anchor_mount(),
            dangerous_no_anchor: false,
            anchor_expect_record: false,
            dangerous_allow_http: false,
        };
        assert!(VaultTransitSeal::new(cfg("ftp://x", Some("w"))).is_err());
        let e = VaultTransitSeal::new(cfg("http://127.0.0.1:8200", Some("w"))).unwrap_err();
        assert!(e.to_string().contains("plain http"), "{e}");
        assert!(VaultTransitSeal::new(cfg("https://127.0.0.1:8200", Some("w"))).is_ok());
        let mut c = cfg("http://127.0.0.1:8200", Some("w"));
        c.dangerous_allow_http = true;
        assert!(VaultTransitSeal::new(c).is_ok());
    }
}
