//! Test support (compiled for tests only): rooms built step by step out of real, hashed and
//! signed PDUs, so the rule tests exercise exactly what the server produces.
//!
//! A [`Room`] is a DAG of events. Each new event gets its `prev_events` from the caller (or
//! the current head), its state before from resolving the states after those prev events with
//! [`crate::state_res::resolve`], its `auth_events` from [`crate::auth::select_auth_events`]
//! over that state, and a strictly increasing `origin_server_ts`.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};

use crate::auth::{self, StateMap};
use crate::builder::{EventDraft, Position, build_pdu_citing};
use crate::keys::ServerSigningKey;
use crate::pdu::Pdu;
use crate::room_version::RoomVersion;
use crate::state_res;

pub const ALICE: &str = "@alice:a.test";
pub const BOB: &str = "@bob:b.test";
pub const CHARLIE: &str = "@charlie:c.test";
pub const ELLA: &str = "@ella:e.test";
pub const ZARA: &str = "@zara:z.test";

/// The DAG-based versions every rule table runs against.
pub const DAG_VERSIONS: [RoomVersion; 3] = [RoomVersion::V10, RoomVersion::V11, RoomVersion::V12];

/// The versions resolving state with v2 or v2.1 (2 to 12).
pub const STATE_RES_V2_VERSIONS: [RoomVersion; 11] = [
    RoomVersion::V2,
    RoomVersion::V3,
    RoomVersion::V4,
    RoomVersion::V5,
    RoomVersion::V6,
    RoomVersion::V7,
    RoomVersion::V8,
    RoomVersion::V9,
    RoomVersion::V10,
    RoomVersion::V11,
    RoomVersion::V12,
];

/// Every DAG-based version (1 to 12), for the tables that hold across all of them.
pub const EVERY_DAG_VERSION: [RoomVersion; 12] = [
    RoomVersion::V1,
    RoomVersion::V2,
    RoomVersion::V3,
    RoomVersion::V4,
    RoomVersion::V5,
    RoomVersion::V6,
    RoomVersion::V7,
    RoomVersion::V8,
    RoomVersion::V9,
    RoomVersion::V10,
    RoomVersion::V11,
    RoomVersion::V12,
];

pub fn uid(user: &str) -> OwnedUserId {
    OwnedUserId::try_from(user).unwrap()
}

/// A fixed signing key per server name, so every run builds byte-identical events.
pub fn server_key(server: &str) -> ServerSigningKey {
    let mut seed = [0u8; 32];
    for (i, b) in server.bytes().enumerate() {
        seed[i % 32] ^= b.wrapping_add(i as u8);
    }
    ServerSigningKey::from_seed(seed, "1").unwrap()
}

pub fn state_draft(kind: &str, state_key: &str, sender: &str, content: Value) -> EventDraft {
    EventDraft::state(kind, state_key, uid(sender), content)
}

pub fn member(sender: &str, target: &str, membership: &str) -> EventDraft {
    state_draft(
        "m.room.member",
        target,
        sender,
        json!({ "membership": membership }),
    )
}

pub fn member_with(sender: &str, target: &str, content: Value) -> EventDraft {
    state_draft("m.room.member", target, sender, content)
}

pub fn power_levels(sender: &str, content: Value) -> EventDraft {
    state_draft("m.room.power_levels", "", sender, content)
}

pub fn join_rules(sender: &str, rule: &str) -> EventDraft {
    state_draft(
        "m.room.join_rules",
        "",
        sender,
        json!({ "join_rule": rule }),
    )
}

pub fn topic(sender: &str, text: &str) -> EventDraft {
    state_draft("m.room.topic", "", sender, json!({ "topic": text }))
}

pub fn message(sender: &str, body: &str) -> EventDraft {
    EventDraft::new(
        "m.room.message",
        uid(sender),
        json!({ "msgtype": "m.text", "body": body }),
    )
}

/// Power-levels content giving `users` their levels, with `extra` top-level fields merged in.
/// Before v12 the creator (Alice) is listed at 100, as clients do; from v12 creators must not
/// be listed, their power comes from the create event.
pub fn pl_content(version: RoomVersion, users: &[(&str, i64)], extra: Value) -> Value {
    let mut map = serde_json::Map::new();
    if !version.creators_have_infinite_power() {
        map.insert(ALICE.to_owned(), json!(100));
    }
    for (user, level) in users {
        map.insert((*user).to_owned(), json!(level));
    }
    let mut content = json!({ "users": map });
    if let (Value::Object(c), Value::Object(e)) = (&mut content, extra) {
        c.extend(e);
    }
    content
}

