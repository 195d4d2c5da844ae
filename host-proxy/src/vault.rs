//! `host-proxy vault bootstrap`: prepare Vault/OpenBao for the enclave's
//! Transit seal, with an operator's token, once.
//!
//! Creates (idempotently) the Transit mount and the key-encryption key, a
//! least-privilege policy (encrypt/decrypt/rewrap on that one key), the
//! AppRole auth mount and a role bound to the policy (single-use secret_ids
//! with a short TTL, periodic tokens the enclave renews, optional CIDR
//! binding), and returns the role_id.
//!
//! With `--sidecar`, it then delivers a secret_id the host cannot use:
//! 1. asks the running enclave (through the sidecar) for a document binding
//!    its bootstrap key, with a fresh nonce;
//! 2. verifies it with the `verifier` crate: chain to the AWS root (or, in
//!    development only, the root the sidecar names), the expected PCRs, the
//!    nonce, purpose `vault-bootstrap`, and a public key present;
//! 3. creates a secret_id and encrypts it to that key (RSAES-OAEP-SHA-256 with
//!    the label `pii-enclave/vault-bootstrap/v1`: RSA-OAEP because the key is
//!    one aws-lc-rs generates and KMS-style Recipient tooling understands,
//!    and the label keeps the ciphertext from meaning anything elsewhere);
//! 4. posts the ciphertext to `sys/bootstrap/vault`.
//!
//! The secret_id never appears in clear outside this process and the enclave,
//! and it works once: after the enclave's login it is worth nothing. The
//! operator token is used for these calls only and never stored.

use vaultrs::api::auth::approle::requests::{GenerateNewSecretIDRequest, SetAppRoleRequest};
use vaultrs::api::ResponseWrapper as _;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

/// What bootstrap creates.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapArgs {
    /// Vault/OpenBao address.
    #[arg(long, env = "VAULT_ADDR")]
    pub address: String,
    /// Operator token (from the environment, never a flag value in shell history).
    #[arg(long = "token-env", default_value = "VAULT_TOKEN")]
    pub token_env: String,
    /// PEM CA certificate to trust for Vault's TLS.
    #[arg(long)]
    pub ca_cert: Option<String>,
    #[arg(long, default_value = "transit")]
    pub mount: String,
    #[arg(long, default_value = "pii-enclave-kek")]
    pub key: String,
    #[arg(long, default_value = "approle")]
    pub approle_mount: String,
    #[arg(long, default_value = "pii-enclave")]
    pub role: String,
    /// KV v2 mount of the keyring's rollback anchor (the seal's
    /// `anchor_kv_mount`); created if missing.
    #[arg(long, default_value = "pii-enclave-anchor")]
    pub anchor_mount: String,
    /// The seal's `deployment_id`: the role may then write only this
    /// deployment's anchor (use one role per deployment).
    #[arg(long)]
    pub deployment_id: Option<String>,
    /// Period of the enclave's Vault tokens (periodic: renewed by the
    /// enclave, never expiring while it renews).
    #[arg(long, default_value = "1h")]
    pub token_ttl: String,
    /// The sidecar of the running enclave: deliver a secret_id encrypted to
    /// its attested bootstrap key.
    #[arg(long)]
    pub sidecar: Option<String>,
    /// Environment variable holding a sidecar token with `read` and `update`
    /// on `sys/bootstrap/vault`.
    #[arg(long, default_value = "PII_BOOTSTRAP_TOKEN")]
    pub sidecar_token_env: String,
    /// Expected measurements (a measurement record or `{"PCR0": …}` JSON).
    #[arg(long)]
    pub expected: Option<std::path::PathBuf>,
    /// DANGEROUS, development only: trust the root the sidecar names (the
    /// development NSM's). The host could then forge the document.
    #[arg(long)]
    pub dangerous_trust_sidecar_root: bool,
    /// How long an undelivered secret_id stays valid.
    #[arg(long, default_value = "10m")]
    pub secret_id_ttl: String,
    /// CIDRs the secret_id and tokens are bound to (the instance's address).
    #[arg(long)]
    pub bind_cidr: Vec<String>,
    /// DANGEROUS, tests only: also print a response-wrapped secret_id (for
    /// `dangerous_wrapped_secret_id`); the host can unwrap it first.
    #[arg(long)]
    pub dangerous_wrapped_secret_id: bool,
}

