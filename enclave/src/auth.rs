//! Authorization, decided inside the enclave.
//!
//! The enclave knows tokens only by their domain-separated SHA-256
//! ([`token_hash`]); each hash maps to policies, and each policy to Vault-style
//! path rules with capabilities. The host proxy forwards the caller's token
//! untouched and has no way to add a token or a policy: both come from the
//! enclave's own configuration, which is part of the measured image.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

/// A Vault capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Create,
    Read,
    Update,
    Delete,
    List,
    Sudo,
    Deny,
}

/// One path rule: `path` is exact, ends in `*` (prefix), or contains `+`
/// segments (any single segment), as in Vault policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub path: String,
    pub capabilities: Vec<Capability>,
}

/// A named policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// A token binding in configuration: the token's hash, never the token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBinding {
    /// `hex(SHA-256("pii-enclave/token/v1" ‖ 0x00 ‖ token))`; see `pii-enclave hash-token`.
    pub sha256: String,
    pub policies: Vec<String>,
    /// Shown by `auth/token/lookup-self`.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// Auth configuration as written in the enclave config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub tokens: Vec<TokenBinding>,
    #[serde(default)]
    pub policies: HashMap<String, Policy>,
}

/// Domain-separated hash under which a token is known.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &[b"pii-enclave/token/v1\0".as_slice(), token.as_bytes()].concat(),
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Identity {
    pub policy_names: Vec<String>,
    pub display_name: String,
    /// First 16 hex digits of the token hash: names the token in audit records.
    pub token_id: String,
    root: bool,
    policies: Vec<Arc<Policy>>,
}

/// Resolved authorization state.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: HashMap<[u8; 32], Arc<Identity>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("token binding {0}: sha256 must be 64 hex characters")]
    BadHash(usize),
    #[error("token binding {index}: unknown policy {policy:?}")]
    UnknownPolicy { index: usize, policy: String },
    #[error("policy {0:?}: the name \"root\" is reserved")]
    ReservedName(String),
}

impl Auth {
    pub fn from_config(cfg: &AuthConfig) -> Result<Auth, AuthConfigError> {
        if cfg.policies.contains_key("root") {
            return Err(AuthConfigError::ReservedName("root".into()));
        }
        let mut tokens = HashMap::new();
        for (i, t) in cfg.tokens.iter().enumerate() {
            let raw = hex::decode(&t.sha256).map_err(|_| AuthConfigError::BadHash(i))?;
            let hash: [u8; 32] = raw.try_into().map_err(|_| AuthConfigError::BadHash(i))?;
            let mut policies = vec![];
            let mut root = false;
            for p in &t.policies {
                if p == "root" {
                    root = true;
                } else {
                    let pol =
                        cfg.policies
                            .get(p)
                            .ok_or_else(|| AuthConfigError::UnknownPolicy {
                                index: i,
                                policy: p.clone(),
                            })?;
                    policies.push(Arc::new(pol.clone()));
                }
            }
            tokens.insert(
                hash,
                Arc::new(Identity {
                    policy_names: t.policies.clone(),
                    display_name: t.display_name.clone().unwrap_or_else(|| "token".into()),
                    token_id: hex::encode(&hash[..8]),
                    root,
                    policies,
                }),
            );
        }
        Ok(Auth { tokens })
    }

    /// Add a token by its plaintext (dev mode's root token). Development
    /// builds only (feature `dangerous-dev`).
    #[cfg(feature = "dangerous-dev")]
    pub fn add_root_token(&mut self, token: &str) {
        let hash = token_hash(token);
        self.tokens.insert(
            hash,
            Arc::new(Identity {
                policy_names: vec!["root".into()],
                display_name: "root".into(),
                token_id: hex::encode(&hash[..8]),
                root: true,
                policies: vec![],
            }),
        );
    }

    pub fn authenticate(&self, token: Option<&str>) -> Option<Arc<Identity>> {
        let t = token?;
        if t.is_empty() {
            return None;
        }
        self.tokens.get(&token_hash(t)).cloned()
    }
}

