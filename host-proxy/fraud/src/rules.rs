//! Rules, scores and decisions.
//!
//! A rule is a conjunction of bounds on [`Features`] with a weight in
//! log-odds. The score is logistic: `σ(bias + Σ weights of the rules that
//! fired)`, a naive-Bayes combination where each rule's weight is the log
//! likelihood ratio of its evidence. We chose it over a tree of thresholds
//! because weak signals add up (a scripted user agent alone is not enough, a
//! scripted user agent that also probes 404s is), negative evidence (a shared
//! NAT full of distinct browsers) subtracts, and every decision explains
//! itself as the list of rules that fired.
//!
//! Each rule has a mode. `enforce` rules make the enforced score; `shadow`
//! rules are added on top for a second, shadow score. A decision is
//! enforced when the enforced score alone crosses a threshold, and shadow
//! when only the shadow score does (reported, never applied): that is how a
//! new rule is watched before it blocks anyone.

use serde::{Deserialize, Serialize};

use crate::state::Features;
use crate::ua::UaClass;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    Ip,
    Subnet,
    Subject,
    /// One subject token from one address: `key` is "<address> <token>".
    IpSubject,
}

impl KeyType {
    pub fn label(self) -> &'static str {
        match self {
            KeyType::Ip => "ip",
            KeyType::Subnet => "subnet",
            KeyType::Subject => "subject",
            KeyType::IpSubject => "ip_subject",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Off,
    #[default]
    Shadow,
    Enforce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    None,
    Challenge,
    Block,
}

/// Ordering of (action, mode): an enforced action outranks the same action in shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Severity(u8);

impl Severity {
    pub fn of(action: Action, mode: Mode) -> Self {
        Severity(action as u8 * 2 + u8::from(mode == Mode::Enforce))
    }
}

/// Bounds on features; a rule fires when every bound it sets holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    pub requests_min: Option<u32>,
    pub short_requests_min: Option<u32>,
    pub rate_min: Option<f64>,
    pub burst_min: Option<u32>,
    pub ratio_4xx_min: Option<f64>,
    pub ratio_404_min: Option<f64>,
    pub login_failures_min: Option<u32>,
    pub login_failure_ratio_min: Option<f64>,
    pub login_failure_ratio_max: Option<f64>,
    pub distinct_paths_min: Option<f64>,
    pub path_entropy_min: Option<f64>,
    pub distinct_subjects_min: Option<f64>,
    pub distinct_ips_min: Option<f64>,
    pub distinct_uas_min: Option<f64>,
    pub gaps_min: Option<u32>,
    pub gap_cv_max: Option<f64>,
    pub automated_ua_ratio_min: Option<f64>,
    pub automated_ua_ratio_max: Option<f64>,
    /// The dominant user-agent class is one of these.
    pub ua_in: Option<Vec<UaClassName>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UaClassName {
    Browser,
    Crawler,
    Scanner,
    Script,
    Empty,
    FakeCrawler,
}

impl UaClassName {
    fn matches(self, c: UaClass) -> bool {
        matches!(
            (self, c),
            (UaClassName::Browser, UaClass::Browser)
                | (UaClassName::Crawler, UaClass::Crawler)
                | (UaClassName::Scanner, UaClass::Scanner)
                | (UaClassName::Script, UaClass::Script)
                | (UaClassName::Empty, UaClass::Empty)
                | (UaClassName::FakeCrawler, UaClass::FakeCrawler)
        )
    }
}

impl When {
    pub fn holds(&self, f: &Features) -> bool {
        fn min<T: PartialOrd>(bound: Option<T>, v: T) -> bool {
            bound.is_none_or(|b| v >= b)
        }
        fn max<T: PartialOrd>(bound: Option<T>, v: T) -> bool {
            bound.is_none_or(|b| v <= b)
        }
        min(self.requests_min, f.requests)
            && min(self.short_requests_min, f.short_requests)
            && min(self.rate_min, f.rate)
            && min(self.burst_min, f.burst)
            && min(self.ratio_4xx_min, f.ratio_4xx)
            && min(self.ratio_404_min, f.ratio_404)
            && min(self.login_failures_min, f.login_failures)
            && min(self.login_failure_ratio_min, f.login_failure_ratio)
            && max(self.login_failure_ratio_max, f.login_failure_ratio)
            && min(self.distinct_paths_min, f.distinct_paths)
            && min(self.path_entropy_min, f.path_entropy)
            && min(self.distinct_subjects_min, f.distinct_subjects)
            && min(self.distinct_ips_min, f.distinct_ips)
            && min(self.distinct_uas_min, f.distinct_uas)
            && min(self.gaps_min, f.gaps)
            && (self.gap_cv_max.is_none() || (f.gaps >= 2 && max(self.gap_cv_max, f.gap_cv)))
            && min(self.automated_ua_ratio_min, f.automated_ua_ratio)
            && max(self.automated_ua_ratio_max, f.automated_ua_ratio)
            && self
                .ua_in
                .as_ref()
                .is_none_or(|set| f.ua.is_some_and(|c| set.iter().any(|n| n.matches(c))))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    /// Log-odds added when the rule fires (negative for evidence of innocence).
    pub weight: f64,
    /// Key types the rule looks at; all when empty.
    #[serde(default)]
    pub applies_to: Vec<KeyType>,
    pub when: When,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scoring {
    /// Prior log-odds of a key being abusive.
    pub bias: f64,
    /// Scores at or above these are block / challenge.
    pub block: f64,
    pub challenge: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    pub scoring: Scoring,
    #[serde(rename = "rule", default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rules file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("rule {0:?} appears twice")]
    Duplicate(String),
    #[error("rule names are 1-64 characters of [a-z0-9_]: {0:?}")]
    BadName(String),
    #[error("thresholds must satisfy 0 < challenge <= block < 1 (got challenge {challenge}, block {block})")]
    Thresholds { challenge: f64, block: f64 },
    #[error("rule {0:?}: weight must be a finite number")]
    Weight(String),
}

/// The rules shipped with the crate (data/rules.toml).
pub const DEFAULT_RULES: &str = include_str!("../data/rules.toml");

/// A decision about one key at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub score: f64,
    pub action: Action,
    pub mode: Mode,
    /// Rules that fired, in file order (with their modes).
    pub reasons: Vec<(usize, Mode)>,
}

impl RuleSet {
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let set: RuleSet = toml::from_str(text)?;
        let mut seen = std::collections::HashSet::new();
        for r in &set.rules {
            let ok = !r.name.is_empty()
                && r.name.len() <= 64
                && r.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(RuleError::BadName(r.name.clone()));
            }
            if !seen.insert(r.name.as_str()) {
                return Err(RuleError::Duplicate(r.name.clone()));
            }
            if !r.weight.is_finite() {
                return Err(RuleError::Weight(r.name.clone()));
            }
        }
        let s = &set.scoring;
        if !(s.challenge > 0.0 && s.challenge <= s.block && s.block < 1.0 && s.bias.is_finite()) {
            return Err(RuleError::Thresholds {
                challenge: s.challenge,
                block: s.block,
            });
        }
        Ok(set)
    }

