//! Hostile signal lines through waf-sync's state: no panic, and the lists
//! never exceed the capacity asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pii_fraud::waf::{signals_from_lines, Room, SyncState};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (signals, _) = signals_from_lines(&text);
    let mut s = SyncState::default();
    for (i, sig) in signals.iter().enumerate() {
        let _ = s.observe(sig, i as i64);
    }
    if let Ok(allow) = "10.0.0.0/8".parse() {
        let _ = s.prune(&[allow], 5);
    }
    let (lists, _) = s.desired(5, Room::PerFamily(3));
    assert!(lists.enforce.len() <= 6 && lists.shadow.len() <= 6);
    let (lists, _) = s.desired(5, Room::PerList(3));
    assert!(lists.enforce.len() <= 3 && lists.shadow.len() <= 3);
    let (lists, _) = s.desired(5, Room::Total(3));
    assert!(lists.enforce.len() + lists.shadow.len() <= 3);
});
