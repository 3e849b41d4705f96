//! Step 5 of admission: the event must pass the authorization rules against the state of
//! the room before it: the state after its one prev event, or the resolution of the states
//! after its prev events when it merges several (state resolution of the room version). An
//! event failing here is rejected.
//!
//! Pure over its inputs: the caller supplies the states after the prev events (from the
//! room actor's memory or from the database) and an event lookup for resolution.

use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::{EventId, OwnedEventId};
use weft_protocol::auth::{self, StateMap};
use weft_protocol::{Pdu, RoomVersion, state_res};

use crate::storage::state::StateIds;

fn to_typed(ids: &StateIds) -> StateMap<OwnedEventId> {
    ids.iter()
        .filter_map(|((t, k), e)| {
            Some((
                (StateEventType::from(t.as_str()), k.clone()),
                OwnedEventId::try_from(e.as_str()).ok()?,
            ))
        })
        .collect()
}

fn from_typed(map: &StateMap<OwnedEventId>) -> StateIds {
    map.iter()
        .map(|((t, k), e)| ((t.to_string(), k.clone()), e.to_string()))
        .collect()
}

/// Resolves several states with the room version's algorithm, events looked up through
/// `fetch`. Identical states resolve to themselves without any lookup.
pub fn resolve(
    version: RoomVersion,
    states: &[StateIds],
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<StateIds, String> {
    match states {
        [] => return Ok(StateIds::new()),
        [one] => return Ok(one.clone()),
        [first, rest @ ..] if rest.iter().all(|s| s == first) => return Ok(first.clone()),
        _ => {}
    }
    let typed: Vec<StateMap<OwnedEventId>> = states.iter().map(to_typed).collect();
    state_res::resolve(version, &typed, fetch)
        .map(|m| from_typed(&m))
        .map_err(|e| e.to_string())
}

/// The state before an event, from the states after its prev events.
pub fn from_prev_states(
    version: RoomVersion,
    mut prev_states: Vec<StateIds>,
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<StateIds, String> {
    if prev_states.len() == 1 {
        return Ok(prev_states.pop().unwrap_or_default());
    }
    resolve(version, &prev_states, fetch).map_err(|e| format!("state resolution failed: {e}"))
}

/// Checks `pdu` against the state before it; `event` looks up a state entry's event.
pub fn check(
    version: RoomVersion,
    pdu: &Pdu,
    state_before: &StateIds,
    event: impl Fn(&str) -> Option<Arc<Pdu>>,
) -> Result<(), String> {
    auth::check_state_dependent(version, pdu, |t, k| {
        state_before
            .get(&(t.to_string(), k.to_owned()))
            .and_then(|id| event(id))
    })
    .map_err(|e| format!("state before event: {}", e.0))
}

/// The state after an accepted event: the state before it, with its own key set.
pub fn after(pdu: &Pdu, state_before: &StateIds) -> StateIds {
    let mut after = state_before.clone();
    if let Some(k) = pdu.state_key() {
        after.insert((pdu.kind_str(), k.to_owned()), pdu.event_id().to_string());
    }
    after
}
