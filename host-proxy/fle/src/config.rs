//! `--config FILE` (or `PII_FLE_CONFIG`): a run's settings as TOML, below
//! the command line and the environment.
//!
//! Keys are the long flags' names (`vault_addr` or `vault-addr`); a key is
//! used only when its flag is neither on the command line nor set through
//! its environment variable. The file's values are turned into flags and
//! parsed with the rest, so they get the same parsing, range checks and
//! errors as flags do. A key that no command knows is an error (a typo must
//! not silently fall back to a default); a key that only another command
//! knows (`seconds` of `workload` in a file shared with `backfill`) is
//! skipped.
//!
//! ```toml
//! database_url = "postgres://fle@db.internal:5432/app?sslmode=verify-full&sslrootcert=/etc/pii/db-ca.pem"
//! vault_addr = "https://vault.internal:8200"
//! vault_token_file = "/run/secrets/vault-token"
//! ca_cert = "/etc/pii/vault-ca.pem"
//! batch = 1000
//! latency_budget_ms = 200
//! search_path = ["app"]
//! ```

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::CommandFactory as _;

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] pii_config_file::ConfigFileError),
    #[error("{}: unknown key {key:?} (keys are the long flags' names, e.g. vault_addr)", path.display())]
    UnknownKey { path: PathBuf, key: String },
    #[error("{}: {key}: {why}", path.display())]
    BadValue {
        path: PathBuf,
        key: String,
        why: &'static str,
    },
}

/// The command line with the configuration file's settings (from
/// `--config` or `PII_FLE_CONFIG`) inserted as flags right after the
/// subcommand; the arguments unchanged when there is no file.
pub fn with_config(args: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    let cli = crate::cli::Cli::command();
    // Errors (a missing flag, a bad value) are for the real parse to report.
    let Ok(m) = cli.clone().ignore_errors(true).try_get_matches_from(&args) else {
        return Ok(args);
    };
    let Some(path) = m.get_one::<PathBuf>("config").cloned() else {
        return Ok(args);
    };
    let Some((name, sub_m)) = m.subcommand() else {
        return Ok(args);
    };
    let table: toml::Table = pii_config_file::load(&path)?;
    let Some(sub) = cli.find_subcommand(name) else {
        return Ok(args);
    };
    let mut flags = Vec::new();
    for (key, value) in &table {
        let id = key.replace('-', "_");
        if id == "config" {
            return Err(ConfigError::BadValue {
                path,
                key: key.clone(),
                why: "a configuration file cannot name another",
            });
        }
        let Some(arg) = sub.get_arguments().find(|a| a.get_id() == id.as_str()) else {
            let elsewhere = cli
                .get_subcommands()
                .any(|s| s.get_arguments().any(|a| a.get_id() == id.as_str()));
            if elsewhere {
                continue;
            }
            return Err(ConfigError::UnknownKey {
                path,
                key: key.clone(),
            });
        };
        let Some(long) = arg.get_long() else {
            return Err(ConfigError::UnknownKey {
                path,
                key: key.clone(),
            });
        };
        if matches!(
            sub_m.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = |why| ConfigError::BadValue {
            path: path.clone(),
            key: key.clone(),
            why,
        };
        let flag = OsString::from(format!("--{long}"));
        let takes_value = arg.get_action().takes_values();
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    flags.push(flag);
                }
            }
            toml::Value::Boolean(_) => return Err(bad("a value, not true or false")),
            _ if !takes_value => return Err(bad("true or false")),
            toml::Value::Array(items) => {
                let Some(delimiter) = arg.get_value_delimiter() else {
                    return Err(bad("one value, not a list"));
                };
                let mut parts = Vec::new();
                for item in items {
                    parts.push(scalar(item).ok_or_else(|| bad("a list of strings or numbers"))?);
                }
                flags.push(flag);
                flags.push(parts.join(&delimiter.to_string()).into());
            }
            v => {
                flags.push(flag);
                flags.push(scalar(v).ok_or_else(|| bad("a string or a number"))?.into());
            }
        }
    }
    // Right after the subcommand's name: the first argument that is it.
    let at = args
        .iter()
        .skip(1)
        .position(|a| a.as_os_str() == OsStr::new(name))
        .map_or(args.len(), |i| i + 2);
    let mut out = args;
    out.splice(at..at, flags);
    Ok(out)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Cmd};
    use clap::Parser as _;
    use std::path::Path;

    /// `args` as the binary sees them, for tests.
    fn argv(a: &[&str]) -> Vec<OsString> {
        std::iter::once("pii-fle")
            .chain(a.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn file(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("fle.toml");
        std::fs::write(&p, text).expect("write");
        p
    }

    const REQUIRED: [&str; 6] = ["--table", "users", "--column", "email", "--key", "pii"];

    fn parse(a: &[&str]) -> Result<Cli, Box<dyn std::error::Error>> {
        Ok(Cli::try_parse_from(with_config(argv(a))?)?)
    }

    #[test]
    fn the_file_fills_what_the_command_line_leaves_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = file(
            dir.path(),
            "database_url = \"postgres://u@127.0.0.1/db\"\nbatch = 500\nin-flight = 2\n\
             search_path = [\"public\", \"app\"]\nquiet = true\nlatency_budget_ms = 250\n\
             seconds = 9.5\n",
        );
        let cfg = p.to_str().expect("utf-8");
        let mut a = vec!["backfill", "--config", cfg, "--batch", "100"];
        a.extend(REQUIRED);
        let Cmd::Backfill { common, .. } = parse(&a).expect("parses").cmd else {
            panic!("backfill")
        };
        assert_eq!(common.batch, 100, "the command line wins");
        assert_eq!(common.in_flight, 2);
        assert_eq!(common.search_path, ["public", "app"]);
        assert!(common.quiet);
        assert_eq!(common.latency_budget_ms, Some(250));
        assert_eq!(common.database_url, "postgres://u@127.0.0.1/db");
        // The same file for `workload` sets its --seconds too.
        let mut a = vec!["--config", cfg, "workload"];
        a.extend(REQUIRED);
        let Cmd::Workload { load, .. } = parse(&a).expect("parses").cmd else {
            panic!("workload")
        };
        assert!((load.seconds - 9.5).abs() < 1e-9);
    }

    #[test]
    fn bad_keys_and_values_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = vec!["verify", "--config"];
        let path = dir.path().join("fle.toml");
        let cfg = path.to_str().expect("utf-8").to_owned();
        a.push(&cfg);
        a.extend(REQUIRED);
        for (text, want) in [
            ("vault_adr = \"x\"", "unknown key \"vault_adr\""),
            ("batch = 0", "0 is not in 1..=10000"),
            ("batch = [1, 2]", "one value, not a list"),
            ("quiet = \"yes\"", "true or false"),
            ("mount = true", "a value, not true or false"),
            ("config = \"other.toml\"", "cannot name another"),
            ("batch = ", "fle.toml"),
        ] {
            file(
                dir.path(),
                &format!("database_url = \"postgres://u@h/db\"\n{text}\n"),
            );
            let e = parse(&a).expect_err(text).to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = parse(&["verify", "--config", "/nonexistent/fle.toml"])
            .expect_err("missing")
            .to_string();
        assert!(e.contains("/nonexistent/fle.toml"), "{e}");
    }

    #[test]
    fn without_a_file_the_arguments_are_untouched() {
        let a = argv(&["status", "--table", "t"]);
        assert_eq!(with_config(a.clone()).expect("ok"), a);
        let a = argv(&["--help"]);
        assert_eq!(with_config(a.clone()).expect("ok"), a);
    }
}
