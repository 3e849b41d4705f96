//! Authorization rules: which state events authorize an event, and whether the event passes
//! the rules of its room version against a given state.
//!
//! The rules themselves are ruma's (`ruma::state_res`), which implement every stable room
//! version including v12's creator power. This module adapts them to weft's `Pdu` and state
//! maps, and names the three checks of the spec's "checks performed on receipt of a PDU".
//!
//! Linearized Matrix rooms have their own rules ([`crate::lm::auth`]); every function here
//! hands them over, so callers never branch on the room version.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::{EventId, OwnedEventId, UserId};
use serde_json::value::RawValue;

use crate::pdu::Pdu;
use crate::room_version::RoomVersion;

/// A room state: `(type, state_key)` → event.
pub type StateMap<T> = HashMap<(StateEventType, String), T>;

/// Why an event is not authorized.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct AuthError(pub String);

/// The `(type, state_key)` pairs whose current values must be cited in `auth_events` of a new
/// event (the spec's "auth events selection").
pub fn auth_types_for_event(
    version: RoomVersion,
    kind: &str,
    sender: &UserId,
    state_key: Option<&str>,
    content: &serde_json::Value,
) -> Result<Vec<(StateEventType, String)>, AuthError> {
    if version.is_linearized() {
        return Ok(crate::lm::auth::auth_types(
            kind,
            sender.as_str(),
            state_key,
            content,
        ));
    }
    let raw = serde_json::value::to_raw_value(content).map_err(|e| AuthError(e.to_string()))?;
    let mut types = ruma::state_res::auth_types_for_event(
        &TimelineEventType::from(kind),
        sender,
        state_key,
        &raw,
        &version.rules().authorization,
    )
    .map_err(AuthError)?;
    // ruma leaves the create event out in v12 (its ID is the room ID); the PDU still must
    // not cite it there. For earlier versions ruma includes it.
    types.dedup();
    Ok(types)
}

