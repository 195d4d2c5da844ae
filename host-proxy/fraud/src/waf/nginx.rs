//! The nginx target: a `geo` map file and a reload.
//!
//! The file maps blocks to `enforce` or `shadow`:
//!
//! ```nginx
//! geo $pii_fraud { default ""; include /etc/nginx/pii-fraud.map; }
//! map $pii_fraud $pii_fraud_blocked_by { enforce "pii-fraud"; default ""; }
//! server {
//!     if ($pii_fraud = enforce) { return 403; }
//!     # log $pii_fraud (shadow hits are logged, not blocked) and
//!     # $pii_fraud_blocked_by as the gateway log's `blocked_by`
//! }
//! ```
//!
//! docs/fraud.md has the whole configuration. The file is written to a
//! temporary name, fsynced and renamed, then the reload command runs
//! (`nginx -s reload` by default); a failed reload is an error.

use std::path::PathBuf;

use super::{Lists, WafError};

pub struct Nginx {
    pub map: PathBuf,
    /// Program and arguments run after the map changed.
    pub reload: Vec<String>,
    pub capacity: usize,
}

const HEADER: &str = "# Managed by waf-sync (pii-fraud); edits are overwritten.\n";

impl Nginx {
    fn err(&self, message: String) -> WafError {
        WafError::Target {
            target: format!("nginx {}", self.map.display()),
            message,
        }
    }

    pub fn current(&self) -> Result<Lists, WafError> {
        let text = match std::fs::read_to_string(&self.map) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lists::default()),
            Err(e) => return Err(self.err(e.to_string())),
        };
        // A map file someone else wrote is theirs: never overwritten.
        if !text.is_empty() && !text.starts_with(HEADER) {
            return Err(self.err(format!(
                "the file exists and was not written by waf-sync (its first line is not {:?}): pick another --nginx-map",
                HEADER.trim_end()
            )));
        }
        let mut lists = Lists::default();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut it = line.trim_end_matches(';').split_whitespace();
            match (it.next(), it.next()) {
                (Some(k), Some("enforce")) => {
                    lists.enforce.insert(k.to_owned());
                }
                (Some(k), Some("shadow")) => {
                    lists.shadow.insert(k.to_owned());
                }
                _ => return Err(self.err(format!("unexpected line {line:?}"))),
            }
        }
        Ok(lists)
    }

    pub fn apply(&self, want: &Lists) -> Result<(), WafError> {
        use std::io::Write;
        let mut body = String::from(HEADER);
        for k in &want.enforce {
            body.push_str(&format!("{k} enforce;\n"));
        }
        for k in want.shadow.iter().filter(|k| !want.enforce.contains(*k)) {
            body.push_str(&format!("{k} shadow;\n"));
        }
        let tmp = super::tmp_beside(&self.map);
        let mut f = std::fs::File::create(&tmp).map_err(|e| self.err(e.to_string()))?;
        f.write_all(body.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| self.err(e.to_string()))?;
        std::fs::rename(&tmp, &self.map).map_err(|e| self.err(e.to_string()))?;
        let Some((prog, args)) = self.reload.split_first() else {
            return Ok(());
        };
        let out = std::process::Command::new(prog)
            .args(args)
            .output()
            .map_err(|e| self.err(format!("{prog}: {e}")))?;
        if !out.status.success() {
            return Err(self.err(format!(
                "reload failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}
