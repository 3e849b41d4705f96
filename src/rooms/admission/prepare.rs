//! The database-backed driver of admission steps 4–5 for one received PDU, for what the
//! room actor does not hold in memory (old prev events, large forks): it loads the states
//! after the event's prev events and after the forward extremities from stored state
//! groups, and event bodies (auth chains for resolution) from the events table, on a
//! blocking thread with one connection, then runs the steps' pure functions:
//!
//! 1. every auth event must be known, and the event must pass [`super::auth_events`];
//! 2. every prev event must be known with its state (or the caller supplies the state
//!    before the event, e.g. from `send_join` or `/state_ids`); the state before the event
//!    comes from [`super::state_before::from_prev_states`] and the event must pass
//!    [`super::state_before::check`];
//! 3. the room's new current state is computed as if the event were accepted
//!    ([`super::soft_fail::new_current`]).
//!
//! Step 6 (soft-fail against the current state) and the append itself happen in the room
//! actor, which owns the current state.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use weft_protocol::{Pdu, RoomVersion};

use super::{auth_events, soft_fail, state_before};

use crate::rooms::view::pdu_of;
use crate::storage::state::StateIds;
use crate::storage::{AnyConnection, StorageResult, events, state};

/// What the actor gives the preparation.
pub struct InboundInput {
    pub version: RoomVersion,
    pub pdu: Arc<Pdu>,
    pub extremities: Vec<String>,
    pub current_ids: StateIds,
    /// Events the actor holds in memory (its current state, its pending batch).
    pub known: HashMap<String, Arc<Pdu>>,
    /// The state before the event when its prev events are not known here.
    pub state_hint: Option<StateIds>,
}

/// The outcome of preparation.
pub enum Prepared {
    /// Already in the timeline.
    Known,
    /// Fetch these first (from the origin), then try again.
    Missing {
        prev: Vec<String>,
        auth: Vec<String>,
    },
    /// Fails the auth rules against its auth events or the state before it.
    Rejected(String),
    Ready(Box<ReadyEvent>),
}

pub struct ReadyEvent {
    pub state_before: StateIds,
    /// The room's current state if the event is accepted.
    pub new_current: StateIds,
    /// Events for every entry of `state_before` and `new_current` (to keep state in memory).
    pub events: HashMap<String, Arc<Pdu>>,
    /// Every other event loaded on the way (auth chains), for the actor's memory path.
    pub fetched: Vec<Arc<Pdu>>,
}

/// Event lookups during one preparation: memory first, then the database.
struct Lookup<'c> {
    conn: RefCell<&'c mut AnyConnection>,
    version: RoomVersion,
    cache: RefCell<HashMap<String, Option<Arc<Pdu>>>>,
    rows: RefCell<HashMap<String, Option<events::EventRow>>>,
}

impl<'c> Lookup<'c> {
    fn row(&self, id: &str) -> StorageResult<Option<events::EventRow>> {
        if let Some(r) = self.rows.borrow().get(id) {
            return Ok(r.clone());
        }
        let r = events::get_event(&mut self.conn.borrow_mut(), id)?;
        self.rows.borrow_mut().insert(id.to_owned(), r.clone());
        Ok(r)
    }

    fn event(&self, id: &str) -> Option<Arc<Pdu>> {
        if let Some(e) = self.cache.borrow().get(id) {
            return e.clone();
        }
        let found = match self.row(id) {
            Ok(Some(row)) => pdu_of(&row, self.version).ok().map(|mut p| {
                p.set_rejected(row.rejected.is_some());
                Arc::new(p)
            }),
            _ => None,
        };
        self.cache.borrow_mut().insert(id.to_owned(), found.clone());
        found
    }

    /// The state after an event we hold with state information.
    fn state_after(&self, id: &str) -> StorageResult<Option<StateIds>> {
        let Some(row) = self.row(id)? else {
            return Ok(None);
        };
        if let Some(g) = row.state_after {
            return Ok(Some(state::load_group(&mut self.conn.borrow_mut(), g)?));
        }
        let Some(g) = row.state_before else {
            return Ok(None);
        };
        let mut s = state::load_group(&mut self.conn.borrow_mut(), g)?;
        if let (Some(k), None) = (&row.state_key, &row.rejected) {
            s.insert((row.event_type.clone(), k.clone()), row.event_id.clone());
        }
        Ok(Some(s))
    }
}

