//! The `fraud-signals` message, schema version 1 (docs/fraud.md), and the
//! decision line that `fraud replay` writes (a signal without its
//! provenance fields).

use serde::{Deserialize, Serialize};

use crate::pipeline::Decision;
use crate::record::format_ts;
use crate::rules::{Action, KeyType, Mode};

pub const SCHEMA: &str = "pii-fraud.signal/v1";

/// A line of `fraud replay --output`, and the core of every signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLine {
    pub key_type: KeyType,
    pub key: String,
    pub score: f64,
    pub action: Action,
    pub mode: Mode,
    pub reasons: Vec<String>,
}

/// One message on `fraud-signals`. The Kafka record key is `key`; `key` is
/// an address, a subnet, or the enclave's token for a subject, never a raw
/// identity. Readers ignore fields they do not know (later minor versions
/// may add some); a breaking change gets a new `schema`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub schema: String,
    #[serde(flatten)]
    pub decision: DecisionLine,
    pub window_s: u32,
    /// RFC 3339 (UTC).
    pub first_seen: String,
    pub last_seen: String,
}

impl From<&Decision> for DecisionLine {
    fn from(d: &Decision) -> Self {
        DecisionLine {
            key_type: d.key_type,
            key: d.key.clone(),
            score: (d.score * 1000.0).round() / 1000.0,
            action: d.action,
            mode: d.mode,
            reasons: d.reasons.clone(),
        }
    }
}

impl From<&Decision> for Signal {
    fn from(d: &Decision) -> Self {
        Signal {
            schema: SCHEMA.to_owned(),
            decision: d.into(),
            window_s: d.window_s,
            first_seen: format_ts(d.first_seen_ms),
            last_seen: format_ts(d.last_seen_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_is_flat_and_documented() {
        let d = Decision {
            key_type: KeyType::Subject,
            key: "tok_3xQ".into(),
            score: 0.97123,
            action: Action::Block,
            mode: Mode::Enforce,
            reasons: vec!["high_rate_subject".into()],
            first_seen_ms: 1_796_083_200_000,
            last_seen_ms: 1_796_083_260_500,
            window_s: 900,
        };
        let v = serde_json::to_value(Signal::from(&d)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "schema": "pii-fraud.signal/v1", "key_type": "subject", "key": "tok_3xQ",
                "score": 0.971, "action": "block", "mode": "enforce", "reasons": ["high_rate_subject"],
                "window_s": 900, "first_seen": "2026-12-01T00:00:00Z", "last_seen": "2026-12-01T00:01:00.5Z"
            })
        );
        let back: Signal = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, Signal::from(&d));
    }
}
