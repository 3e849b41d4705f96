//! State resolution v1 (room version 1), as the spec's room version 1 page describes it.
//!
//! ruma implements only v2, so this is written here, as a pure function over the state sets and
//! an event lookup:
//!
//! 1. R starts as the union of the state sets without the conflicted keys (a key is
//!    conflicted when two sets map it to different events; a key some sets lack is not).
//! 2. For `m.room.power_levels`, then `m.room.join_rules`, then `m.room.member` conflicts (each
//!    key on its own): sort the candidates by ascending depth, then descending SHA-1 of the event
//!    ID; the first goes into R; each next one replaces it while it is allowed by the
//!    authorization rules in state R, and the first one that is not ends the step.
//! 3. Every other conflicted key gets the candidate with the highest depth, then lowest SHA-1
//!    of the event ID, that is allowed in state R. When none is, the spec says nothing; like
//!    Synapse, the last candidate in that order (the lowest depth) is taken, so the key does not
//!    vanish from the room.
//!
//! Candidates the lookup cannot find take no part. Keys are processed in sorted order so the
//! result does not depend on map iteration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::{EventId, OwnedEventId};
use sha1::Digest;

use crate::auth::{self, StateMap};
use crate::pdu::Pdu;
use crate::room_version::RoomVersion;

type Key = (StateEventType, String);

fn sha1_of(id: &EventId) -> [u8; 20] {
    sha1::Sha1::digest(id.as_str().as_bytes()).into()
}

/// Whether `pdu` passes the state-dependent authorization rules in state `r`.
fn allowed(
    version: RoomVersion,
    pdu: &Pdu,
    r: &StateMap<OwnedEventId>,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> bool {
    auth::check_state_dependent(version, pdu, |kind, key| {
        r.get(&(kind.clone(), key.to_owned()))
            .and_then(|id| fetch(id))
    })
    .is_ok()
}

/// Resolves `state_sets` with the v1 algorithm.
pub fn resolve(
    version: RoomVersion,
    state_sets: &[StateMap<OwnedEventId>],
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> StateMap<OwnedEventId> {
    // Every key's distinct candidates, in a sorted map for a deterministic order.
    let mut candidates: BTreeMap<(String, String), BTreeSet<OwnedEventId>> = BTreeMap::new();
    for set in state_sets {
        for ((kind, key), id) in set {
            candidates
                .entry((kind.to_string(), key.clone()))
                .or_default()
                .insert(id.clone());
        }
    }
    let mut r: StateMap<OwnedEventId> = StateMap::new();
    let mut conflicted: Vec<(Key, Vec<Arc<Pdu>>)> = Vec::new();
    for ((kind, key), ids) in candidates {
        let k: Key = (StateEventType::from(kind), key);
        if ids.len() == 1 {
            if let Some(id) = ids.into_iter().next() {
                r.insert(k, id);
            }
            continue;
        }
        let events: Vec<Arc<Pdu>> = ids.iter().filter_map(|id| fetch(id)).collect();
        if !events.is_empty() {
            conflicted.push((k, events));
        }
    }

    let auth_types = [
        StateEventType::RoomPowerLevels,
        StateEventType::RoomJoinRules,
        StateEventType::RoomMember,
    ];
    for kind in &auth_types {
        for (key, events) in conflicted.iter().filter(|(k, _)| &k.0 == kind) {
            let mut order = events.clone();
            // Ascending depth, then descending SHA-1 of the event ID.
            order.sort_by(|a, b| {
                a.depth()
                    .cmp(&b.depth())
                    .then_with(|| sha1_of(b.event_id()).cmp(&sha1_of(a.event_id())))
            });
            let mut iter = order.into_iter();
            if let Some(first) = iter.next() {
                r.insert(key.clone(), first.owned_event_id());
            }
            for ev in iter {
                if !allowed(version, &ev, &r, fetch) {
                    break;
                }
                r.insert(key.clone(), ev.owned_event_id());
            }
        }
    }
    for (key, events) in conflicted
        .iter()
        .filter(|(k, _)| !auth_types.contains(&k.0))
    {
        let mut order = events.clone();
        // Descending depth, then ascending SHA-1 of the event ID.
        order.sort_by(|a, b| {
            b.depth()
                .cmp(&a.depth())
                .then_with(|| sha1_of(a.event_id()).cmp(&sha1_of(b.event_id())))
        });
        let chosen = order
            .iter()
            .find(|ev| allowed(version, ev, &r, fetch))
            .or(order.last());
        if let Some(ev) = chosen {
            r.insert(key.clone(), ev.owned_event_id());
        }
    }
    r
}
