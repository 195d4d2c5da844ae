//! Hostile gateway-log bytes through the parser and the whole pipeline:
//! no panic, and every accepted record is scored without growing the tables.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pii_fraud::pipeline::{Pipeline, PipelineConfig};
use pii_fraud::rules::RuleSet;
use pii_fraud::ua::UaClassifier;

/// The crawler patterns compile once; each input gets a fresh pipeline.
static UA: OnceLock<Option<UaClassifier>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some(ua) = UA.get_or_init(|| UaClassifier::new().ok()).clone() else {
        return;
    };
    let cfg = PipelineConfig { ip_capacity: 64, subnet_capacity: 16, subject_capacity: 16, ..PipelineConfig::default() };
    let mut p = Pipeline::new(cfg, RuleSet::default_rules(), ua);
    let reserved = p.reserved_bytes();
    let mut out = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(r) = pii_fraud::record::parse_line(line) {
            let subject = (!r.jwt_sub.is_empty()).then(|| r.jwt_sub.clone());
            p.observe(&r, subject.as_deref(), &mut out);
        }
    }
    for d in &out {
        let _ = serde_json::to_string(&pii_fraud::signal::Signal::from(d));
    }
    assert_eq!(p.reserved_bytes(), reserved);
});