/// A room under construction.
pub struct Room {
    pub version: RoomVersion,
    room_id: Option<OwnedRoomId>,
    events: HashMap<OwnedEventId, Arc<Pdu>>,
    labels: HashMap<String, OwnedEventId>,
    state_after: HashMap<OwnedEventId, StateMap<OwnedEventId>>,
    /// The forward extremities used by the linear helpers.
    pub head: Vec<OwnedEventId>,
    ts: u64,
}

impl Room {
    /// A room with only its create event, sent by Alice. `extra` is merged into the content.
    pub fn with_create(version: RoomVersion, extra: Value) -> Self {
        Self::with_create_in(version, extra, "!room:a.test")
    }

    /// Like [`Room::with_create`]; before v12 the room gets the ID `room_id` (from v12 the ID
    /// is the create event's hash, and `room_id` is unused).
    pub fn with_create_in(version: RoomVersion, extra: Value, room_id: &str) -> Self {
        let room_id =
            (!version.room_id_from_create_event()).then(|| OwnedRoomId::try_from(room_id).unwrap());
        let mut room = Room {
            version,
            room_id,
            events: HashMap::new(),
            labels: HashMap::new(),
            state_after: HashMap::new(),
            head: Vec::new(),
            ts: 0,
        };
        let mut content = json!({ "room_version": version.as_str() });
        if !version.create_uses_sender() {
            content["creator"] = json!(ALICE);
        }
        if let (Value::Object(c), Value::Object(e)) = (&mut content, extra) {
            c.extend(e);
        }
        let create = room.build(&state_draft("m.room.create", "", ALICE, content), &[]);
        room.room_id = Some(create.room_id().to_owned());
        room.insert("create", create);
        room
    }

    /// Create, Alice's join, power levels (Alice at 100 before v12), public join rules.
    pub fn minimal(version: RoomVersion) -> Self {
        let mut room = Self::with_create(version, json!({}));
        room.send_labeled("alice", member(ALICE, ALICE, "join"));
        room.send_labeled(
            "pl",
            power_levels(ALICE, pl_content(version, &[], json!({}))),
        );
        room.send_labeled("jr", join_rules(ALICE, "public"));
        room
    }

    /// [`Room::minimal`] plus Bob and Charlie joined (at level 0).
    pub fn base(version: RoomVersion) -> Self {
        let mut room = Self::minimal(version);
        room.send_labeled("bob", member(BOB, BOB, "join"));
        room.send_labeled("charlie", member(CHARLIE, CHARLIE, "join"));
        room
    }

    pub fn room_id(&self) -> &ruma::RoomId {
        self.room_id.as_deref().unwrap()
    }

    pub fn id(&self, label: &str) -> OwnedEventId {
        self.labels
            .get(label)
            .unwrap_or_else(|| panic!("no event labelled {label}"))
            .clone()
    }

    pub fn event(&self, label: &str) -> Arc<Pdu> {
        Arc::clone(&self.events[&self.id(label)])
    }

    pub fn get(&self, id: &EventId) -> Option<Arc<Pdu>> {
        self.events.get(id).cloned()
    }