impl BootstrapArgs {
    /// The CLI's defaults for `address`, with the operator token in `token_env`.
    pub fn new(address: &str, token_env: &str) -> BootstrapArgs {
        BootstrapArgs {
            address: address.to_owned(),
            token_env: token_env.to_owned(),
            ca_cert: None,
            mount: "transit".into(),
            key: "pii-enclave-kek".into(),
            approle_mount: "approle".into(),
            role: "pii-enclave".into(),
            anchor_mount: "pii-enclave-anchor".into(),
            deployment_id: None,
            token_ttl: "1h".into(),
            sidecar: None,
            sidecar_token_env: "PII_BOOTSTRAP_TOKEN".into(),
            expected: None,
            dangerous_trust_sidecar_root: false,
            secret_id_ttl: "10m".into(),
            bind_cidr: vec![],
            dangerous_wrapped_secret_id: false,
        }
    }
}

/// The policy the enclave's AppRole gets: the one KEK and the rollback
/// anchor records, nothing else.
pub fn policy(mount: &str, key: &str, anchor: &str, deployment: Option<&str>) -> String {
    let head = deployment.unwrap_or("*");
    format!(
        "# pii-enclave keyring seal: only this key-encryption key\n\
         path \"{mount}/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"{mount}/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"{mount}/rewrap/{key}\" {{ capabilities = [\"update\"] }}\n\
         # the keyring's rollback anchor (check-and-set writes)\n\
         path \"{anchor}/data/keyring-head/{head}\" {{ capabilities = [\"create\", \"update\", \"read\"] }}\n\
         path \"{anchor}/metadata/keyring-head/{head}\" {{ capabilities = [\"read\"] }}\n\
         # the audit log's signed checkpoints (check-and-set writes)\n\
         path \"{anchor}/data/audit-checkpoints/{head}\" {{ capabilities = [\"create\", \"update\", \"read\"] }}\n\
         path \"{anchor}/metadata/audit-checkpoints/{head}\" {{ capabilities = [\"read\"] }}\n\
         path \"auth/token/renew-self\" {{ capabilities = [\"update\"] }}\n\
         path \"auth/token/lookup-self\" {{ capabilities = [\"read\"] }}\n"
    )
}

fn err(what: &str) -> impl FnOnce(vaultrs::error::ClientError) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{what}: {e}")
}

