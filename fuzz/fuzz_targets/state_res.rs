//! State resolution inputs: events as a hostile server could send them (any `prev_events` and
//! `auth_events`, cycles included), spread over up to four state sets, resolved with v1, v2 and
//! v2.1, plus the auth chain and conflicted-subgraph helpers.
//!
//! Input: byte 0 picks the room version, byte 1 assigns events to state sets (two bits per
//! event, cycling), the rest is a JSON array of PDUs.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weft_fuzz::{Events, received};
use weft_protocol::RoomVersion;
use weft_protocol::state_res;

const VERSIONS: [RoomVersion; 4] = [
    RoomVersion::V1,
    RoomVersion::V2,
    RoomVersion::V11,
    RoomVersion::V12,
];

fuzz_target!(|data: &[u8]| {
    let [pick, sets_byte, json @ ..] = data else {
        return;
    };
    let version = VERSIONS[*pick as usize % VERSIONS.len()];
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(json) else {
        return;
    };
    if items.len() > 24 {
        return;
    }
    let pdus: Vec<_> = items
        .iter()
        .filter_map(|raw| received(raw, version))
        .collect();
    let mut sets = vec![Vec::new(); 4];
    for (i, p) in pdus.iter().enumerate() {
        let set = (sets_byte.rotate_right(2 * (i as u32 % 4)) & 3) as usize;
        sets[set].push(p);
    }
    let state_sets: Vec<_> = sets
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| Events::state_of(s.into_iter()))
        .collect();
    let events = Events::new(pdus.iter().cloned());
    let fetch = events.fetch();
    let _ = state_res::auth_chain(pdus.iter().map(|p| p.owned_event_id()), &fetch);
    let conflicted: HashSet<_> = pdus.iter().map(|p| p.owned_event_id()).collect();
    let _ = state_res::conflicted_state_subgraph(&conflicted, &fetch);
    if let Ok(resolved) = state_res::resolve(version, &state_sets, &fetch) {
        // Every resolved event is one of the inputs.
        for id in resolved.values() {
            assert!(conflicted.contains(id), "resolution invented {id}");
        }
    }
});
