//! Authorization, decided inside the enclave.
//!
//! The enclave knows tokens only by their domain-separated SHA-256
//! ([`token_hash`]); each hash maps to policies, and each policy to Vault-style
//! path rules with capabilities. The host proxy forwards the caller's token
//! untouched and has no way to add a token or a policy: both come from the
//! enclave's own configuration, which is part of the measured image.
//!
//! Why this size: 550 lines of code, the rest its unit tests; the ACL merge, the capability check and the token table are one decision and are reviewed together.

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

/// A token binding in configuration: the token's keyed hash, never the token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBinding {
    /// `hex(HMAC-SHA256(key = "pii-enclave/token-hmac/v2", token))`; see
    /// `pii-enclave hash-token` (which refuses tokens below 128 bits).
    #[serde(default)]
    pub token_hmac: String,
    /// The v1 form (plain SHA-256): refused with a message saying what to do.
    #[serde(default, skip_serializing)]
    pub sha256: Option<String>,
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

/// The key of [`token_hash`]: a domain label, so a table of hashes made for
/// any other system (or any other use of HMAC) is useless here. It is not
/// secret — the configuration is part of the public measured image — so the
/// entropy floor ([`MIN_TOKEN_BITS`]) is what keeps a token unguessable.
const TOKEN_HMAC_KEY: &[u8] = b"pii-enclave/token-hmac/v2";

/// The keyed hash under which a token is known.
pub fn token_hash(token: &str) -> [u8; 32] {
    static KEY: std::sync::OnceLock<aws_lc_rs::hmac::Key> = std::sync::OnceLock::new();
    let key =
        KEY.get_or_init(|| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, TOKEN_HMAC_KEY));
    let tag = aws_lc_rs::hmac::sign(key, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Configured tokens need at least this much entropy: an attacker with the
/// (public) configuration can test guesses offline at hash speed.
pub const MIN_TOKEN_BITS: f64 = 128.0;

/// A conservative estimate of a token's entropy in bits, from its length and
/// the character classes it uses (known prefixes such as `hvs.` count for
/// nothing, and few distinct characters cap it). It cannot see that a long
/// phrase is made of words: generate tokens with `pii-enclave new-token`.
pub fn token_entropy_bits(token: &str) -> f64 {
    let body = ["hvs.", "hvb.", "hvr.", "s.", "b.", "r.", "pii_"]
        .iter()
        .find_map(|p| token.strip_prefix(p))
        .unwrap_or(token);
    let chars: Vec<char> = body.chars().collect();
    let has = |f: fn(&char) -> bool| chars.iter().any(f);
    let pool = [
        (has(|c| c.is_ascii_digit()), 10.0),
        (has(|c| c.is_ascii_lowercase()), 26.0),
        (has(|c| c.is_ascii_uppercase()), 26.0),
        (has(|c| c.is_ascii_punctuation()), 32.0),
        (has(|c| !c.is_ascii() || c.is_ascii_whitespace()), 64.0),
    ]
    .iter()
    .filter(|(present, _)| *present)
    .map(|(_, n)| n)
    .sum::<f64>();
    if pool < 2.0 {
        return 0.0;
    }
    let mut distinct = chars.clone();
    distinct.sort_unstable();
    distinct.dedup();
    // A token drawn at random uses most of its alphabet; one that repeats a
    // few characters does not get credit for its length.
    let effective = chars.len().min(distinct.len() * 3) as f64;
    effective * pool.log2()
}

/// Why a token may not be configured.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "this token has about {bits:.0} bits of entropy (judged by its length and characters); \
     configured tokens need at least {MIN_TOKEN_BITS:.0} — for example 22 random base64url \
     characters. Make one with `pii-enclave new-token`."
)]
pub struct WeakToken {
    pub bits: f64,
}

/// Refuse a token below [`MIN_TOKEN_BITS`].
pub fn check_token_strength(token: &str) -> Result<(), WeakToken> {
    let bits = token_entropy_bits(token);
    if bits < MIN_TOKEN_BITS {
        Err(WeakToken { bits })
    } else {
        Ok(())
    }
}

