//! The `[loadshed]` settings, with the key names of the sprint plan's
//! ConfigMap (`mode`, `shed_threshold_ms`, `max_drop_percent`) and the
//! environment overrides `PII_PROXY_LOADSHED_*`.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A latency-driven limit on the enclave hop, fair shares, bounded waits.
    Adaptive,
    /// Every request goes straight to the enclave (the pool's own bounds
    /// still apply).
    Off,
}

impl std::str::FromStr for Mode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim() {
            "adaptive" => Ok(Mode::Adaptive),
            "off" => Ok(Mode::Off),
            other => Err(ConfigError::Mode(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("loadshed mode {0:?}: expected \"adaptive\" or \"off\"")]
    Mode(String),
    #[error("{name}={value:?}: {expected}")]
    Value {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// `[loadshed]` in the proxy's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    /// No request waits for the enclave longer than this.
    pub shed_threshold_ms: u64,
    /// At most this share of the requests within their client's fair share
    /// is refused over any 5 s; past it, requests go in over the limit.
    pub max_drop_percent: u8,
    /// Bounds of the adaptive limit (requests in flight to the enclave).
    pub min_limit: u32,
    pub max_limit: u32,
    pub initial_limit: u32,
}

impl Default for Config {
    /// Off unless configured (the shipped Kubernetes configuration turns it
    /// on); the other values are the sprint plan's.
    fn default() -> Self {
        Config {
            mode: Mode::Off,
            shed_threshold_ms: 1500,
            max_drop_percent: 30,
            min_limit: 2,
            max_limit: 512,
            initial_limit: 32,
        }
    }
}

/// The environment variables that override the file, in this order.
pub const ENV_MODE: &str = "PII_PROXY_LOADSHED_MODE";
pub const ENV_SHED_THRESHOLD_MS: &str = "PII_PROXY_LOADSHED_SHED_THRESHOLD_MS";
pub const ENV_MAX_DROP_PERCENT: &str = "PII_PROXY_LOADSHED_MAX_DROP_PERCENT";

impl Config {
    /// Applies the `PII_PROXY_LOADSHED_*` overrides found by `lookup` (the
    /// process environment in the proxy, a map in tests), then checks.
    pub fn with_overrides(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if let Some(v) = lookup(ENV_MODE) {
            self.mode = v.parse()?;
        }
        if let Some(v) = lookup(ENV_SHED_THRESHOLD_MS) {
            self.shed_threshold_ms = v.trim().parse().map_err(|_| ConfigError::Value {
                name: ENV_SHED_THRESHOLD_MS,
                value: v.clone(),
                expected: "milliseconds, a whole number",
            })?;
        }
        if let Some(v) = lookup(ENV_MAX_DROP_PERCENT) {
            self.max_drop_percent = v.trim().parse().map_err(|_| ConfigError::Value {
                name: ENV_MAX_DROP_PERCENT,
                value: v.clone(),
                expected: "a percentage, 0 to 100",
            })?;
        }
        self.check()
    }

    /// Refuses settings that cannot work.
    pub fn check(self) -> Result<Self, ConfigError> {
        let bad = |name, value: String, expected| {
            Err(ConfigError::Value {
                name,
                value,
                expected,
            })
        };
        if !(1..=600_000).contains(&self.shed_threshold_ms) {
            return bad(
                "shed_threshold_ms",
                self.shed_threshold_ms.to_string(),
                "1 to 600000",
            );
        }
        if self.max_drop_percent > 100 {
            return bad(
                "max_drop_percent",
                self.max_drop_percent.to_string(),
                "0 to 100",
            );
        }
        if self.min_limit == 0 || self.min_limit > self.max_limit {
            return bad(
                "min_limit",
                self.min_limit.to_string(),
                "at least 1 and at most max_limit",
            );
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_then_checks() {
        let c: Config =
            toml::from_str("mode = \"adaptive\"\nshed_threshold_ms = 900\nmax_drop_percent = 20\n")
                .expect("parses");
        assert_eq!(c.mode, Mode::Adaptive);
        assert_eq!(c.initial_limit, 32);
        let env = |k: &str| match k {
            ENV_MODE => Some("off".to_owned()),
            ENV_MAX_DROP_PERCENT => Some("10".to_owned()),
            _ => None,
        };
        let c = c.with_overrides(env).expect("valid");
        assert_eq!(
            (c.mode, c.shed_threshold_ms, c.max_drop_percent),
            (Mode::Off, 900, 10)
        );

        let e = Config::default()
            .with_overrides(|k| (k == ENV_MODE).then(|| "fast".to_owned()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "loadshed mode \"fast\": expected \"adaptive\" or \"off\""
        );
        let e = Config::default()
            .with_overrides(|k| (k == ENV_MAX_DROP_PERCENT).then(|| "150".to_owned()))
            .unwrap_err();
        assert!(e.to_string().contains("0 to 100"), "{e}");
        assert!(toml::from_str::<Config>("mode = \"adaptive\"\nshed_ms = 1\n").is_err());
        assert!(Config {
            min_limit: 0,
            ..Config::default()
        }
        .check()
        .is_err());
    }
}