    /// A lookup over every event of the room, as the rules want it.
    pub fn fetch(&self) -> impl Fn(&EventId) -> Option<Arc<Pdu>> + '_ {
        move |id| self.get(id)
    }

    /// The state after one event.
    pub fn state_after(&self, id: &EventId) -> StateMap<OwnedEventId> {
        self.state_after[id].clone()
    }

    /// The state before an event with these prev events: the resolution of their states after.
    pub fn state_before(&self, prevs: &[OwnedEventId]) -> StateMap<OwnedEventId> {
        let sets: Vec<StateMap<OwnedEventId>> = prevs.iter().map(|p| self.state_after(p)).collect();
        state_res::resolve(self.version, &sets, self.fetch()).unwrap()
    }

    /// The state at the current head.
    pub fn state(&self) -> StateMap<OwnedEventId> {
        self.state_before(&self.head)
    }

    /// The state at the current head, as events.
    pub fn state_pdus(&self) -> StateMap<Arc<Pdu>> {
        self.state()
            .into_iter()
            .map(|(k, id)| (k, self.events[&id].clone()))
            .collect()
    }

    fn next_ts(&mut self) -> u64 {
        self.ts += 1;
        self.ts
    }

    fn depth_after(&self, prevs: &[OwnedEventId]) -> u64 {
        prevs
            .iter()
            .map(|p| self.events[p].depth())
            .max()
            .unwrap_or(0)
            + 1
    }

    /// Builds an event on `prevs` citing exactly `auth_events` (for malformed cases).
    pub fn build_with_auth(
        &mut self,
        draft: &EventDraft,
        prevs: &[OwnedEventId],
        auth_events: Vec<OwnedEventId>,
    ) -> Pdu {
        let mut draft = draft.clone();
        draft.origin_server_ts = self.next_ts();
        let position = Position {
            version: self.version,
            room_id: self.room_id.as_deref(),
            prev_events: prevs.to_vec(),
            auth_events,
            depth: self.depth_after(prevs),
        };
        let server = draft.sender.server_name().to_string();
        let version = self.version;
        let hashes = |id: &EventId| {
            self.events
                .get(id)
                .and_then(|e| crate::pdu::reference_hash(&e.json(), version).ok())
        };
        build_pdu_citing(&draft, &position, &hashes, &server, &server_key(&server)).unwrap()
    }

    /// Builds an event on `prevs` with the auth events the selection algorithm picks from the
    /// state before it. The event is not added to the room.
    pub fn build(&mut self, draft: &EventDraft, prevs: &[OwnedEventId]) -> Pdu {
        let state = self.state_before(prevs);
        let auth_events = auth::select_auth_events(
            self.version,
            &draft.kind,
            &draft.sender,
            draft.state_key.as_deref(),
            &draft.content,
            &state,
        )
        .unwrap();
        self.build_with_auth(draft, prevs, auth_events)
    }

    /// Builds an event on the current head without adding it.
    pub fn build_next(&mut self, draft: &EventDraft) -> Pdu {
        let head = self.head.clone();
        self.build(draft, &head)
    }

    /// Adds a built event to the DAG (no auth check) and makes it the head.
    pub fn insert(&mut self, label: &str, pdu: Pdu) -> OwnedEventId {
        let id = pdu.owned_event_id();
        let mut state = self.state_before(pdu.prev_events());
        if let Some(key) = pdu.state_key() {
            state.insert((pdu.kind_str().into(), key.to_owned()), id.clone());
        }
        self.state_after.insert(id.clone(), state);
        self.events.insert(id.clone(), Arc::new(pdu));
        if !label.is_empty() {
            assert!(
                self.labels.insert(label.to_owned(), id.clone()).is_none(),
                "label {label} used twice"
            );
        }
        self.head = vec![id.clone()];
        id
    }

    /// Adds an event on the given prev events (by label) after checking that it is allowed by
    /// the state before it: how the state-resolution scenarios are written, so that every
    /// conflict they create is between events that were valid where they were sent.
    pub fn add_checked(&mut self, label: &str, draft: EventDraft, prevs: &[&str]) -> OwnedEventId {
        let prev_ids: Vec<OwnedEventId> = prevs.iter().map(|l| self.id(l)).collect();
        let pdu = self.build(&draft, &prev_ids);
        let state: StateMap<Arc<Pdu>> = self
            .state_before(&prev_ids)
            .into_iter()
            .map(|(k, id)| (k, self.events[&id].clone()))
            .collect();
        if let Err(e) = auth::check_against_state(self.version, &pdu, &state) {
            panic!("scenario event {label} rejected in v{}: {e}", self.version);
        }
        self.insert(label, pdu)
    }

    /// The label of an event, for readable assertion messages.
    pub fn label_of(&self, id: &EventId) -> String {
        self.labels
            .iter()
            .find(|(_, v)| v.as_str() == id.as_str())
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// Appends an event to the head after checking it is allowed (test setup must be valid).
    pub fn send_labeled(&mut self, label: &str, draft: EventDraft) -> OwnedEventId {
        let pdu = self.build_next(&draft);
        if let Err(e) = auth::check_against_state(self.version, &pdu, &self.state_pdus()) {
            panic!(
                "setup event {} {:?} by {} rejected in v{}: {e}",
                draft.kind, draft.state_key, draft.sender, self.version
            );
        }
        self.insert(label, pdu)
    }

    pub fn send(&mut self, draft: EventDraft) -> OwnedEventId {
        self.send_labeled("", draft)
    }

    /// Runs both state-dependent checks on `pdu` (against the current state, and against its
    /// own auth events) and returns their verdicts.
    pub fn verdicts(&self, pdu: &Pdu) -> (Result<(), String>, Result<(), String>) {
        let against_state =
            auth::check_against_state(self.version, pdu, &self.state_pdus()).map_err(|e| e.0);
        let against_auth =
            auth::check_against_auth_events(self.version, pdu, self.fetch()).map_err(|e| e.0);
        (against_state, against_auth)
    }
}