/// A new token: `pii_` and 32 random bytes in base64url (256 bits).
pub fn new_token() -> Option<String> {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).ok()?;
    Some(format!(
        "pii_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    ))
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Identity {
    pub policy_names: Vec<String>,
    pub display_name: String,
    /// First 16 hex digits of the token hash: names the token in audit records.
    pub token_id: String,
    root: bool,
    acl: Acl,
}

/// Resolved authorization state.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: HashMap<[u8; 32], Arc<Identity>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("token binding {0}: token_hmac must be 64 hex characters")]
    BadHash(usize),
    #[error(
        "token binding {0}: `sha256` is the v1 hash, no longer accepted; hash the token again \
         with `pii-enclave hash-token` and put the result in `token_hmac`"
    )]
    OldHash(usize),
    #[error("token binding {index}: unknown policy {policy:?}")]
    UnknownPolicy { index: usize, policy: String },
    #[error("policy {0:?}: the name \"root\" is reserved")]
    ReservedName(String),
    #[error("policy {name:?}: {source}")]
    Rule { name: String, source: RuleError },
}

impl Auth {
    pub fn from_config(cfg: &AuthConfig) -> Result<Auth, AuthConfigError> {
        if cfg.policies.contains_key("root") {
            return Err(AuthConfigError::ReservedName("root".into()));
        }
        for (name, p) in &cfg.policies {
            Acl::new([p]).map_err(|source| AuthConfigError::Rule {
                name: name.clone(),
                source,
            })?;
        }
        let mut tokens = HashMap::new();
        for (i, t) in cfg.tokens.iter().enumerate() {
            if t.sha256.is_some() {
                return Err(AuthConfigError::OldHash(i));
            }
            let raw = hex::decode(&t.token_hmac).map_err(|_| AuthConfigError::BadHash(i))?;
            let hash: [u8; 32] = raw.try_into().map_err(|_| AuthConfigError::BadHash(i))?;
            let mut policies: Vec<&Policy> = vec![];
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
                    policies.push(pol);
                }
            }
            let acl = Acl::new(policies).map_err(|source| AuthConfigError::Rule {
                name: t.policies.join(","),
                source,
            })?;
            tokens.insert(
                hash,
                Arc::new(Identity {
                    policy_names: t.policies.clone(),
                    display_name: t.display_name.clone().unwrap_or_else(|| "token".into()),
                    token_id: hex::encode(&hash[..8]),
                    root,
                    acl,
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
                acl: Acl::default(),
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

/// Capabilities as a bitmap. `deny` absorbs everything else, as in Vault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps(u8);

impl Caps {
    const DENY: u8 = 1 << 6;

    fn bit(cap: Capability) -> u8 {
        match cap {
            Capability::Create => 1,
            Capability::Read => 1 << 1,
            Capability::Update => 1 << 2,
            Capability::Delete => 1 << 3,
            Capability::List => 1 << 4,
            Capability::Sudo => 1 << 5,
            Capability::Deny => Self::DENY,
        }
    }

    fn of(caps: &[Capability]) -> Caps {
        let bits = caps.iter().fold(0, |b, c| b | Self::bit(*c));
        Caps(if bits & Self::DENY != 0 {
            Self::DENY
        } else {
            bits
        })
    }

    /// Two rules for the same path string, from two policies: capabilities
    /// add up unless either denies.
    fn merge(self, other: Caps) -> Caps {
        if (self.0 | other.0) & Self::DENY != 0 {
            Caps(Self::DENY)
        } else {
            Caps(self.0 | other.0)
        }
    }

    pub fn is_deny(self) -> bool {
        self.0 & Self::DENY != 0
    }

    /// Whether `cap` is granted (never when denied).
    pub fn has(self, cap: Capability) -> bool {
        !self.is_deny() && self.0 & Self::bit(cap) != 0
    }

    /// Names as `sys/capabilities-self` lists them (sorted); `deny` when
    /// nothing is granted.
    pub fn names(self) -> Vec<&'static str> {
        if self.is_deny() {
            return vec!["deny"];
        }
        let order = [
            (Capability::Create, "create"),
            (Capability::Delete, "delete"),
            (Capability::List, "list"),
            (Capability::Read, "read"),
            (Capability::Sudo, "sudo"),
            (Capability::Update, "update"),
        ];
        let v: Vec<&str> = order
            .iter()
            .filter(|(c, _)| self.has(*c))
            .map(|(_, n)| *n)
            .collect();
        if v.is_empty() {
            vec!["deny"]
        } else {
            v
        }
    }
}

/// A rule with `+` segments (and possibly a trailing `*`).
#[derive(Debug, Clone)]
struct SegmentRule {
    /// The path without its trailing `*`, split at `/`.
    parts: Vec<String>,
    /// The path without its trailing `*`.
    stem: String,
    is_prefix: bool,
    first_wildcard: usize,
    wildcards: usize,
    caps: Caps,
}

/// How specific a matching non-exact rule is; the greatest wins. This is
/// Vault's order: a later first wildcard or glob, then no trailing glob, then
/// fewer `+` segments, then a longer path, then the greater string.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Priority<'a> {
    first_wildcard: usize,
    exact_tail: bool,
    fewer_wildcards: std::cmp::Reverse<usize>,
    len: usize,
    stem: &'a str,
}

/// The merged rules of all of a token's policies, as Vault builds its ACL:
/// rules for the same path string merge (`deny` absorbs), then exactly one
/// rule decides a request — the exact rule for the path if there is one,
/// otherwise the most specific glob or `+` rule.
#[derive(Debug, Default, Clone)]
pub struct Acl {
    exact: HashMap<String, Caps>,
    /// Prefix rules (`…*` without `+`), longest first.
    prefix: Vec<(String, Caps)>,
    segment: Vec<SegmentRule>,
}

/// A policy rule Vault would refuse, or one that cannot mean what it says.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("path {0:?}: invalid use of wildcards ('+*' is forbidden)")]
    PlusGlob(String),
    #[error(
        "path {0:?}: '*' is a glob only at the end of a path; use '+' for one segment \
         (in the middle, Vault would match a literal '*')"
    )]
    InnerGlob(String),
    #[error("path {0:?}: a rule needs at least one capability")]
    NoCapabilities(String),
}