pub fn prepare(conn: &mut AnyConnection, input: InboundInput) -> StorageResult<Prepared> {
    let pdu = &input.pdu;
    let version = input.version;
    if let Some(row) = events::get_event(conn, pdu.event_id().as_str())? {
        // Rejection is permanent, whichever path brings the event again.
        if let Some(reason) = row.rejected {
            return Ok(Prepared::Rejected(format!("rejected before: {reason}")));
        }
        if !row.outlier {
            return Ok(Prepared::Known);
        }
    }
    let lookup = Lookup {
        conn: RefCell::new(conn),
        version,
        cache: RefCell::new(
            input
                .known
                .iter()
                .map(|(k, v)| (k.clone(), Some(Arc::clone(v))))
                .collect(),
        ),
        rows: RefCell::new(HashMap::new()),
    };

    // 1. Auth events known?
    let missing_auth = auth_events::missing(version, pdu, |id| lookup.event(id).is_some());

    // 2. Prev events known with state?
    let mut prev_states = Vec::new();
    let mut missing_prev = Vec::new();
    if input.state_hint.is_none() {
        for p in pdu.prev_events() {
            match lookup.state_after(p.as_str())? {
                Some(s) => prev_states.push(s),
                None => missing_prev.push(p.to_string()),
            }
        }
    }
    if !missing_auth.is_empty() || !missing_prev.is_empty() {
        return Ok(Prepared::Missing {
            prev: missing_prev,
            auth: missing_auth,
        });
    }

    // Step 4: against its own auth events.
    if let Err(e) = auth_events::check(version, pdu, |id| lookup.event(id.as_str())) {
        return Ok(Prepared::Rejected(e));
    }

    // Step 5: against the state before it.
    let state_before = match input.state_hint {
        Some(s) => s,
        None => match state_before::from_prev_states(version, prev_states, |id| {
            lookup.event(id.as_str())
        }) {
            Ok(s) => s,
            Err(e) => return Ok(Prepared::Rejected(e)),
        },
    };
    if let Err(e) = state_before::check(version, pdu, &state_before, |id| lookup.event(id)) {
        return Ok(Prepared::Rejected(e));
    }

    // The current state if accepted.
    let after = state_before::after(pdu, &state_before);
    // The event is not stored yet, but it is in the state being resolved: without it in the
    // lookup, resolution drops it from the conflicted set and the other fork always wins.
    lookup
        .cache
        .borrow_mut()
        .insert(pdu.event_id().to_string(), Some(Arc::clone(pdu)));
    let mut tip_states = Vec::new();
    for e in soft_fail::other_tips(pdu, &input.extremities) {
        match lookup.state_after(e)? {
            Some(s) => tip_states.push(s),
            None => tracing::warn!(extremity = %e, "forward extremity without state"),
        }
    }
    let new_current =
        soft_fail::new_current(version, after, tip_states, &input.current_ids, |id| {
            lookup.event(id.as_str())
        });

    let mut evs = HashMap::new();
    evs.insert(pdu.event_id().to_string(), Arc::clone(pdu));
    for id in state_before.values().chain(new_current.values()) {
        if evs.contains_key(id) {
            continue;
        }
        if let Some(e) = lookup.event(id) {
            evs.insert(id.clone(), e);
        }
    }
    let fetched = lookup
        .cache
        .borrow()
        .iter()
        .filter(|(id, _)| !evs.contains_key(*id))
        .filter_map(|(_, e)| e.clone())
        .collect();
    Ok(Prepared::Ready(Box::new(ReadyEvent {
        state_before,
        new_current,
        events: evs,
        fetched,
    })))
}

/// The state after an event (for callers outside the actor: `/state_ids`, backfill).
pub fn state_after_event(
    conn: &mut AnyConnection,
    event_id: &str,
) -> StorageResult<Option<StateIds>> {
    let lookup = Lookup {
        conn: RefCell::new(conn),
        version: RoomVersion::V11,
        cache: RefCell::new(HashMap::new()),
        rows: RefCell::new(HashMap::new()),
    };
    lookup.state_after(event_id)
}

/// The state before an event.
pub fn state_before_event(
    conn: &mut AnyConnection,
    event_id: &str,
) -> StorageResult<Option<StateIds>> {
    let Some(row) = events::get_event(conn, event_id)? else {
        return Ok(None);
    };
    match row.state_before {
        Some(g) => Ok(Some(state::load_group(conn, g)?)),
        None => Ok(None),
    }
}