/// Run the bootstrap; returns the JSON to hand to the enclave's deployment.
pub async fn bootstrap(a: &BootstrapArgs) -> anyhow::Result<serde_json::Value> {
    if !(a.address.starts_with("http://") || a.address.starts_with("https://"))
        || url::Url::parse(&a.address).is_err()
    {
        anyhow::bail!("--address {:?} is not an http(s) URL", a.address);
    }
    let token = std::env::var(&a.token_env)
        .map_err(|_| anyhow::anyhow!("set the operator token in ${}", a.token_env))?;
    let mut settings = VaultClientSettingsBuilder::default();
    settings.address(&a.address).token(token).verify(true);
    if let Some(ca) = &a.ca_cert {
        settings.ca_certs(vec![ca.clone()]);
    }
    let client = VaultClient::new(settings.build()?)?;

    let mounts = vaultrs::sys::mount::list(&client)
        .await
        .map_err(err("listing secret engines"))?;
    if !mounts.contains_key(&format!("{}/", a.mount)) {
        vaultrs::sys::mount::enable(&client, &a.mount, "transit", None)
            .await
            .map_err(err("enabling the transit engine"))?;
    }
    // Creating an existing key is a no-op in Transit.
    vaultrs::transit::key::create(&client, &a.mount, &a.key, None)
        .await
        .map_err(err("creating the key-encryption key"))?;
    let policy_name = format!("{}-seal", a.role);
    if !mounts.contains_key(&format!("{}/", a.anchor_mount)) {
        vaultrs::sys::mount::enable(&client, &a.anchor_mount, "kv-v2", None)
            .await
            .map_err(err("enabling the anchor's KV v2 engine"))?;
    }
    vaultrs::sys::policy::set(
        &client,
        &policy_name,
        &policy(
            &a.mount,
            &a.key,
            &a.anchor_mount,
            a.deployment_id.as_deref(),
        ),
    )
    .await
    .map_err(err("writing the policy"))?;
    let auths = vaultrs::sys::auth::list(&client)
        .await
        .map_err(err("listing auth methods"))?;
    if !auths.contains_key(&format!("{}/", a.approle_mount)) {
        vaultrs::sys::auth::enable(&client, &a.approle_mount, "approle", None)
            .await
            .map_err(err("enabling AppRole"))?;
    }
    let mut role = SetAppRoleRequest::builder();
    role.token_policies(vec![policy_name.clone()])
        .token_period(a.token_ttl.clone())
        .token_no_default_policy(true)
        .secret_id_num_uses(1u64)
        .secret_id_ttl(a.secret_id_ttl.clone());
    if !a.bind_cidr.is_empty() {
        role.secret_id_bound_cidrs(a.bind_cidr.clone())
            .token_bound_cidrs(a.bind_cidr.clone());
    }
    vaultrs::auth::approle::role::set(&client, &a.approle_mount, &a.role, Some(&mut role))
        .await
        .map_err(err("writing the AppRole"))?;
    let role_id = vaultrs::auth::approle::role::read_id(&client, &a.approle_mount, &a.role)
        .await
        .map_err(err("reading the role_id"))?
        .role_id;
    let mut out = serde_json::json!({
        "role_id": role_id,
        "policy": policy_name,
        "enclave_seal_config": format!(
            "[seal]\ntype = \"vault-transit\"\ndeployment_id = \"<a name for this deployment>\"\naddress = \"<Vault address as seen from the enclave (https)>\"\nmount = \"{}\"\nkey = \"{}\"\napprole_mount = \"{}\"\nrole_id = \"{}\"\n# the secret_id arrives encrypted to the enclave: host-proxy vault bootstrap --sidecar …\n",
            a.mount, a.key, a.approle_mount, role_id
        ),
    });
    if a.dangerous_wrapped_secret_id {
        let mut req = GenerateNewSecretIDRequest::builder();
        req.mount(&a.approle_mount).role_name(&a.role);
        if !a.bind_cidr.is_empty() {
            req.cidr_list(a.bind_cidr.clone());
        }
        let wrapped = req
            .build()?
            .wrap(&client)
            .await
            .map_err(err("generating a wrapped secret_id"))?;
        out["dangerous_wrapped_secret_id"] = wrapped.info.token.into();
        out["wrapped_secret_id_ttl_secs"] = wrapped.info.ttl.into();
    }
    if let Some(sidecar) = &a.sidecar {
        let delivered = deliver(a, &client, sidecar).await?;
        out["delivered"] = delivered;
    }
    Ok(out)
}

/// What a bootstrap document must satisfy, and the key it yields.
pub fn bootstrap_key_from(
    document: &[u8],
    policy: &verifier::attestation::Policy,
) -> anyhow::Result<Vec<u8>> {
    use pii_proto::attest::{Purpose, UserData};
    let v = verifier::attestation::verify(document, policy)
        .map_err(|e| anyhow::anyhow!("the enclave's bootstrap document is refused: {e}"))?;
    let ud = v
        .doc
        .user_data
        .as_deref()
        .map(UserData::decode)
        .transpose()
        .map_err(|e| anyhow::anyhow!("bootstrap document: {e}"))?;
    if ud.map(|u| u.purpose) != Some(Purpose::VaultBootstrap) {
        anyhow::bail!("the document is not a vault-bootstrap document");
    }
    v.doc
        .public_key
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the bootstrap document carries no public key"))
}

/// RSAES-OAEP-SHA-256 with the bootstrap label, to the enclave's key (SPKI DER).
pub fn encrypt_to_bootstrap_key(spki: &[u8], secret: &[u8]) -> anyhow::Result<Vec<u8>> {
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256};
    let k = PublicEncryptingKey::from_der(spki)
        .map_err(|e| anyhow::anyhow!("the enclave's bootstrap key is not an RSA key: {e}"))?;
    if k.key_size_bits() < 3072 {
        anyhow::bail!("the enclave's bootstrap key is shorter than 3072 bits");
    }
    let k = OaepPublicEncryptingKey::new(k).map_err(|_| anyhow::anyhow!("RSA key refused"))?;
    let mut out = vec![0u8; k.ciphertext_size()];
    let n = k
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            secret,
            &mut out,
            Some(pii_proto::attest::VAULT_BOOTSTRAP_OAEP_LABEL),
        )
        .map_err(|_| anyhow::anyhow!("RSA-OAEP encryption failed"))?
        .len();
    out.truncate(n);
    Ok(out)
}