impl Acl {
    pub fn new<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Result<Acl, RuleError> {
        let mut exact: HashMap<String, Caps> = HashMap::new();
        let mut prefix: HashMap<String, Caps> = HashMap::new();
        let mut segment: HashMap<String, Caps> = HashMap::new();
        for p in policies {
            for r in &p.rules {
                let path = r.path.strip_prefix('/').unwrap_or(&r.path);
                if path.contains("+*") {
                    return Err(RuleError::PlusGlob(r.path.clone()));
                }
                if path.trim_end_matches('*').contains('*') {
                    return Err(RuleError::InnerGlob(r.path.clone()));
                }
                if r.capabilities.is_empty() {
                    return Err(RuleError::NoCapabilities(r.path.clone()));
                }
                let caps = Caps::of(&r.capabilities);
                let has_segments = path == "+" || path.contains("/+") || path.starts_with("+/");
                let (map, key) = match path.strip_suffix('*') {
                    _ if has_segments => (&mut segment, path),
                    Some(stem) => (&mut prefix, stem),
                    None => (&mut exact, path),
                };
                let e = map.entry(key.to_owned()).or_insert(caps);
                *e = e.merge(caps);
            }
        }
        let mut prefix: Vec<(String, Caps)> = prefix.into_iter().collect();
        prefix.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let segment = segment
            .into_iter()
            .map(|(path, caps)| {
                let (stem, is_prefix) = match path.strip_suffix('*') {
                    Some(s) => (s.to_owned(), true),
                    None => (path.clone(), false),
                };
                let parts: Vec<String> = stem.split('/').map(str::to_owned).collect();
                SegmentRule {
                    first_wildcard: path.find('+').unwrap_or(path.len()),
                    wildcards: parts.iter().filter(|p| *p == "+").count(),
                    parts,
                    stem,
                    is_prefix,
                    caps,
                }
            })
            .collect();
        Ok(Acl {
            exact,
            prefix,
            segment,
        })
    }