/// Chooses the auth events for a new event, looking state up by `(type, state_key)`.
pub fn select_auth_events_with(
    version: RoomVersion,
    kind: &str,
    sender: &UserId,
    state_key: Option<&str>,
    content: &serde_json::Value,
    lookup: impl Fn(&(StateEventType, String)) -> Option<OwnedEventId>,
) -> Result<Vec<OwnedEventId>, AuthError> {
    let mut out = Vec::new();
    for key in auth_types_for_event(version, kind, sender, state_key, content)? {
        if let Some(id) = lookup(&key)
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    Ok(out)
}

/// Chooses the auth events for a new event from a state map.
pub fn select_auth_events(
    version: RoomVersion,
    kind: &str,
    sender: &UserId,
    state_key: Option<&str>,
    content: &serde_json::Value,
    state: &StateMap<OwnedEventId>,
) -> Result<Vec<OwnedEventId>, AuthError> {
    let mut out = Vec::new();
    for key in auth_types_for_event(version, kind, sender, state_key, content)? {
        if let Some(id) = state.get(&key)
            && !out.contains(id)
        {
            out.push(id.clone());
        }
    }
    Ok(out)
}

/// Checks that do not depend on room state: the create-event rules and the shape of
/// `auth_events` (right types, no duplicates, none rejected). `fetch` returns events by ID.
pub fn check_state_independent(
    version: RoomVersion,
    pdu: &Pdu,
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<(), AuthError> {
    if version.is_linearized() {
        // Rule 3 (the create event needs no state but its absence) and rule 4.
        if pdu.kind_str() == "m.room.create" {
            let none = |_: &str, _: &str| None;
            crate::lm::auth::check(&crate::lm::auth::Subject::of_pdu(pdu), &none)?;
        }
        return crate::lm::auth::check_auth_events(pdu, &fetch);
    }
    ruma::state_res::check_state_independent_auth_rules(&version.rules().authorization, pdu, fetch)
        .map_err(AuthError)
}

/// The state-dependent rules (membership, power levels, join rules, ...) against `state`.
pub fn check_state_dependent(
    version: RoomVersion,
    pdu: &Pdu,
    fetch_state: impl Fn(&StateEventType, &str) -> Option<Arc<Pdu>>,
) -> Result<(), AuthError> {
    if version.is_linearized() {
        let lookup = |t: &str, k: &str| fetch_state(&StateEventType::from(t), k);
        return crate::lm::auth::check(&crate::lm::auth::Subject::of_pdu(pdu), &lookup);
    }
    ruma::state_res::check_state_dependent_auth_rules(
        &version.rules().authorization,
        pdu,
        fetch_state,
    )
    .map_err(AuthError)
}

/// Both checks against one state given as events: what a locally created event must pass
/// (its auth events are drawn from this same state).
pub fn check_against_state(
    version: RoomVersion,
    pdu: &Pdu,
    state: &StateMap<Arc<Pdu>>,
) -> Result<(), AuthError> {
    let by_id: HashMap<&EventId, &Arc<Pdu>> = state.values().map(|e| (e.event_id(), e)).collect();
    check_state_independent(version, pdu, |id| by_id.get(id).map(|e| Arc::clone(e)))?;
    check_state_dependent(version, pdu, |kind, key| {
        state.get(&(kind.clone(), key.to_owned())).cloned()
    })
}

/// Checks an event against the state formed by its own `auth_events` (step 4 of the checks on
/// receipt of a PDU). `fetch` must return each auth event (and, for v12, the create event).
pub fn check_against_auth_events(
    version: RoomVersion,
    pdu: &Pdu,
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<(), AuthError> {
    check_state_independent(version, pdu, &fetch)?;
    let mut auth_state: StateMap<Arc<Pdu>> = HashMap::new();
    for id in pdu.auth_events() {
        if let Some(ev) = fetch(id)
            && let Some(key) = ev.state_key()
        {
            auth_state.insert((ev.kind_str().into(), key.to_owned()), ev);
        }
    }
    if version.room_id_from_create_event() {
        let create_id = format!("${}", &pdu.room_id().as_str()[1..]);
        if let Ok(create_id) = OwnedEventId::try_from(create_id)
            && let Some(create) = fetch(&create_id)
        {
            auth_state.insert((StateEventType::RoomCreate, String::new()), create);
        }
    }
    check_state_dependent(version, pdu, |kind, key| {
        auth_state.get(&(kind.clone(), key.to_owned())).cloned()
    })
}

/// The event-format checks of the room version (sizes, field types, ID formats).
pub fn check_format(version: RoomVersion, pdu: &Pdu) -> Result<(), AuthError> {
    if version.is_linearized() {
        // No depth, and hub-made events cite exactly one previous event.
        if pdu.prev_events().len() > 1 {
            return Err(AuthError("an LM event cites at most one prev event".into()));
        }
        return Ok(());
    }
    ruma::state_res::check_pdu_format(&pdu.json(), &version.rules().event_format).map_err(AuthError)
}

/// A power-levels view used by the server for decisions that are not auth rules (who may
/// redact another's event, whom to show as admin), computed like the auth rules do.
#[derive(Debug, Clone)]
pub struct PowerLevels {
    content: serde_json::Value,
    creators: Vec<String>,
    infinite_creators: bool,
    has_event: bool,
}

impl PowerLevels {
    /// From the current power-levels content (if any) and the room's creators.
    pub fn new(
        version: RoomVersion,
        content: Option<serde_json::Value>,
        creators: Vec<String>,
    ) -> Self {
        Self {
            has_event: content.is_some(),
            content: content.unwrap_or(serde_json::Value::Null),
            creators,
            infinite_creators: version.creators_have_infinite_power(),
        }
    }

    fn int(&self, key: &str, default: i64) -> i64 {
        as_int(self.content.get(key)).unwrap_or(default)
    }

    /// A user's level; `i64::MAX` for v12 creators.
    pub fn user_level(&self, user: &str) -> i64 {
        if self.infinite_creators && self.creators.iter().any(|c| c == user) {
            return i64::MAX;
        }
        if !self.has_event {
            return if self.creators.iter().any(|c| c == user) {
                100
            } else {
                0
            };
        }
        as_int(self.content.get("users").and_then(|u| u.get(user)))
            .unwrap_or_else(|| self.int("users_default", 0))
    }

    /// The level needed to send an event of `kind`.
    pub fn event_level(&self, kind: &str, is_state: bool) -> i64 {
        if let Some(v) = as_int(self.content.get("events").and_then(|e| e.get(kind))) {
            return v;
        }
        if is_state {
            self.int("state_default", if self.has_event { 50 } else { 0 })
        } else {
            self.int("events_default", 0)
        }
    }

    pub fn redact_level(&self) -> i64 {
        self.int("redact", 50)
    }
    pub fn kick_level(&self) -> i64 {
        self.int("kick", 50)
    }
    pub fn ban_level(&self) -> i64 {
        self.int("ban", 50)
    }
    pub fn invite_level(&self) -> i64 {
        self.int("invite", 0)
    }
}

fn as_int(v: Option<&serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses a raw content into a value (helper for callers holding `RawValue`).
pub fn raw_to_value(raw: &RawValue) -> serde_json::Value {
    serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests;
