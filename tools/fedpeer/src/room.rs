//! The peer's view of a room it joined: the state and auth events it was given by
//! `send_join`, the events it built or received since, its forward extremities and depth —
//! what it needs to build the next event.
//!
//! The peer trusts what the resident server tells it (no auth checks of its own): it is a
//! test tool, and the server under test is the one whose checks are being exercised.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId};
use serde_json::Value;
use weft_protocol::auth::{self, StateMap};
use weft_protocol::builder::{self, EventDraft, Position};
use weft_protocol::keys::ServerSigningKey;
use weft_protocol::{Pdu, RoomVersion};

/// Most `prev_events` an event built here cites (the spec's limit is 20; servers use 10).
pub const MAX_PREV_EVENTS: usize = 10;

/// A room as the peer sees it.
#[derive(Debug)]
pub struct Room {
    pub room_id: OwnedRoomId,
    pub version: RoomVersion,
    state: Arc<StateMap<OwnedEventId>>,
    events: HashMap<OwnedEventId, Pdu>,
    /// The state before each event placed in the DAG here (shared while it does not
    /// change). Exact for a linear history; for forks it is the state the peer had when the
    /// event arrived (the peer does no state resolution).
    state_before: HashMap<OwnedEventId, Arc<StateMap<OwnedEventId>>>,
    extremities: Vec<OwnedEventId>,
    depth: u64,
}

impl Room {
    pub fn new(room_id: OwnedRoomId, version: RoomVersion) -> Self {
        Self {
            room_id,
            version,
            state: Arc::new(HashMap::new()),
            events: HashMap::new(),
            state_before: HashMap::new(),
            extremities: Vec::new(),
            depth: 0,
        }
    }

    /// Keeps an event (e.g. from an auth chain) without placing it in the DAG.
    pub fn insert(&mut self, pdu: Pdu) {
        self.events.insert(pdu.owned_event_id(), pdu);
    }

    /// Keeps a state event as part of the current state (from `send_join`).
    pub fn set_state(&mut self, pdu: Pdu) {
        if let Some(key) = pdu.state_key() {
            Arc::make_mut(&mut self.state).insert(
                (pdu.kind_str().into(), key.to_owned()),
                pdu.owned_event_id(),
            );
        }
        self.insert(pdu);
    }

    /// Places an event in the DAG: it becomes a forward extremity (replacing its prev
    /// events) and, if it is a state event, part of the current state.
    pub fn append(&mut self, pdu: Pdu) {
        let id = pdu.owned_event_id();
        if self.events.contains_key(&id) && !self.extremities.contains(&id) {
            // Already known (e.g. our own event echoed back): nothing changes.
            return;
        }
        self.extremities.retain(|e| !pdu.prev_events().contains(e));
        if !self.extremities.contains(&id) {
            self.extremities.push(id.clone());
        }
        self.depth = self.depth.max(pdu.depth());
        self.state_before.insert(id, Arc::clone(&self.state));
        if pdu.is_state() {
            self.set_state(pdu);
        } else {
            self.insert(pdu);
        }
    }

    /// Places an event like [`Room::append`] but without remembering the state before it
    /// (building a big room: remembering 10,000 states would copy the state 10,000 times).
    /// `/state` and `/state_ids` are then not served at this event.
    pub fn append_unrecorded(&mut self, pdu: Pdu) {
        self.extremities.retain(|e| !pdu.prev_events().contains(e));
        self.extremities.push(pdu.owned_event_id());
        self.depth = self.depth.max(pdu.depth());
        if pdu.is_state() {
            self.set_state(pdu);
        } else {
            self.insert(pdu);
        }
    }

    /// The current state's event IDs.
    pub fn current_state_ids(&self) -> Vec<OwnedEventId> {
        self.state.values().cloned().collect()
    }

    /// The auth chain (IDs) of some events: every auth event, transitively, known here.
    pub fn auth_chain_ids(&self, of: &[OwnedEventId]) -> Vec<OwnedEventId> {
        let mut chain: BTreeSet<OwnedEventId> = BTreeSet::new();
        for s in of {
            self.collect_auth(s, &mut chain);
        }
        chain.into_iter().collect()
    }

    pub fn event(&self, id: &OwnedEventId) -> Option<&Pdu> {
        self.events.get(id)
    }

    /// The current state event for `(kind, state_key)`.
    pub fn state_event(&self, kind: &str, state_key: &str) -> Option<&Pdu> {
        self.state
            .get(&(kind.into(), state_key.to_owned()))
            .and_then(|id| self.events.get(id))
    }

    pub fn extremities(&self) -> &[OwnedEventId] {
        &self.extremities
    }

    /// The greatest depth of an event in the DAG.
    pub fn depth(&self) -> u64 {
        self.depth
    }

