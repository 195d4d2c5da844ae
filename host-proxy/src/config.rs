//! Host proxy configuration: a TOML file, then environment variables
//! (`PII_PROXY_*`), then command-line flags, in increasing precedence.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// TCP address of the sidecar API.
    pub listen: String,
    /// Optional Unix socket for the sidecar API.
    pub listen_unix: Option<PathBuf>,
    /// Enclave address: `vsock://CID:PORT` or `unix:/path`.
    pub enclave: String,
    /// Connections in the enclave pool.
    pub connections: usize,
    /// Largest accepted request body (Vault's default: 32 MiB).
    pub max_request_bytes: usize,
    /// Largest protocol frame to and from the enclave.
    pub max_frame_bytes: usize,
    /// Deadline for one API call through the enclave.
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// Directory of the file keyring store.
    pub keyring_dir: PathBuf,
    /// How often the store is checked for blobs written by other replicas.
    #[serde(with = "humantime_serde_compat")]
    pub keyring_poll: Duration,
    /// Directory of the signed audit log (one JSON-lines file per stream).
    pub audit_dir: PathBuf,
    /// Sync audit records to disk before acknowledging them.
    pub audit_fsync: bool,
    /// Stored-token mappings: `sqlite:PATH` (embedded) or `postgres://…`.
    pub token_store: String,
    /// Egress relay for the enclave (`[relay]`); off when absent.
    pub relay: Option<crate::relay::RelayConfig>,
    /// Load shedding in front of the enclave (`[loadshed]`; off by default,
    /// `PII_PROXY_LOADSHED_*` override it, reloaded while serving).
    pub loadshed: pii_loadshed::Config,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8210".into(),
            listen_unix: None,
            enclave: "vsock://16:5000".into(),
            connections: 4,
            max_request_bytes: 32 * 1024 * 1024,
            max_frame_bytes: 48 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            keyring_dir: PathBuf::from("/var/lib/pii-enclave/keyring"),
            keyring_poll: Duration::from_secs(2),
            audit_dir: PathBuf::from("/var/lib/pii-enclave/audit"),
            audit_fsync: true,
            token_store: "sqlite:/var/lib/pii-enclave/tokens.db".into(),
            relay: None,
            loadshed: pii_loadshed::Config::default(),
        }
    }
}

mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a configuration file cannot be read, parsed or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read or parsed.
    #[error(transparent)]
    File(#[from] pii_config_file::ConfigFileError),
    #[error("connections must be between 1 and 256")]
    Connections { connections: usize },
    #[error("max_frame_bytes must exceed max_request_bytes by at least 64 KiB")]
    FrameMargin {
        max_request_bytes: usize,
        max_frame_bytes: usize,
    },
    #[error("max_frame_bytes cannot exceed {limit}")]
    FrameTooLarge {
        max_frame_bytes: usize,
        limit: usize,
    },
    /// `enclave` is not a transport address.
    #[error(transparent)]
    Enclave(pii_transport::AddrParseError),
    #[error("listen: {0}")]
    Listen(#[source] std::net::AddrParseError),
    #[error("relay.listen: {0}")]
    RelayListen(#[source] pii_transport::AddrParseError),
    #[error("loadshed: {0}")]
    Loadshed(#[from] pii_loadshed::ConfigError),
}

impl Config {
    /// Pure parse of a TOML document.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Ok(pii_config_file::parse(text)?)
    }

    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        Ok(pii_config_file::load(path)?)
    }

    /// Check values a TOML type cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.connections == 0 || self.connections > 256 {
            return Err(ConfigError::Connections {
                connections: self.connections,
            });
        }
        if self.max_request_bytes + 64 * 1024 > self.max_frame_bytes {
            return Err(ConfigError::FrameMargin {
                max_request_bytes: self.max_request_bytes,
                max_frame_bytes: self.max_frame_bytes,
            });
        }
        if self.max_frame_bytes > pii_proto::HARD_MAX_FRAME_LEN {
            return Err(ConfigError::FrameTooLarge {
                max_frame_bytes: self.max_frame_bytes,
                limit: pii_proto::HARD_MAX_FRAME_LEN,
            });
        }
        self.enclave
            .parse::<pii_transport::Addr>()
            .map_err(ConfigError::Enclave)?;
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(ConfigError::Listen)?;
        if let Some(r) = &self.relay {
            r.listen
                .parse::<pii_transport::Addr>()
                .map_err(ConfigError::RelayListen)?;
        }
        self.loadshed.clone().check()?;
        Ok(())
    }

    /// Applies the `PII_PROXY_LOADSHED_*` variables of the process
    /// environment to `[loadshed]`.
    pub fn loadshed_from_env(&mut self) -> Result<(), ConfigError> {
        self.loadshed = self
            .loadshed
            .clone()
            .with_overrides(|k| std::env::var(k).ok())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_defaults_and_overrides() {
        let c = Config::parse("listen = \"127.0.0.1:9000\"\nrequest_timeout = \"5s\"").unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        assert_eq!(c.max_request_bytes, 32 * 1024 * 1024);
        c.validate().unwrap();
        assert!(matches!(
            Config::parse("lissen = 1"),
            Err(ConfigError::File(pii_config_file::ConfigFileError::Parse(
                _
            )))
        ));
        let bad = Config {
            connections: 0,
            ..Config::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::Connections { connections: 0 })
        ));
        let bad = Config {
            enclave: "tcp://x".into(),
            ..Config::default()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::Enclave(_))));
    }

    #[test]
    fn errors_name_the_file_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.toml");
        let e = Config::load(&path).unwrap_err();
        assert!(
            matches!(&e, ConfigError::File(pii_config_file::ConfigFileError::Read { path: p, .. }) if *p == path),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with(&format!("{}: ", path.display())),
            "{e}"
        );
        std::fs::write(&path, "connections = \"four\"").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(
            matches!(&e, ConfigError::File(pii_config_file::ConfigFileError::ParseFile { path: p, .. }) if *p == path),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with(&format!("{}: ", path.display())),
            "{e}"
        );
        let bad = Config {
            max_request_bytes: 48 * 1024 * 1024,
            ..Config::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::FrameMargin { .. })
        ));
        let bad = Config {
            listen: "localhost".into(),
            ..Config::default()
        };
        let e = bad.validate().unwrap_err();
        assert!(matches!(e, ConfigError::Listen(_)), "{e:?}");
        assert!(e.to_string().starts_with("listen: "), "{e}");
    }

    #[test]
    fn loadshed_section() {
        let c = Config::parse(
            "[loadshed]\nmode = \"adaptive\"\nshed_threshold_ms = 1500\nmax_drop_percent = 30\n",
        )
        .unwrap();
        assert_eq!(c.loadshed.mode, pii_loadshed::Mode::Adaptive);
        c.validate().unwrap();
        assert_eq!(Config::default().loadshed.mode, pii_loadshed::Mode::Off);
        assert!(Config::parse("[loadshed]\nmode = \"sometimes\"").is_err());
        let bad = Config::parse("[loadshed]\nmax_drop_percent = 101").unwrap();
        let e = bad.validate().unwrap_err();
        assert!(
            e.to_string().starts_with("loadshed: max_drop_percent"),
            "{e}"
        );
    }

    #[test]
    fn relay_section() {
        let c = Config::parse(
            "[relay]\nlisten = \"vsock://any:8000\"\nconnect_timeout = \"2s\"\n[[relay.allow]]\nhost = \"*.amazonaws.com\"\nport = 443\nmax_connections = 512\n[[relay.deny]]\nhost = \"169.254.169.254\"\n",
        )
        .unwrap();
        let r = c.relay.as_ref().unwrap();
        assert_eq!(r.allow[0].max_connections, Some(512));
        assert_eq!(r.connect_timeout, Duration::from_secs(2));
        c.validate().unwrap();
        assert!(Config::parse("[relay]\nlisten = \"x\"\nbogus = 1").is_err());
    }

    /// The Kubernetes manifest's proxy.toml is a valid configuration.
    #[test]
    fn k8s_configmap_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/configmap.yaml");
        let y: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let toml = y["data"]["proxy.toml"].as_str().unwrap();
        let c = Config::parse(toml).unwrap();
        c.validate().unwrap();
        let relay = c.relay.unwrap();
        crate::relay::Relay::new(&relay, std::sync::Arc::new(crate::metrics::Metrics::new()))
            .unwrap();
        assert!(relay.allow.iter().any(|r| r.host == "169.254.169.254"));
    }
}
