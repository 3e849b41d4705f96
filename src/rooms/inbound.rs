//! Preparing a received PDU for its room actor: the checks that need history from the
//! database (the spec's "checks performed on receipt of a PDU", steps 4–5):
//!
//! 1. every `auth_events` entry must be known, and the event must pass the auth rules against
//!    them;
//! 2. every `prev_events` entry must be known with its state (or the caller supplies the
//!    state before the event, e.g. from `send_join` or `/state_ids`); the state before the
//!    event is the resolution of the states after its prev events, and the event must pass
//!    the auth rules against it;
//! 3. the room's new current state is computed as if the event were accepted: the state
//!    after it, resolved with the states after the forward extremities it does not cite.
//!
//! Step 6 (soft-fail against the current state) and the append itself happen in the room
//! actor, which owns the current state. This runs on a blocking thread with one database
//! connection; signature and hash checks happened earlier, on all cores.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::{EventId, OwnedEventId};
use weft_protocol::auth::{self, StateMap};
use weft_protocol::{Pdu, RoomVersion, state_res};

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

/// Resolves several states with events looked up through `lookup`.
fn resolve(
    lookup: &Lookup<'_>,
    version: RoomVersion,
    states: &[StateIds],
) -> Result<StateIds, String> {
    let typed: Vec<StateMap<OwnedEventId>> = states.iter().map(to_typed).collect();
    let fetch = |id: &EventId| lookup.event(id.as_str());
    state_res::resolve(version, &typed, fetch)
        .map(|m| from_typed(&m))
        .map_err(|e| e.to_string())
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
    let mut missing_auth = Vec::new();
    for a in pdu.auth_events() {
        if lookup.event(a.as_str()).is_none() {
            missing_auth.push(a.to_string());
        }
    }
    if version.room_id_from_create_event() {
        let create_id = format!("${}", &pdu.room_id().as_str()[1..]);
        if pdu.kind_str() != "m.room.create" && lookup.event(&create_id).is_none() {
            missing_auth.push(create_id);
        }
    }

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

    // Auth against the event's own auth events.
    if let Err(e) = auth::check_against_auth_events(version, pdu, |id| lookup.event(id.as_str())) {
        return Ok(Prepared::Rejected(format!("auth events: {}", e.0)));
    }

    // The state before the event.
    let state_before = match input.state_hint {
        Some(s) => s,
        None if prev_states.len() == 1 => prev_states.pop().unwrap_or_default(),
        None if prev_states.is_empty() => StateIds::new(),
        None => match resolve(&lookup, version, &prev_states) {
            Ok(s) => s,
            Err(e) => return Ok(Prepared::Rejected(format!("state resolution failed: {e}"))),
        },
    };
    let state_check = auth::check_state_dependent(version, pdu, |t, k| {
        state_before
            .get(&(t.to_string(), k.to_owned()))
            .and_then(|id| lookup.event(id))
    });
    if let Err(e) = state_check {
        return Ok(Prepared::Rejected(format!("state before event: {}", e.0)));
    }

    // The current state if accepted.
    let mut after = state_before.clone();
    if let Some(k) = pdu.state_key() {
        after.insert((pdu.kind_str(), k.to_owned()), pdu.event_id().to_string());
    }
    let prevs: HashSet<String> = pdu.prev_events().iter().map(|p| p.to_string()).collect();
    let remaining: Vec<&String> = input
        .extremities
        .iter()
        .filter(|e| !prevs.contains(*e))
        .collect();
    // The event is not stored yet, but it is in the state being resolved: without it in the
    // lookup, resolution drops it from the conflicted set and the other fork always wins.
    lookup
        .cache
        .borrow_mut()
        .insert(pdu.event_id().to_string(), Some(Arc::clone(pdu)));
    let new_current = if remaining.is_empty() {
        after
    } else {
        let mut states = vec![after];
        for e in remaining {
            if *e == pdu.event_id().as_str() {
                continue;
            }
            match lookup.state_after(e)? {
                Some(s) => states.push(s),
                None => tracing::warn!(extremity = %e, "forward extremity without state"),
            }
        }
        if states.len() == 1 {
            states.pop().unwrap_or_default()
        } else {
            // Forks are resolved against the current state too, which the extremities'
            // states already make up; resolving the tips is the spec's algorithm.
            match resolve(&lookup, version, &states) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "could not resolve forward extremities; keeping the current state");
                    input.current_ids.clone()
                }
            }
        }
    };

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
    Ok(Prepared::Ready(Box::new(ReadyEvent {
        state_before,
        new_current,
        events: evs,
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
