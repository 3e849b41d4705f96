//! PDU parsing and checking: one PDU (a JSON object), or a list of PDUs whose last one is checked
//! against the state the others form.
//!
//! Input: byte 0 picks the room version (any of the 13), the rest is JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weft_fuzz::{VERSIONS, check_against_events, received};

fuzz_target!(|data: &[u8]| {
    let [pick, json @ ..] = data else {
        return;
    };
    let version = VERSIONS[*pick as usize % VERSIONS.len()];
    let Ok(value) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    match &value {
        Value::Array(items) if items.len() <= 16 => {
            let pdus: Vec<_> = items
                .iter()
                .filter_map(|raw| received(raw, version))
                .collect();
            check_against_events(&pdus, version);
        }
        other => {
            let _ = received(other, version);
        }
    }
});