async fn sidecar_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let mut rb = http.request(method, &url).header("X-Vault-Token", token);
    if let Some(b) = body {
        rb = rb.body(b.to_string());
    }
    let resp = rb
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("sidecar {url}: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| anyhow::anyhow!("sidecar {url}: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("sidecar {url} answered {status}: {}", v["errors"]);
    }
    Ok(v)
}

/// Steps 1–4 of the module doc; returns what the enclave said.
async fn deliver(
    a: &BootstrapArgs,
    vault: &VaultClient,
    sidecar: &str,
) -> anyhow::Result<serde_json::Value> {
    use base64::Engine as _;
    let expected = a.expected.as_ref().ok_or_else(|| {
        anyhow::anyhow!("--sidecar needs --expected (the measurements to accept)")
    })?;
    let pcrs = std::fs::read_to_string(expected)
        .map_err(anyhow::Error::from)
        .and_then(|t| Ok(serde_json::from_str::<serde_json::Value>(&t)?))
        .and_then(|j| Ok(verifier::attestation::parse_expected(&j)?))
        .map_err(|e| anyhow::anyhow!("--expected {}: {e}", expected.display()))?;
    if !pcrs.contains_key(&0) {
        // Without PCR0 another image on the same instance could match.
        anyhow::bail!(
            "--expected {} must name PCR0 (the image)",
            expected.display()
        );
    }
    let token = std::env::var(&a.sidecar_token_env)
        .map_err(|_| anyhow::anyhow!("set a sidecar token in ${}", a.sidecar_token_env))?;
    let base = sidecar.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        // Never follow the sidecar elsewhere with the token.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let mut nonce = [0u8; 32];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let v = sidecar_call(
        &http,
        reqwest::Method::GET,
        format!("{base}/v1/sys/bootstrap/vault?nonce={}", hex::encode(nonce)),
        &token,
        None,
    )
    .await?;
    let doc = v["data"]["document"]
        .as_str()
        .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
        .ok_or_else(|| anyhow::anyhow!("the sidecar returned no document"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let mut policy = if a.dangerous_trust_sidecar_root {
        let pem = v["data"]["dangerous_dev_root_pem"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the sidecar names no development root"))?;
        let der = verifier::attestation::pem_to_der(pem).map_err(anyhow::Error::msg)?;
        verifier::attestation::Policy::dangerous_with_root(now, der)
    } else {
        verifier::attestation::Policy::aws(now)
    };
    policy.expected_pcrs = pcrs;
    policy.nonce = Some(nonce.to_vec());
    let spki = bootstrap_key_from(&doc, &policy)?;

    // Secret_ids of earlier bootstraps (spent, or never delivered) go first:
    // only the one made now is valid afterwards.
    if let Ok(old) =
        vaultrs::auth::approle::role::secret::list(vault, &a.approle_mount, &a.role).await
    {
        for accessor in old.keys {
            vaultrs::auth::approle::role::secret::delete_accessor(
                vault,
                &a.approle_mount,
                &a.role,
                &accessor,
            )
            .await
            .map_err(err("destroying an earlier secret_id"))?;
        }
    }
    let mut opts = GenerateNewSecretIDRequest::builder();
    if !a.bind_cidr.is_empty() {
        opts.cidr_list(a.bind_cidr.clone());
    }
    let secret = vaultrs::auth::approle::role::secret::generate(
        vault,
        &a.approle_mount,
        &a.role,
        Some(&mut opts),
    )
    .await
    .map_err(err("generating a secret_id"))?;
    let sealed = encrypt_to_bootstrap_key(&spki, secret.secret_id.as_bytes())?;
    let r = sidecar_call(
        &http,
        reqwest::Method::POST,
        format!("{base}/v1/sys/bootstrap/vault"),
        &token,
        Some(serde_json::json!({
            "ciphertext": base64::engine::general_purpose::STANDARD.encode(sealed)
        })),
    )
    .await?;
    Ok(serde_json::json!({
        "secret_id_accessor": secret.secret_id_accessor,
        // What the sidecar relayed: the host could change it. Check
        // `verifier boot` or the service itself.
        "unverified_enclave_sealed": r["data"]["sealed"],
        "unverified_enclave_seal_error": r["data"]["seal_error"],
    }))
}