fn rule_matches(rule: &str, path: &str) -> Option<usize> {
    if let Some(prefix) = rule.strip_suffix('*') {
        if !prefix.contains('+') {
            return path.starts_with(prefix).then_some(prefix.len());
        }
        // `+` segments plus a trailing glob.
        let rsegs: Vec<&str> = prefix.split('/').collect();
        let psegs: Vec<&str> = path.split('/').collect();
        if psegs.len() < rsegs.len() {
            return None;
        }
        for (i, r) in rsegs.iter().enumerate() {
            let last = i == rsegs.len() - 1;
            let ok = *r == "+" || *r == psegs[i] || (last && psegs[i].starts_with(r));
            if !ok {
                return None;
            }
        }
        return Some(prefix.len());
    }
    let rsegs: Vec<&str> = rule.split('/').collect();
    let psegs: Vec<&str> = path.split('/').collect();
    if rsegs.len() != psegs.len() {
        return None;
    }
    rsegs
        .iter()
        .zip(&psegs)
        .all(|(r, p)| *r == "+" || r == p)
        // Exact rules outrank every glob.
        .then_some(usize::MAX / 2 + rule.len())
}

impl Identity {
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// Whether this caller may exercise `cap` on `path` (path below `/v1/`).
    /// Within a policy the most specific matching rule applies; across
    /// policies capabilities add up; `deny` in any applicable rule wins.
    pub fn allows(&self, path: &str, cap: Capability) -> bool {
        if self.root {
            return true;
        }
        let mut allowed = false;
        for p in &self.policies {
            let best = p
                .rules
                .iter()
                .filter_map(|r| rule_matches(&r.path, path).map(|score| (score, r)))
                .max_by_key(|(score, _)| *score);
            if let Some((_, r)) = best {
                if r.capabilities.contains(&Capability::Deny) {
                    return false;
                }
                allowed |= r.capabilities.contains(&cap);
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let cfg: AuthConfig = toml::from_str(&format!(
            r#"
            [[tokens]]
            sha256 = "{}"
            policies = ["pii-svc"]

            [policies.pii-svc]
            rules = [
              {{ path = "transit/encrypt/pii", capabilities = ["update"] }},
              {{ path = "transit/decrypt/*", capabilities = ["update"] }},
              {{ path = "transit/decrypt/secret", capabilities = ["deny"] }},
              {{ path = "transit/keys/+/rotate", capabilities = ["update"] }},
            ]
            "#,
            hex::encode(token_hash("s.pii"))
        ))
        .unwrap();
        Auth::from_config(&cfg).unwrap()
    }

    #[test]
    fn policy_rules() {
        let a = auth();
        assert!(a.authenticate(Some("wrong")).is_none());
        assert!(a.authenticate(None).is_none());
        let id = a.authenticate(Some("s.pii")).unwrap();
        assert!(id.allows("transit/encrypt/pii", Capability::Update));
        assert!(!id.allows("transit/encrypt/pii", Capability::Create));
        assert!(!id.allows("transit/encrypt/other", Capability::Update));
        assert!(id.allows("transit/decrypt/anything", Capability::Update));
        assert!(!id.allows("transit/decrypt/secret", Capability::Update));
        assert!(id.allows("transit/keys/pii/rotate", Capability::Update));
        assert!(!id.allows("transit/keys/pii/config", Capability::Update));
        assert!(!id.allows("transit/keys/pii", Capability::Delete));
    }

    #[test]
    fn config_errors() {
        let bad: AuthConfig = toml::from_str(
            r#"
            [[tokens]]
            sha256 = "abcd"
            policies = []
            "#,
        )
        .unwrap();
        assert!(matches!(
            Auth::from_config(&bad),
            Err(AuthConfigError::BadHash(0))
        ));
        let unknown: AuthConfig = toml::from_str(&format!(
            "[[tokens]]\nsha256 = \"{}\"\npolicies = [\"nope\"]\n",
            "00".repeat(32)
        ))
        .unwrap();
        assert!(matches!(
            Auth::from_config(&unknown),
            Err(AuthConfigError::UnknownPolicy { .. })
        ));
    }

    #[cfg(feature = "dangerous-dev")]
    #[test]
    fn root_token() {
        let mut a = Auth::default();
        a.add_root_token("dev-root-token");
        let id = a.authenticate(Some("dev-root-token")).unwrap();
        assert!(id.is_root() && id.allows("anything/at/all", Capability::Sudo));
    }
}