    /// Where a new event goes: on `prevs` (default: the forward extremities), with auth
    /// events chosen from the current state.
    pub fn position(
        &self,
        draft: &EventDraft,
        prevs: Option<&[OwnedEventId]>,
    ) -> Result<Position<'_>, String> {
        let prev_events: Vec<OwnedEventId> = prevs
            .unwrap_or(&self.extremities)
            .iter()
            .rev()
            .take(MAX_PREV_EVENTS)
            .rev()
            .cloned()
            .collect();
        let depth = prev_events
            .iter()
            .map(|p| self.events.get(p).map(|e| e.depth()).unwrap_or(self.depth))
            .max()
            .unwrap_or(self.depth)
            + 1;
        let auth_events = auth::select_auth_events(
            self.version,
            &draft.kind,
            &draft.sender,
            draft.state_key.as_deref(),
            &draft.content,
            &self.state,
        )
        .map_err(|e| e.0)?;
        Ok(Position {
            version: self.version,
            room_id: Some(&self.room_id),
            prev_events,
            auth_events,
            depth,
        })
    }

    /// The unsigned PDU JSON for a draft at the current position (for crafting).
    pub fn template(
        &self,
        draft: &EventDraft,
        prevs: Option<&[OwnedEventId]>,
    ) -> Result<CanonicalJsonObject, String> {
        builder::pdu_template(draft, &self.position(draft, prevs)?).map_err(|e| e.to_string())
    }

    /// Builds, hashes and signs an event at the current position (not appended).
    pub fn build(
        &self,
        draft: &EventDraft,
        prevs: Option<&[OwnedEventId]>,
        origin: &str,
        key: &ServerSigningKey,
    ) -> Result<Pdu, String> {
        builder::build_pdu(draft, &self.position(draft, prevs)?, origin, key)
            .map_err(|e| e.to_string())
    }

    /// The state before an event placed in the DAG here: `(state event IDs, auth chain
    /// IDs)`, what `/state_ids` answers.
    pub fn state_ids_at(
        &self,
        id: &OwnedEventId,
    ) -> Option<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        let state = self.state_before.get(id)?;
        let ids: Vec<OwnedEventId> = state.values().cloned().collect();
        let mut chain: BTreeSet<OwnedEventId> = BTreeSet::new();
        for s in &ids {
            self.collect_auth(s, &mut chain);
        }
        Some((ids, chain.into_iter().collect()))
    }

    fn collect_auth(&self, id: &OwnedEventId, into: &mut BTreeSet<OwnedEventId>) {
        let mut stack: Vec<OwnedEventId> = self
            .events
            .get(id)
            .map(|e| e.auth_events().to_vec())
            .unwrap_or_default();
        while let Some(a) = stack.pop() {
            if !into.insert(a.clone()) {
                continue;
            }
            if let Some(e) = self.events.get(&a) {
                stack.extend(e.auth_events().iter().cloned());
            }
        }
    }

    /// The JSON of the events with these IDs that are known here.
    pub fn events_json(&self, ids: &[OwnedEventId]) -> Vec<Value> {
        ids.iter()
            .filter_map(|i| self.events.get(i))
            .map(|e| e.to_federation_value())
            .collect()
    }

    /// `/backfill`: the events `from` and their ancestors, newest first, at most `limit`.
    pub fn backfill(&self, from: &[OwnedEventId], limit: usize) -> Vec<Value> {
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut frontier: Vec<&Pdu> = from.iter().filter_map(|f| self.events.get(f)).collect();
        let mut out: Vec<&Pdu> = Vec::new();
        while out.len() < limit {
            // Deepest first, so the answer walks back in order.
            frontier.sort_by_key(|e| e.depth());
            let Some(e) = frontier.pop() else { break };
            if !seen.insert(e.owned_event_id()) {
                continue;
            }
            out.push(e);
            frontier.extend(e.prev_events().iter().filter_map(|p| self.events.get(p)));
        }
        out.iter().map(|e| e.to_federation_value()).collect()
    }

    /// `get_missing_events`: events before `latest` back to (not including) `earliest`,
    /// oldest first, at most `limit`.
    pub fn missing_events(
        &self,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: usize,
    ) -> Vec<Value> {
        let stop: HashSet<&OwnedEventId> = earliest.iter().collect();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        let mut frontier: Vec<OwnedEventId> = latest
            .iter()
            .filter_map(|l| self.events.get(l))
            .flat_map(|e| e.prev_events().to_vec())
            .collect();
        let mut found: Vec<&Pdu> = Vec::new();
        while let Some(id) = frontier.pop() {
            if found.len() >= limit {
                break;
            }
            if stop.contains(&id) || !seen.insert(id.clone()) {
                continue;
            }
            if let Some(e) = self.events.get(&id) {
                found.push(e);
                frontier.extend(e.prev_events().iter().cloned());
            }
        }
        found.sort_by_key(|e| e.depth());
        found.iter().map(|e| e.to_federation_value()).collect()
    }

    /// The auth chain of an event (every auth event, transitively), as far as known here.
    pub fn auth_chain(&self, id: &OwnedEventId) -> Vec<Value> {
        let mut chain = BTreeSet::new();
        self.collect_auth(id, &mut chain);
        chain
            .iter()
            .filter_map(|a| self.events.get(a))
            .map(|e| e.to_federation_value())
            .collect()
    }
}