    pub fn default_rules() -> Self {
        // The shipped file is checked by a test; an edit that breaks it fails CI.
        Self::parse(DEFAULT_RULES).unwrap_or(RuleSet {
            scoring: Scoring {
                bias: 0.0,
                block: 0.99,
                challenge: 0.99,
            },
            rules: Vec::new(),
        })
    }

    /// Sets every rule's mode (the drill and `--mode` use this).
    pub fn with_mode(mut self, mode: Mode) -> Self {
        for r in &mut self.rules {
            r.mode = mode;
        }
        self
    }

    pub fn evaluate(&self, key_type: KeyType, f: &Features) -> Verdict {
        let mut enforced = self.scoring.bias;
        let mut shadow = self.scoring.bias;
        let mut reasons = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if r.mode == Mode::Off || !(r.applies_to.is_empty() || r.applies_to.contains(&key_type))
            {
                continue;
            }
            if r.when.holds(f) {
                shadow += r.weight;
                if r.mode == Mode::Enforce {
                    enforced += r.weight;
                }
                reasons.push((i, r.mode));
            }
        }
        let action = |score: f64| {
            if score >= self.scoring.block {
                Action::Block
            } else if score >= self.scoring.challenge {
                Action::Challenge
            } else {
                Action::None
            }
        };
        let (enforced, shadow) = (sigmoid(enforced), sigmoid(shadow));
        let (score, action, mode) = match (action(enforced), action(shadow)) {
            (a, _) if a != Action::None => (enforced, a, Mode::Enforce),
            (_, a) if a != Action::None => (shadow, a, Mode::Shadow),
            _ => (shadow, Action::None, Mode::Shadow),
        };
        Verdict {
            score,
            action,
            mode,
            reasons,
        }
    }

    pub fn rule_name(&self, i: usize) -> &str {
        self.rules.get(i).map(|r| r.name.as_str()).unwrap_or("?")
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_rules_parse() {
        let set = RuleSet::parse(DEFAULT_RULES).expect("data/rules.toml parses");
        assert!(set.rules.len() >= 8);
    }

    #[test]
    fn bad_rule_files_are_refused_by_name() {
        let base = "[scoring]\nbias = -4.0\nblock = 0.9\nchallenge = 0.6\n";
        let rule = |name: &str| {
            format!("[[rule]]\nname = \"{name}\"\nweight = 1.0\nwhen = {{ rate_min = 1.0 }}\n")
        };
        assert!(matches!(
            RuleSet::parse(&format!("{base}{}{}", rule("a"), rule("a"))),
            Err(RuleError::Duplicate(_))
        ));
        assert!(matches!(
            RuleSet::parse(&format!("{base}{}", rule("Bad Name"))),
            Err(RuleError::BadName(_))
        ));
        let typo = format!(
            "{base}[[rule]]\nname = \"a\"\nweight = 1.0\nwhen = {{ rate_minimum = 1.0 }}\n"
        );
        assert!(matches!(RuleSet::parse(&typo), Err(RuleError::Parse(_))));
        let inverted = "[scoring]\nbias = -4.0\nblock = 0.5\nchallenge = 0.6\n";
        assert!(matches!(
            RuleSet::parse(inverted),
            Err(RuleError::Thresholds { .. })
        ));
    }

    fn set(mode_a: Mode, mode_b: Mode) -> RuleSet {
        RuleSet {
            scoring: Scoring {
                bias: -4.0,
                block: 0.9,
                challenge: 0.6,
            },
            rules: vec![
                Rule {
                    name: "fast".into(),
                    mode: mode_a,
                    weight: 7.0,
                    applies_to: vec![],
                    when: When {
                        rate_min: Some(5.0),
                        ..When::default()
                    },
                },
                Rule {
                    name: "nat".into(),
                    mode: mode_b,
                    weight: -5.0,
                    applies_to: vec![KeyType::Ip],
                    when: When {
                        distinct_uas_min: Some(10.0),
                        ..When::default()
                    },
                },
            ],
        }
    }

    #[test]
    fn enforce_shadow_and_negative_evidence() {
        let fast = Features {
            rate: 10.0,
            ..Features::default()
        };
        let v = set(Mode::Enforce, Mode::Enforce).evaluate(KeyType::Ip, &fast);
        assert_eq!((v.action, v.mode), (Action::Block, Mode::Enforce));
        let v = set(Mode::Shadow, Mode::Enforce).evaluate(KeyType::Ip, &fast);
        assert_eq!(
            (v.action, v.mode),
            (Action::Block, Mode::Shadow),
            "shadow rules never enforce"
        );
        let v = set(Mode::Off, Mode::Enforce).evaluate(KeyType::Ip, &fast);
        assert_eq!(v.action, Action::None);
        assert!(v.reasons.is_empty());
        let nat = Features {
            rate: 10.0,
            distinct_uas: 30.0,
            ..Features::default()
        };
        let v = set(Mode::Enforce, Mode::Enforce).evaluate(KeyType::Ip, &nat);
        assert_eq!(
            v.action,
            Action::None,
            "a NAT full of browsers is not one bot"
        );
        // The NAT rule applies to IPs only.
        let v = set(Mode::Enforce, Mode::Enforce).evaluate(KeyType::Subject, &nat);
        assert_eq!(v.action, Action::Block);
    }
}
