//! Step 6 of admission: soft failure. An event that passed steps 4–5 is checked once more
//! against the room's *current* state; if it fails there (say its sender was banned on a
//! branch it did not see), it is stored and keeps its place in the DAG, but it is not sent
//! to clients and does not become a forward extremity or change the current state.
//!
//! Otherwise the room's new current state is the state after the event resolved with the
//! states after the forward extremities it does not cite ([`new_current`]).

use std::collections::HashSet;
use std::sync::Arc;

use ruma::EventId;
use weft_protocol::auth::{self, StateMap};
use weft_protocol::{Pdu, RoomVersion};

use super::state_before;
use crate::storage::state::StateIds;

/// Checks `pdu` against the room's current state (`Err`: soft-failed, with the reason).
pub fn check(version: RoomVersion, pdu: &Pdu, current: &StateMap<Arc<Pdu>>) -> Result<(), String> {
    auth::check_state_dependent(version, pdu, |t, k| {
        current.get(&(t.clone(), k.to_owned())).cloned()
    })
    .map_err(|e| e.0)
}

/// The forward extremities `pdu` leaves standing (those it does not cite, itself excluded).
pub fn other_tips<'a>(pdu: &Pdu, extremities: &'a [String]) -> Vec<&'a String> {
    let prevs: HashSet<String> = pdu.prev_events().iter().map(|p| p.to_string()).collect();
    extremities
        .iter()
        .filter(|e| !prevs.contains(*e) && e.as_str() != pdu.event_id().as_str())
        .collect()
}

/// The room's current state once `pdu` is accepted: `after` (the state after it) resolved
/// with `tip_states` (the states after the other forward extremities). When resolution
/// fails the current state stays (logged).
pub fn new_current(
    version: RoomVersion,
    after: StateIds,
    mut tip_states: Vec<StateIds>,
    current: &StateIds,
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> StateIds {
    if tip_states.is_empty() {
        return after;
    }
    let mut states = vec![after];
    states.append(&mut tip_states);
    // Forks are resolved against the current state too, which the extremities' states
    // already make up; resolving the tips is the spec's algorithm.
    match state_before::resolve(version, &states, fetch) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "could not resolve forward extremities; keeping the current state");
            current.clone()
        }
    }
}
