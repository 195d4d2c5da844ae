//! Enclave configuration: a TOML file baked into the measured image, with a
//! few command-line overrides for development.
//!
//! Parsing ([`Config::parse`]) is pure; loading reads a file. Unknown fields
//! are errors, so a typo cannot silently disable a setting.

use serde::Deserialize;

use crate::auth::AuthConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `vsock://any:5000` in an enclave, `unix:/path` in development.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest protocol frame in either direction, bytes.
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: usize,
    #[serde(default)]
    pub seal: SealConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Outbound connections through the host's egress relay (`[egress]`).
    #[serde(default)]
    pub egress: Option<EgressConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
}

/// `[audit]`: how often checkpoints of the audit log reach the seal's
/// anchor (Vault KV / DynamoDB), outside the host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// 0 (default): before every decrypt/decode answer, so the host cannot
    /// drop an acknowledged record unnoticed; N: at most every N seconds
    /// (faster; records since the last checkpoint are covered only by the
    /// receipts callers kept).
    #[serde(default)]
    pub checkpoint_secs: u64,
}

/// Local TCP endpoints inside the enclave that tunnel through the host's
/// relay. TLS to Vault/KMS still terminates in the enclave's clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// The relay: `vsock://3:8000` (the parent instance) or `unix:/path`.
    pub relay: String,
    /// One local port per upstream: `{listen = "127.0.0.1:8443", upstream = "kms.eu-west-1.amazonaws.com:443"}`.
    #[serde(default)]
    pub fixed: Vec<FixedEgress>,
    /// An HTTP CONNECT proxy for clients that honour `HTTPS_PROXY`.
    #[serde(default)]
    pub connect_proxy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedEgress {
    pub listen: String,
    pub upstream: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "kebab-case")]
pub enum SealConfig {
    /// No seal configured: the enclave refuses to start.
    #[default]
    None,
    /// **Development only**: passphrase-derived key; the host can unseal.
    DangerousDev { passphrase: String },
    /// Envelope encryption under a Vault/OpenBao Transit key (AppRole).
    VaultTransit(pii_custody::vault_seal::VaultSealConfig),
    /// Data key from AWS KMS, released only to an attested enclave.
    AwsKms(pii_custody::kms_seal::KmsSealConfig),
}

fn default_listen() -> String {
    "vsock://any:5000".into()
}

fn default_max_frame() -> usize {
    48 * 1024 * 1024
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            max_frame_bytes: default_max_frame(),
            seal: SealConfig::None,
            auth: AuthConfig::default(),
            egress: None,
            audit: AuditConfig::default(),
        }
    }
}

pub use pii_config_file::ConfigFileError;

impl Config {
    pub fn parse(text: &str) -> Result<Config, ConfigFileError> {
        pii_config_file::parse(text)
    }

    pub fn load(path: &std::path::Path) -> Result<Config, ConfigFileError> {
        pii_config_file::load(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_full_and_reject_unknown() {
        let c = Config::parse(
            r#"
            listen = "unix:/tmp/e.sock"
            [seal]
            type = "dangerous-dev"
            passphrase = "x"
            [auth]
            tokens = []
            "#,
        )
        .unwrap();
        assert_eq!(c.listen, "unix:/tmp/e.sock");
        assert!(matches!(c.seal, SealConfig::DangerousDev { .. }));
        assert!(Config::parse("lisen = 'typo'")
            .unwrap_err()
            .to_string()
            .contains("unknown field"));
        assert!(Config::parse("[seal]\ntype = 'magic'").is_err());
    }

    /// The shipped examples (`enclave/config/*.toml`) stay valid.
    #[test]
    fn example_configs_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let c = Config::load(&p).unwrap();
                crate::auth::Auth::from_config(&c.auth).unwrap();
                assert!(!matches!(c.seal, SealConfig::None), "{}", p.display());
                n += 1;
            }
        }
        assert!(n >= 2);
    }
}
