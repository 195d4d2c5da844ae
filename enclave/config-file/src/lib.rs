//! # pii-config-file — one way to read a TOML configuration
//!
//! Both binaries (`pii-enclave` inside, `host-proxy` outside) read their
//! configuration with [`parse`] or [`load`]: unknown keys are the config
//! struct's business (`#[serde(deny_unknown_fields)]`), and every failure
//! names the file.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The text is not a valid configuration (syntax, unknown or mistyped key).
    #[error(transparent)]
    Parse(#[from] toml::de::Error),
    /// [`ConfigFileError::Parse`] of a file.
    #[error("{}: {source}", path.display())]
    ParseFile {
        path: PathBuf,
        source: toml::de::Error,
    },
}

/// Parse configuration text.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ConfigFileError> {
    Ok(toml::from_str(text)?)
}

/// Read and parse the configuration file at `path`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigFileError::ParseFile {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct C {
        listen: String,
    }

    #[test]
    fn parse_and_load_name_what_failed() {
        assert_eq!(
            parse::<C>("listen = \"x\"").unwrap(),
            C { listen: "x".into() }
        );
        assert!(matches!(
            parse::<C>("other = 1"),
            Err(ConfigFileError::Parse(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let e = load::<C>(&p).unwrap_err();
        assert!(matches!(e, ConfigFileError::Read { .. }), "{e}");
        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
        std::fs::write(&p, "listen = 3").unwrap();
        let e = load::<C>(&p).unwrap_err();
        assert!(matches!(e, ConfigFileError::ParseFile { .. }), "{e}");
        std::fs::write(&p, "listen = \"y\"").unwrap();
        assert_eq!(load::<C>(&p).unwrap().listen, "y");
    }
}