    /// The capabilities of the one rule that decides `path`, or `None` when
    /// no rule matches. `list` follows Vault's LIST lookups: the request path
    /// ends in `/`, and rules for the path without it count too.
    pub fn lookup(&self, path: &str, list: bool) -> Option<Caps> {
        let path = path.trim_start_matches('/');
        if let Some(c) = self.exact.get(path) {
            return Some(*c);
        }
        if list {
            if let Some(c) = self.exact.get(path.trim_end_matches('/')) {
                return Some(*c);
            }
            if let Some(bare) = path.strip_suffix('/') {
                if let Some(c) = self.non_exact(bare) {
                    // Stricter than Vault: a deny for the slashed form (a
                    // `transit/keys/*` deny) is not outranked by a broader
                    // grant that matches the bare form (`transit/*`).
                    if self.non_exact(path).is_some_and(Caps::is_deny) {
                        return Some(Caps(Caps::DENY));
                    }
                    return Some(c);
                }
            }
        }
        self.non_exact(path)
    }

    fn non_exact(&self, path: &str) -> Option<Caps> {
        let mut best: Option<(Priority<'_>, Caps)> = self
            .prefix
            .iter()
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|(p, c)| {
                (
                    Priority {
                        first_wildcard: p.len(),
                        exact_tail: false,
                        fewer_wildcards: std::cmp::Reverse(0),
                        len: p.len(),
                        stem: p,
                    },
                    *c,
                )
            });
        if self.segment.is_empty() {
            return best.map(|(_, c)| c);
        }
        let parts: Vec<&str> = path.split('/').collect();
        for r in &self.segment {
            if parts.len() < r.parts.len() || (!r.is_prefix && parts.len() != r.parts.len()) {
                continue;
            }
            let last = r.parts.len() - 1;
            let matches = r.parts.iter().enumerate().all(|(i, a)| {
                a == "+" || a == parts[i] || (r.is_prefix && i == last && parts[i].starts_with(a))
            });
            if !matches {
                continue;
            }
            let pri = Priority {
                first_wildcard: r.first_wildcard,
                exact_tail: !r.is_prefix,
                fewer_wildcards: std::cmp::Reverse(r.wildcards),
                len: r.stem.len(),
                stem: &r.stem,
            };
            if best.as_ref().is_none_or(|(b, _)| pri > *b) {
                best = Some((pri, r.caps));
            }
        }
        best.map(|(_, c)| c)
    }
}

impl Identity {
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// Whether this caller may exercise `cap` on `path` (path below `/v1/`,
    /// ending in `/` for LIST), with Vault's ACL semantics (see [`Acl`]).
    pub fn allows(&self, path: &str, cap: Capability) -> bool {
        self.root
            || self
                .acl
                .lookup(path, cap == Capability::List)
                .is_some_and(|c| c.has(cap))
    }

