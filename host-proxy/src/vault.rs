//! `host-proxy vault bootstrap`: prepare Vault/OpenBao for the enclave's
//! Transit seal, with an operator's token, once.
//!
//! Creates (idempotently) the Transit mount and the key-encryption key, a
//! least-privilege policy (encrypt/decrypt/rewrap on that one key), the
//! AppRole auth mount and a role bound to the policy, and returns the
//! role_id plus a **response-wrapped** secret_id. Only the wrapping token
//! leaves this command; the enclave unwraps it itself, and a wrapping token
//! works once, so if anyone else unwraps it first the enclave reports it.
//! The operator token is used for these calls only and never stored.

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
    /// Lifetime of the enclave's Vault tokens (renewed by the enclave).
    #[arg(long, default_value = "1h")]
    pub token_ttl: String,
}

/// The policy the enclave's AppRole gets: the one KEK, nothing else.
pub fn policy(mount: &str, key: &str) -> String {
    format!(
        "# pii-enclave keyring seal: only this key-encryption key\n\
         path \"{mount}/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"{mount}/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"{mount}/rewrap/{key}\" {{ capabilities = [\"update\"] }}\n\
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
    vaultrs::sys::policy::set(&client, &policy_name, &policy(&a.mount, &a.key))
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
    vaultrs::auth::approle::role::set(
        &client,
        &a.approle_mount,
        &a.role,
        Some(
            &mut SetAppRoleRequest::builder()
                .token_policies(vec![policy_name.clone()])
                .token_ttl(a.token_ttl.clone())
                .token_no_default_policy(true)
                .secret_id_num_uses(0u64),
        ),
    )
    .await
    .map_err(err("writing the AppRole"))?;
    let role_id = vaultrs::auth::approle::role::read_id(&client, &a.approle_mount, &a.role)
        .await
        .map_err(err("reading the role_id"))?
        .role_id;
    let wrapped = GenerateNewSecretIDRequest::builder()
        .mount(&a.approle_mount)
        .role_name(&a.role)
        .build()?
        .wrap(&client)
        .await
        .map_err(err("generating a wrapped secret_id"))?;
    Ok(serde_json::json!({
        "role_id": role_id,
        "wrapped_secret_id": wrapped.info.token,
        "wrapped_secret_id_ttl_secs": wrapped.info.ttl,
        "policy": policy_name,
        "enclave_seal_config": format!(
            "[seal]\ntype = \"vault-transit\"\ndeployment_id = \"<a name for this deployment>\"\naddress = \"<Vault address as seen from the enclave>\"\nmount = \"{}\"\nkey = \"{}\"\napprole_mount = \"{}\"\nrole_id = \"{}\"\n# wrapped secret_id: PII_ENCLAVE_VAULT_WRAPPED_SECRET_ID at boot\n",
            a.mount, a.key, a.approle_mount, role_id
        ),
    }))
}