    /// What `sys/capabilities-self` reports for `path`.
    pub fn capabilities(&self, path: &str) -> Vec<&'static str> {
        if self.root {
            return vec!["root"];
        }
        self.acl
            .lookup(path, true)
            .map_or_else(|| vec!["deny"], Caps::names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let cfg: AuthConfig = toml::from_str(&format!(
            r#"
            [[tokens]]
            token_hmac = "{}"
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

    /// An identity holding `policies`, each a list of (path, capabilities).
    fn with(policies: &[&[(&str, &[Capability])]]) -> Identity {
        let ps: Vec<Policy> = policies
            .iter()
            .map(|rules| Policy {
                rules: rules
                    .iter()
                    .map(|(p, c)| Rule {
                        path: (*p).into(),
                        capabilities: c.to_vec(),
                    })
                    .collect(),
            })
            .collect();
        Identity {
            policy_names: vec![],
            display_name: String::new(),
            token_id: String::new(),
            root: false,
            acl: Acl::new(&ps).unwrap(),
        }
    }

    use Capability::{Create, Deny, List, Read, Update};

    #[test]
    fn exact_rule_decides_even_against_other_policies() {
        let id = with(&[
            &[("transit/*", &[Update])],
            &[("transit/encrypt/pii", &[Read])],
        ]);
        assert!(!id.allows("transit/encrypt/pii", Update));
        assert!(id.allows("transit/encrypt/pii", Read));
        assert!(id.allows("transit/encrypt/other", Update));
    }

    #[test]
    fn same_path_merges_and_deny_absorbs() {
        let id = with(&[
            &[("transit/keys/*", &[Read])],
            &[("transit/keys/*", &[List])],
        ]);
        assert!(id.allows("transit/keys/a", Read) && id.allows("transit/keys/a", List));
        let id = with(&[
            &[("transit/keys/*", &[Read])],
            &[("transit/keys/*", &[Deny])],
        ]);
        assert!(!id.allows("transit/keys/a", Read));
        assert_eq!(id.capabilities("transit/keys/a"), vec!["deny"]);
    }

    #[test]
    fn later_first_wildcard_wins() {
        // The issue's example: `+` at offset 8 loses to a glob at offset 16.
        let id = with(&[&[("transit/+/pii", &[Update]), ("transit/decrypt/*", &[Deny])]]);
        assert!(!id.allows("transit/decrypt/pii", Update));
        assert!(id.allows("transit/encrypt/pii", Update));
        // A prefix glob at 13 beats a `+` at 8.
        let id = with(&[&[("transit/keys/*", &[Read]), ("transit/+/pii", &[Update])]]);
        assert!(!id.allows("transit/keys/pii", Update));
        assert!(id.allows("transit/keys/pii", Read));
    }

    #[test]
    fn no_trailing_glob_beats_a_trailing_glob() {
        let id = with(&[&[("transit/+/pii", &[Update]), ("transit/+/pi*", &[Read])]]);
        assert!(id.allows("transit/encrypt/pii", Update));
        assert!(!id.allows("transit/encrypt/pii", Read));
        assert!(id.allows("transit/encrypt/pix", Read));
    }

    #[test]
    fn fewer_plus_segments_win() {
        let id = with(&[&[
            ("transit/+/+/rotate", &[Update]),
            ("transit/+/pii/rotate", &[Read]),
        ]]);
        assert!(!id.allows("transit/keys/pii/rotate", Update));
        assert!(id.allows("transit/keys/other/rotate", Update));
    }

    #[test]
    fn longer_wins_then_the_greater_string() {
        let id = with(&[&[
            ("transit/+/pii/ro*", &[Update]),
            ("transit/+/pii/r*", &[Read]),
        ]]);
        assert!(id.allows("transit/keys/pii/rotate", Update));
        assert!(!id.allows("transit/keys/pii/rotate", Read));
        assert!(id.allows("transit/keys/pii/rx", Read));
        // Same length, same shape: the greater string wins.
        let id = with(&[&[("transit/+/pib", &[Update]), ("transit/pia/+", &[Read])]]);
        assert!(id.allows("transit/pia/pib", Read));
    }

    #[test]
    fn list_checks_the_path_with_and_without_its_slash() {
        let id = with(&[&[("transit/keys", &[List])]]);
        assert!(id.allows("transit/keys/", List));
        let id = with(&[&[("transit/keys/*", &[List])]]);
        assert!(id.allows("transit/keys/", List));
        assert!(!id.allows("transit/keys", List));
        // Without its slash first: `transit/key*` decides over `transit/keys/*`.
        let id = with(&[&[("transit/key*", &[Read]), ("transit/keys/*", &[List])]]);
        assert!(!id.allows("transit/keys/", List));
    }

    #[test]
    fn a_deny_on_the_listed_folder_is_not_outranked_by_a_broader_grant() {
        let id = with(&[&[("transit/*", &[List, Read]), ("transit/keys/*", &[Deny])]]);
        assert!(!id.allows("transit/keys/", List));
        assert!(id.allows("transit/other/", List));
    }

    #[test]
    fn create_is_not_update() {
        let id = with(&[&[("transit/*", &[Create, Read, List])]]);
        assert!(id.allows("transit/encrypt/new", Create));
        assert!(!id.allows("transit/decrypt/pii", Update));
        assert_eq!(
            id.capabilities("transit/decrypt/pii"),
            vec!["create", "list", "read"]
        );
        assert_eq!(id.capabilities("nothing/here"), vec!["deny"]);
    }

    #[test]
    fn malformed_rules_are_refused() {
        let err = |path: &str, caps: &[Capability]| {
            Acl::new(&[Policy {
                rules: vec![Rule {
                    path: path.into(),
                    capabilities: caps.to_vec(),
                }],
            }])
            .unwrap_err()
        };
        assert!(matches!(err("transit/+*", &[Read]), RuleError::PlusGlob(_)));
        assert!(matches!(
            err("transit/*/pii", &[Read]),
            RuleError::InnerGlob(_)
        ));
        assert!(matches!(
            err("transit/keys", &[]),
            RuleError::NoCapabilities(_)
        ));
        let bad: AuthConfig = toml::from_str(
            "[policies.p]\nrules = [{ path = \"a/+*\", capabilities = [\"read\"] }]\n",
        )
        .unwrap();
        let msg = Auth::from_config(&bad).unwrap_err().to_string();
        assert!(
            msg.contains("policy \"p\"") && msg.contains("'+*' is forbidden"),
            "{msg}"
        );
    }

    #[test]
    fn config_errors() {
        let bad: AuthConfig = toml::from_str(
            r#"
            [[tokens]]
            token_hmac = "abcd"
            policies = []
            "#,
        )
        .unwrap();
        assert!(matches!(
            Auth::from_config(&bad),
            Err(AuthConfigError::BadHash(0))
        ));
        let unknown: AuthConfig = toml::from_str(&format!(
            "[[tokens]]\ntoken_hmac = \"{}\"\npolicies = [\"nope\"]\n",
            "00".repeat(32)
        ))
        .unwrap();
        assert!(matches!(
            Auth::from_config(&unknown),
            Err(AuthConfigError::UnknownPolicy { .. })
        ));
    }

    #[test]
    fn old_hashes_and_weak_tokens_are_refused() {
        let old: AuthConfig = toml::from_str(&format!(
            "[[tokens]]\nsha256 = \"{}\"\npolicies = []\n",
            "00".repeat(32)
        ))
        .unwrap();
        let e = Auth::from_config(&old).unwrap_err();
        assert!(matches!(e, AuthConfigError::OldHash(0)));
        assert!(e.to_string().contains("pii-enclave hash-token"), "{e}");
        for weak in [
            "dev-root-token",
            "s.pii-svc",
            "hunter2hunter2hunter2",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "hvs.0123456789",
            "",
        ] {
            let e = check_token_strength(weak).unwrap_err();
            assert!(
                e.to_string().contains("pii-enclave new-token"),
                "{weak}: {e}"
            );
        }
        let t = new_token().unwrap();
        assert!(
            check_token_strength(&t).is_ok(),
            "{t}: {}",
            token_entropy_bits(&t)
        );
        assert!(check_token_strength("Xk9#mQ2$vL7!pR4&wN8*zT3@bJ6^hF1%").is_ok());
        // The hash is keyed: not SHA-256 of the token, nor of the v1 input.
        let plain = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
        assert_ne!(token_hash(&t).as_slice(), plain.as_ref());
        assert_eq!(token_hash(&t), token_hash(&t));
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
