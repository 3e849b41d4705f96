//! Simplified sliding sync (MSC4186), the sync Element X and matrix-rust-sdk speak.
//!
//! A client keeps one or more **connections** (`conn_id`: matrix-rust-sdk opens
//! `room-list` for rooms and `encryption` for to-device and keys). Each request names the
//! `pos` of the last response it received and says, in full every time (nothing is
//! sticky), what it wants:
//!
//! * **lists**: the user's rooms filtered (`is_dm`, `is_encrypted`, `is_invite`,
//!   `room_types`, `not_room_types`, `spaces`), sorted by recency (`bump_stamp`: the newest
//!   message-like event, [`weft_protocol::sliding::BUMP_EVENT_TYPES`]), and cut by
//!   `ranges`; each answers its `count` and the room IDs in its windows;
//! * **room subscriptions**: rooms by ID, whatever the lists say;
//! * per room a `timeline_limit` and a `required_state` (`[type, state_key]` pairs with
//!   `*`, `$ME` and `$LAZY`); a room in several lists or subscribed gets the union;
//! * **extensions**: `to_device`, `e2ee` (device lists, one-time key counts, fallback key
//!   types), `account_data`, `receipts`, `typing`.
//!
//! The answer is what changed since `pos` for the rooms in view: a room the connection has
//! not been sent (or whose configuration changed) comes **in full** (`initial`, its newest
//! `timeline_limit` events, its required state now); a room sent before comes as a delta
//! from where its last delivery stopped (new events, `limited` when more came than the
//! limit, state changes that the timeline does not carry, `num_live`). Per connection and
//! `pos`, [`connections`] remembers which rooms were sent up to which stream position.
//! A partial-state room (`rooms::partial_state`) that got its full state since is sent
//! again: the members it learned are outliers recorded at the completion's own stream
//! position (`partial_state_completed`), not timeline events, so they go into its
//! `required_state` delta (those the room's `required_state` asks for), as `/sync` puts
//! them in its state section.
//!
//! **Cost.** Building the room list takes a fixed handful of batched queries whatever the
//! number of rooms ([`crate::storage::sliding`]): memberships, bump stamps, encryption and
//! create events, member counts, and on incremental requests which rooms have new events.
//! Only the rooms actually sent cost per-room reads (their timeline and state). History
//! visibility applies per event as in `/sync` ([`crate::sync::visibility`]).
//!
//! **Long-polling** is `/sync`'s: subscribe to the user's wake-up channel, read up to the
//! notifier's frontier, compute, and if nothing changed wait for a wake-up (or `timeout`)
//! and compute again. A list whose windows changed (a room moved up) counts as a change.

pub mod connections;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value, json};
use weft_protocol::sliding::{self as rules, ListFilters, RequiredState, RoomFacts};

use crate::rooms::typing::Typing;
use crate::rooms::view::{self, Versions, Viewer};
use crate::storage::events::EventRow;
use crate::storage::rooms::MembershipRow;
use crate::storage::{AnyConnection, StorageResult, account, events, rooms, sliding, state};
use crate::sync::visibility;
use crate::sync::{SyncToken, unread_counts};
use connections::{PosState, Sent};

/// Most events per room timeline in one response.
pub const MAX_TIMELINE_LIMIT: u64 = 100;
/// Most lists and room subscriptions in one request.
pub const MAX_LISTS: usize = 64;
pub const MAX_SUBSCRIPTIONS: usize = 1000;
/// Most to-device messages in one response.
pub const TO_DEVICE_LIMIT: i64 = 100;
/// Most state events sent for one room in one response.
const MAX_STATE_EVENTS: i64 = 2000;
/// Most heroes computed for an unnamed room.
const MAX_HEROES: usize = 5;

/// What a room is shown with: the union over the lists and subscriptions naming it.
#[derive(Debug, Clone, Default)]
pub struct RoomConfig {
    pub timeline_limit: u64,
    pub required_state: RequiredState,
}

impl RoomConfig {
    fn merge(&mut self, other: &RoomConfig) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        self.required_state = self.required_state.union(&other.required_state);
    }

    fn fingerprint(&self) -> String {
        format!(
            "{}|{}",
            self.timeline_limit,
            self.required_state.fingerprint()
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub ranges: Vec<(u64, u64)>,
    pub config: RoomConfig,
    pub filters: ListFilters,
}

/// Which rooms an extension covers: those of the named lists (`None`: all lists) and of
/// the named subscriptions (`None` or `*`: all).
#[derive(Debug, Clone, Default)]
pub struct ExtensionScope {
    pub enabled: bool,
    pub lists: Option<Vec<String>>,
    pub rooms: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default)]
pub struct Extensions {
    pub to_device: bool,
    pub to_device_since: Option<i64>,
    pub to_device_limit: i64,
    pub e2ee: bool,
    pub account_data: ExtensionScope,
    pub receipts: ExtensionScope,
    pub typing: ExtensionScope,
}

/// A parsed request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub lists: BTreeMap<String, ListRequest>,
    pub subscriptions: BTreeMap<String, RoomConfig>,
    pub extensions: Extensions,
}

/// Everything [`compute`] needs besides the connection.
pub struct Computation<'a> {
    pub viewer: &'a Viewer,
    pub request: &'a Request,
    pub prev: &'a PosState,
    pub upto: i64,
    pub typing_now: i64,
    pub typing: &'a Typing,
}

/// A computed answer (without `pos`), the state to remember for its `pos`, and whether it
/// carries anything new for a waiting client.
pub struct Answer {
    pub body: Value,
    pub state: PosState,
    pub has_changes: bool,
}

/// One of the user's rooms as the list sees it.
struct Candidate {
    m: MembershipRow,
    bump: i64,
    facts: RoomFacts,
}

/// Stripped state of an invite or knock, as stored with the membership, plus the
/// membership event itself.
fn stripped_state(
    conn: &mut AnyConnection,
    m: &MembershipRow,
    versions: &mut Versions,
) -> StorageResult<Vec<Value>> {
    let mut stripped: Vec<Value> = m
        .invite_state
        .as_deref()
        .and_then(|s| serde_json::from_str::<Vec<Value>>(s).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.get("type").is_some_and(|t| t.is_string()))
        .map(|e| {
            json!({
                "type": e["type"],
                "state_key": e.get("state_key").cloned().unwrap_or(json!("")),
                "sender": e.get("sender").cloned().unwrap_or(json!("")),
                "content": e.get("content").cloned().unwrap_or(json!({})),
            })
        })
        .collect();
    if let Some(row) = events::get_event(conn, &m.event_id)? {
        let version = versions.get(conn, &m.room_id)?;
        let pdu = view::pdu_of(&row, version)?;
        stripped.push(weft_protocol::client_event::stripped_state(&pdu));
    }
    Ok(stripped)
}

/// Rooms named in the user's `m.direct` account data.
fn direct_rooms(conn: &mut AnyConnection, user: &str) -> StorageResult<HashSet<String>> {
    let Some(json) = account::get_account_data(conn, user, "", "m.direct")? else {
        return Ok(HashSet::new());
    };
    let v: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
    Ok(v.as_object()
        .map(|o| {
            o.values()
                .filter_map(|rooms| rooms.as_array())
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// The content of a stored event.
fn content_of(row: &EventRow) -> Value {
    serde_json::from_str::<Value>(&row.json)
        .ok()
        .and_then(|v| v.get("content").cloned())
        .unwrap_or(json!({}))
}

/// Builds the facts (filters, order) of every room the lists may show, in a few batched
/// queries.
fn candidates(
    conn: &mut AnyConnection,
    c: &Computation<'_>,
    memberships: Vec<MembershipRow>,
    versions: &mut Versions,
) -> StorageResult<Vec<Candidate>> {
    let since = c.prev.stream;
    let user = c.viewer.user_id.as_str();
    let wanted: Vec<MembershipRow> = memberships
        .into_iter()
        .filter(|m| m.stream_ordering <= c.upto)
        .filter(|m| match m.membership.as_str() {
            "join" | "invite" | "knock" => !m.forgotten,
            // Rooms left since the last response, once, so the client can drop them.
            "leave" | "ban" => since.is_some_and(|s| m.stream_ordering > s),
            _ => false,
        })
        .collect();
    let joined: Vec<String> = wanted
        .iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id.clone())
        .collect();
    let bumps = sliding::latest_of_types(conn, &joined, rules::BUMP_EVENT_TYPES, c.upto)?;
    let typed =
        sliding::current_state_of_types(conn, &joined, &["m.room.encryption", "m.room.create"])?;
    let mut encrypted: HashSet<String> = HashSet::new();
    let mut creates: Vec<String> = Vec::new();
    let mut create_of: HashMap<String, String> = HashMap::new();
    for (room, kind, _, event_id) in typed {
        if kind == "m.room.encryption" {
            encrypted.insert(room);
        } else {
            create_of.insert(event_id.clone(), room);
            creates.push(event_id);
        }
    }
    // Room types: only when a list filters on them (the create events must be read).
    let needs_types = c
        .request
        .lists
        .values()
        .any(|l| l.filters.room_types.is_some() || !l.filters.not_room_types.is_empty());
    let mut room_type: HashMap<String, String> = HashMap::new();
    if needs_types {
        for row in events::get_events(conn, &creates)? {
            if let (Some(room), Some(t)) = (
                create_of.get(&row.event_id),
                content_of(&row).get("type").and_then(|t| t.as_str()),
            ) {
                room_type.insert(room.clone(), t.to_owned());
            }
        }
    }
    // Space children: only for the spaces the lists name.
    let spaces: Vec<String> = c
        .request
        .lists
        .values()
        .filter_map(|l| l.filters.spaces.clone())
        .flatten()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut parents: HashMap<String, Vec<String>> = HashMap::new();
    if !spaces.is_empty() {
        let children = sliding::current_state_of_types(conn, &spaces, &["m.space.child"])?;
        let ids: Vec<String> = children.iter().map(|(_, _, _, e)| e.clone()).collect();
        let live: HashSet<String> = events::get_events(conn, &ids)?
            .into_iter()
            .filter(|r| content_of(r).get("via").is_some_and(|v| v.is_array()))
            .map(|r| r.event_id)
            .collect();
        for (space, _, child, event_id) in children {
            if live.contains(&event_id) {
                parents.entry(child).or_default().push(space);
            }
        }
    }
    let direct = direct_rooms(conn, user)?;
    let mut out = Vec::with_capacity(wanted.len());
    for m in wanted {
        let mut facts = RoomFacts {
            membership: m.membership.clone(),
            is_dm: direct.contains(&m.room_id),
            is_encrypted: encrypted.contains(&m.room_id),
            room_type: room_type.get(&m.room_id).cloned(),
            parent_spaces: parents.remove(&m.room_id).unwrap_or_default(),
        };
        let bump = if m.membership == "join" {
            bumps.get(&m.room_id).copied().unwrap_or(m.stream_ordering)
        } else {
            m.stream_ordering
        };
        if matches!(m.membership.as_str(), "invite" | "knock") {
            // What we know of a room we are not in: its stripped state.
            for e in stripped_state(conn, &m, versions)? {
                match e["type"].as_str() {
                    Some("m.room.encryption") => facts.is_encrypted = true,
                    Some("m.room.create") => {
                        facts.room_type = e["content"]["type"].as_str().map(str::to_owned)
                    }
                    Some("m.room.member")
                        if e["state_key"] == user && e["content"]["is_direct"] == true =>
                    {
                        facts.is_dm = true
                    }
                    _ => {}
                }
            }
        }
        out.push(Candidate { m, bump, facts });
    }
    Ok(out)
}

/// Client events of the room's state events that `config` asks for, oldest first.
fn wanted_state(
    conn: &mut AnyConnection,
    room_id: &str,
    ids: &state::StateIds,
    config: &RoomConfig,
    me: &str,
    lazy: &HashSet<String>,
) -> StorageResult<Vec<EventRow>> {
    let chosen: Vec<String> = ids
        .iter()
        .filter(|((t, k), _)| config.required_state.wants(t, k, me, lazy))
        .map(|(_, id)| id.clone())
        .take(MAX_STATE_EVENTS as usize)
        .collect();
    let mut rows = events::get_events(conn, &chosen)?;
    rows.retain(|r| r.room_id == room_id);
    rows.sort_by_key(|r| r.stream_ordering.unwrap_or(i64::MIN));
    Ok(rows)
}

/// The `name`, `avatar` and (for unnamed rooms) `heroes` of a room from a state map.
fn naming(
    conn: &mut AnyConnection,
    room_id: &str,
    ids: &state::StateIds,
    me: &str,
) -> StorageResult<Map<String, Value>> {
    let mut out = Map::new();
    let get = |conn: &mut AnyConnection, t: &str| -> StorageResult<Option<Value>> {
        match ids.get(&(t.to_owned(), String::new())) {
            Some(id) => Ok(events::get_event(conn, id)?.map(|r| content_of(&r))),
            None => Ok(None),
        }
    };
    let name = get(conn, "m.room.name")?
        .and_then(|c| c.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .filter(|n| !n.is_empty());
    if let Some(url) = get(conn, "m.room.avatar")?
        .and_then(|c| c.get("url").and_then(|u| u.as_str()).map(str::to_owned))
    {
        out.insert("avatar".into(), json!(url));
    }
    match name {
        Some(n) => {
            out.insert("name".into(), json!(n));
        }
        None => {
            let mut members: Vec<String> = rooms::members_with(conn, room_id, "join")?;
            members.extend(rooms::members_with(conn, room_id, "invite")?);
            members.retain(|u| u != me);
            members.sort();
            members.dedup();
            let mut heroes = Vec::new();
            for u in members.into_iter().take(MAX_HEROES) {
                let mut hero = json!({"user_id": u});
                if let Some(id) = ids.get(&("m.room.member".to_owned(), u.clone()))
                    && let Some(row) = events::get_event(conn, id)?
                {
                    let c = content_of(&row);
                    if let Some(n) = c.get("displayname").filter(|n| n.is_string()) {
                        hero["displayname"] = n.clone();
                    }
                    if let Some(a) = c.get("avatar_url").filter(|a| a.is_string()) {
                        hero["avatar_url"] = a.clone();
                    }
                }
                heroes.push(hero);
            }
            if !heroes.is_empty() {
                out.insert("heroes".into(), Value::Array(heroes));
            }
        }
    }
    Ok(out)
}

/// The rooms an extension covers.
fn scope_rooms(
    scope: &ExtensionScope,
    list_rooms: &BTreeMap<String, Vec<String>>,
    subscribed: &[String],
) -> HashSet<String> {
    let mut out = HashSet::new();
    for (name, ids) in list_rooms {
        if scope.lists.as_ref().is_none_or(|l| l.contains(name)) {
            out.extend(ids.iter().cloned());
        }
    }
    for room in subscribed {
        if scope
            .rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == "*" || x == room))
        {
            out.insert(room.clone());
        }
    }
    out
}

fn receipts_event(rows: &[account::ReceiptRow]) -> Option<Value> {
    if rows.is_empty() {
        return None;
    }
    let mut content: Map<String, Value> = Map::new();
    for r in rows {
        let by_event = content
            .entry(r.event_id.clone())
            .or_insert_with(|| json!({}));
        let mut receipt = json!({"ts": r.ts});
        if !r.thread_id.is_empty() {
            receipt["thread_id"] = json!(r.thread_id);
        }
        by_event[&r.receipt_type][&r.user_id] = receipt;
    }
    Some(json!({"type": "m.receipt", "content": content}))
}

/// Computes the answer over `(prev.stream, upto]` inside one database read.
pub fn compute(conn: &mut AnyConnection, c: &Computation<'_>) -> StorageResult<Answer> {
    let user = c.viewer.user_id.as_str();
    let since = c.prev.stream;
    let after = since.unwrap_or(i64::MIN);
    let mut versions = Versions::default();
    let mut has_changes = false;

    let memberships = rooms::rooms_for_user_since(conn, user, since)?;
    let by_room: HashMap<String, MembershipRow> = memberships
        .iter()
        .map(|m| (m.room_id.clone(), m.clone()))
        .collect();
    let mut cands = candidates(conn, c, memberships, &mut versions)?;
    rules::sort_by_recency(&mut cands, |r| (r.bump, r.m.room_id.as_str()));
    let bump_of: HashMap<&str, i64> = cands
        .iter()
        .map(|r| (r.m.room_id.as_str(), r.bump))
        .collect();
    let facts_of: HashMap<&str, &RoomFacts> = cands
        .iter()
        .map(|r| (r.m.room_id.as_str(), &r.facts))
        .collect();

    // Lists: filter, window, and the configuration of every room in view.
    let mut in_view: BTreeMap<String, RoomConfig> = BTreeMap::new();
    let mut lists_body = Map::new();
    let mut lists_state = BTreeMap::new();
    let mut list_rooms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, list) in &c.request.lists {
        let kept: Vec<&Candidate> = cands
            .iter()
            .filter(|r| list.filters.matches(&r.facts))
            .collect();
        let mut ops = Vec::new();
        let mut ids_in_view = Vec::new();
        for (start, end) in rules::windows(&list.ranges, kept.len()) {
            let ids: Vec<String> = kept[start..=end]
                .iter()
                .map(|r| r.m.room_id.clone())
                .collect();
            for id in &ids {
                in_view.entry(id.clone()).or_default().merge(&list.config);
            }
            ids_in_view.extend(ids.iter().cloned());
            ops.push(json!({"op": "SYNC", "range": [start, end], "room_ids": ids}));
        }
        let snapshot = (kept.len(), ids_in_view.clone());
        if c.prev.lists.get(name) != Some(&snapshot) {
            has_changes = true;
        }
        lists_body.insert(name.clone(), json!({"count": kept.len(), "ops": ops}));
        lists_state.insert(name.clone(), snapshot);
        list_rooms.insert(name.clone(), ids_in_view);
    }
    let mut subscribed: Vec<String> = Vec::new();
    for (room, config) in &c.request.subscriptions {
        // Only rooms the user has (or had) a membership in.
        if by_room
            .get(room)
            .is_some_and(|m| !m.forgotten || m.stream_ordering > after)
        {
            in_view.entry(room.clone()).or_default().merge(config);
            subscribed.push(room.clone());
        }
    }

    // Which rooms in view changed since the last response.
    let view_ids: Vec<String> = in_view.keys().cloned().collect();
    let changed: HashSet<String> = match since {
        Some(s) => sliding::rooms_with_events(conn, &view_ids, s, c.upto)?,
        None => HashSet::new(),
    };
    // Rooms whose unread counts changed on their own (push rows written behind the commit,
    // the user's receipts): sent again with the new counts. Rooms were last sent at different
    // positions, so the query starts at the oldest and each room's latest change is compared
    // with that room's own position below (against the oldest, a count written once would
    // make every later long-poll answer at once, for ever).
    let recount_from = c.prev.rooms.values().map(|p| p.upto).chain(since).min();
    let count_changes: HashMap<String, i64> = match recount_from {
        Some(s) => crate::storage::push::rooms_with_count_changes(conn, user, s, c.upto)?,
        None => HashMap::new(),
    };
    let recounted =
        |room: &str, sent_upto: i64| count_changes.get(room).is_some_and(|p| *p > sent_upto);
    // Partial-state rooms that got their full state since (each room compared with its own
    // position, as above): the members learned are no timeline events, so they are sent as
    // state changes of their own.
    let completed: HashMap<String, i64> = match recount_from {
        Some(s) => crate::storage::partial_state::completed_between(conn, s, c.upto)?,
        None => HashMap::new(),
    };
    let completed_after =
        |room: &str, sent_upto: i64| completed.get(room).copied().filter(|at| *at > sent_upto);
    let counts = sliding::member_counts(conn, &view_ids)?;

    let mut rooms_body = Map::new();
    let mut new_rooms = c.prev.rooms.clone();
    let mut initial_rooms: HashSet<String> = HashSet::new();
    let mut timeline_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for (room_id, config) in &in_view {
        let Some(m) = by_room.get(room_id) else {
            continue;
        };
        let fingerprint = config.fingerprint();
        let prev = c
            .prev
            .rooms
            .get(room_id)
            .filter(|p| p.fingerprint == fingerprint);
        let initial = prev.is_none();
        let from = prev.map(|p| p.upto);
        let membership_changed = since.is_some_and(|s| m.stream_ordering > s);
        let needs = match from {
            None => true,
            Some(f) if f < after => {
                events::has_events_in_range(conn, room_id, f, c.upto)?
                    || membership_changed
                    || recounted(room_id, f)
                    || completed_after(room_id, f).is_some()
            }
            Some(f) => {
                changed.contains(room_id)
                    || membership_changed
                    || recounted(room_id, f)
                    || completed_after(room_id, f).is_some()
            }
        };
        if !needs {
            continue;
        }
        has_changes = true;
        let mut room = Map::new();
        if initial {
            room.insert("initial".into(), json!(true));
            initial_rooms.insert(room_id.clone());
        }
        if let Some(b) = bump_of.get(room_id.as_str()) {
            room.insert("bump_stamp".into(), json!((*b).max(0)));
        }
        if let Some(f) = facts_of.get(room_id.as_str()) {
            room.insert("is_dm".into(), json!(f.is_dm));
        }
        new_rooms.insert(
            room_id.clone(),
            Sent {
                upto: c.upto,
                fingerprint,
            },
        );
        if matches!(m.membership.as_str(), "invite" | "knock") {
            let stripped = stripped_state(conn, m, &mut versions)?;
            if let Some(n) = stripped.iter().find_map(|e| {
                (e["type"] == "m.room.name")
                    .then(|| e["content"]["name"].as_str().map(str::to_owned))
                    .flatten()
            }) {
                room.insert("name".into(), json!(n));
            }
            room.insert("invite_state".into(), json!(stripped));
            rooms_body.insert(room_id.clone(), Value::Object(room));
            continue;
        }
        // Joined, or left since the last response (then everything stops at the leave).
        let left = m.membership != "join";
        let ceiling = if left { m.stream_ordering } else { c.upto };
        let version = versions.get(conn, room_id)?;
        let ranges = visibility::user_ranges(conn, room_id, user, ceiling)?;
        let limit = config.timeline_limit as i64;
        let lower = from.unwrap_or(i64::MIN);
        let mut rows =
            visibility::visible_timeline(conn, room_id, &ranges, lower, ceiling, limit + 1, true)?;
        let limited = rows.len() as i64 > limit;
        if limited {
            rows.remove(0);
        }
        if left
            && !rows.iter().any(|r| r.event_id == m.event_id)
            && let Some(r) = events::get_event(conn, &m.event_id)?
        {
            rows.push(r);
        }
        let prev_batch = SyncToken::at(
            rows.first()
                .and_then(|r| r.stream_ordering)
                .map(|s| s - 1)
                .unwrap_or(ceiling),
        );
        let num_live = match since {
            Some(s) => rows
                .iter()
                .filter(|r| r.stream_ordering.is_some_and(|o| o > s))
                .count(),
            None => 0,
        };
        let ids_in_timeline: HashSet<String> = rows.iter().map(|r| r.event_id.clone()).collect();
        let lazy: HashSet<String> = if config.required_state.lazy_members() {
            rows.iter().map(|r| r.sender.clone()).collect()
        } else {
            HashSet::new()
        };
        let state_now = if left {
            visibility::state_after(conn, &m.event_id)?.unwrap_or_default()
        } else {
            state::current_state(conn, room_id)?
        };
        let state_rows = match from {
            // In full: everything asked for, even what the timeline also carries.
            None => wanted_state(conn, room_id, &state_now, config, user, &lazy)?,
            Some(f) => {
                // Clients read a room's state from `required_state` alone (matrix-rust-sdk
                // ignores state events in the timeline), so what changed goes here even
                // when the timeline carries it too.
                let mut changed_state: Vec<EventRow> =
                    sliding::state_events_in_range(conn, room_id, f, ceiling, MAX_STATE_EVENTS)?
                        .into_iter()
                        .filter(|r| {
                            r.state_key.as_deref().is_some_and(|k| {
                                config.required_state.wants(&r.event_type, k, user, &lazy)
                            })
                        })
                        .collect();
                // Lazy members of the new timeline's senders, when not carried already.
                let have: HashSet<String> =
                    changed_state.iter().map(|r| r.event_id.clone()).collect();
                let lazy_ids: Vec<String> = lazy
                    .iter()
                    .filter_map(|u| state_now.get(&("m.room.member".to_owned(), u.clone())))
                    .filter(|id| !have.contains(*id))
                    .cloned()
                    .collect();
                changed_state.extend(events::get_events(conn, &lazy_ids)?);
                // The members a partial-state room learned when its full state came in
                // (recorded at the completion's own position; outliers, so no range above
                // finds them).
                if let Some(at) = completed_after(room_id, f).filter(|at| *at <= ceiling) {
                    let have: HashSet<String> =
                        changed_state.iter().map(|r| r.event_id.clone()).collect();
                    let learned: Vec<String> =
                        crate::storage::partial_state::memberships_at(conn, room_id, at)?
                            .into_iter()
                            .filter(|id| !have.contains(id))
                            .collect();
                    let mut rows = events::get_events(conn, &learned)?;
                    rows.retain(|r| {
                        r.room_id == *room_id
                            && r.stream_ordering.is_none()
                            && r.state_key.as_deref().is_some_and(|k| {
                                config.required_state.wants(&r.event_type, k, user, &lazy)
                            })
                    });
                    rows.truncate(MAX_STATE_EVENTS as usize);
                    changed_state.extend(rows);
                }
                changed_state.sort_by_key(|r| r.stream_ordering.unwrap_or(i64::MIN));
                changed_state
            }
        };
        let timeline = view::client_events(conn, &rows, version, c.viewer)?;
        let required_state = view::client_events(conn, &state_rows, version, c.viewer)?;
        for (k, v) in naming(conn, room_id, &state_now, user)? {
            room.insert(k, v);
        }
        let joined = counts
            .get(&(room_id.clone(), "join".to_owned()))
            .copied()
            .unwrap_or(0);
        let invited = counts
            .get(&(room_id.clone(), "invite".to_owned()))
            .copied()
            .unwrap_or(0);
        let (notifications, highlights) = unread_counts(conn, room_id, user)?;
        room.insert("timeline".into(), Value::Array(timeline));
        room.insert("required_state".into(), Value::Array(required_state));
        room.insert("prev_batch".into(), json!(prev_batch));
        room.insert("limited".into(), json!(limited));
        room.insert("num_live".into(), json!(num_live));
        room.insert("joined_count".into(), json!(joined));
        room.insert("invited_count".into(), json!(invited));
        room.insert("notification_count".into(), json!(notifications));
        room.insert("highlight_count".into(), json!(highlights));
        timeline_ids.insert(room_id.clone(), ids_in_timeline);
        rooms_body.insert(room_id.clone(), Value::Object(room));
    }

    // Extensions.
    let ext = &c.request.extensions;
    let mut extensions = Map::new();
    if ext.to_device {
        let td_after = ext.to_device_since.unwrap_or(i64::MIN);
        let limit = ext.to_device_limit.clamp(1, TO_DEVICE_LIMIT);
        let rows = crate::storage::e2ee::to_device_pending(
            conn,
            user,
            &c.viewer.device_id,
            td_after,
            c.upto,
            limit,
        )?;
        let next = match rows.last() {
            Some(last) if rows.len() as i64 >= limit => last.stream_id,
            _ => c.upto.max(td_after),
        };
        if !rows.is_empty() {
            has_changes = true;
        }
        let evs: Vec<Value> = rows
            .iter()
            .map(crate::e2ee::to_device::sync_event)
            .collect();
        extensions.insert(
            "to_device".into(),
            json!({"next_batch": next.to_string(), "events": evs}),
        );
    }
    if ext.e2ee {
        let (changed_users, left_users) = match since {
            Some(s) => crate::e2ee::device_lists::changes(conn, user, s, c.upto)?,
            None => (Vec::new(), Vec::new()),
        };
        if !changed_users.is_empty() || !left_users.is_empty() {
            has_changes = true;
        }
        let counts = crate::e2ee::keys::one_time_key_counts(conn, user, &c.viewer.device_id)?;
        let fallback =
            crate::storage::e2ee::unused_fallback_key_types(conn, user, &c.viewer.device_id)?;
        extensions.insert(
            "e2ee".into(),
            json!({
                "device_lists": {"changed": changed_users, "left": left_users},
                "device_one_time_keys_count": counts,
                "device_unused_fallback_key_types": fallback,
            }),
        );
    }
    if ext.account_data.enabled {
        let scope = scope_rooms(&ext.account_data, &list_rooms, &subscribed);
        let recent = account::account_data_since(conn, user, after, c.upto)?;
        let all = if initial_rooms.iter().any(|r| scope.contains(r)) && since.is_some() {
            account::account_data_since(conn, user, i64::MIN, c.upto)?
        } else {
            Vec::new()
        };
        let mut global = Vec::new();
        let mut per_room: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let as_event = |t: &str, content: &str| json!({"type": t, "content": serde_json::from_str::<Value>(content).unwrap_or(json!({}))});
        for (room, t, content) in &recent {
            if room.is_empty() {
                global.push(as_event(t, content));
            } else if scope.contains(room) && !(since.is_some() && initial_rooms.contains(room)) {
                per_room
                    .entry(room.clone())
                    .or_default()
                    .push(as_event(t, content));
            }
        }
        for (room, t, content) in all
            .iter()
            .filter(|(room, _, _)| initial_rooms.contains(room) && scope.contains(room))
        {
            per_room
                .entry(room.clone())
                .or_default()
                .push(as_event(t, content));
        }
        if !global.is_empty() || !per_room.is_empty() {
            has_changes = true;
        }
        extensions.insert(
            "account_data".into(),
            json!({"global": global, "rooms": per_room}),
        );
    }
    if ext.receipts.enabled {
        let scope = scope_rooms(&ext.receipts, &list_rooms, &subscribed);
        let mut per_room = Map::new();
        for room in &scope {
            let fresh = initial_rooms.contains(room);
            let mut rows =
                account::receipts_since(conn, room, if fresh { i64::MIN } else { after }, c.upto)?;
            if fresh {
                // A room sent in full: the receipts on what it shows, and the user's own.
                let shown = timeline_ids.get(room);
                rows.retain(|r| {
                    r.user_id == user || shown.is_some_and(|s| s.contains(&r.event_id))
                });
            }
            // Private receipts are their owner's alone.
            rows.retain(|r| r.receipt_type != "m.read.private" || r.user_id == user);
            if let Some(ev) = receipts_event(&rows) {
                per_room.insert(room.clone(), ev);
            }
        }
        if !per_room.is_empty() {
            has_changes = true;
        }
        extensions.insert("receipts".into(), json!({"rooms": per_room}));
    }
    if ext.typing.enabled {
        let scope = scope_rooms(&ext.typing, &list_rooms, &subscribed);
        let mut per_room = Map::new();
        for room in &scope {
            let since_typing = if initial_rooms.contains(room) || since.is_none() {
                i64::MIN
            } else {
                c.prev.typing
            };
            if let Some(users) = c.typing.get(room, since_typing) {
                if since_typing == i64::MIN && users.is_empty() {
                    continue;
                }
                per_room.insert(
                    room.clone(),
                    json!({"type": "m.typing", "content": {"user_ids": users}}),
                );
            }
        }
        if !per_room.is_empty() {
            has_changes = true;
        }
        extensions.insert("typing".into(), json!({"rooms": per_room}));
    }

    let body = json!({
        "lists": lists_body,
        "rooms": rooms_body,
        "extensions": extensions,
    });
    Ok(Answer {
        body,
        state: PosState {
            stream: Some(c.upto),
            typing: c.typing_now,
            rooms: new_rooms,
            lists: lists_state,
        },
        has_changes,
    })
}

/// Parses a request body (the dialect matrix-rust-sdk and Synapse 1.163 speak, and the
/// newer MSC names where they differ). Bad shapes are `Err` with a message for a 400.
pub fn parse_request(body: &Value) -> Result<Request, String> {
    let obj = body.as_object().ok_or("the body must be a JSON object")?;
    let mut req = Request::default();
    if let Some(lists) = obj.get("lists").filter(|l| !l.is_null()) {
        let lists = lists.as_object().ok_or("lists must be an object")?;
        if lists.len() > MAX_LISTS {
            return Err(format!("at most {MAX_LISTS} lists"));
        }
        for (name, l) in lists {
            req.lists.insert(name.clone(), parse_list(l)?);
        }
    }
    if let Some(subs) = obj.get("room_subscriptions").filter(|l| !l.is_null()) {
        let subs = subs
            .as_object()
            .ok_or("room_subscriptions must be an object")?;
        if subs.len() > MAX_SUBSCRIPTIONS {
            return Err(format!("at most {MAX_SUBSCRIPTIONS} room subscriptions"));
        }
        for (room, config) in subs {
            if ruma::RoomId::parse(room.as_str()).is_err() {
                return Err(format!("invalid room ID in room_subscriptions: {room}"));
            }
            req.subscriptions
                .insert(room.clone(), parse_room_config(config)?);
        }
    }
    if let Some(ext) = obj.get("extensions").filter(|e| !e.is_null()) {
        req.extensions = parse_extensions(ext)?;
    }
    Ok(req)
}

fn parse_range(v: &Value) -> Result<(u64, u64), String> {
    let a = v
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or("a range is [start, end]")?;
    let start = a[0]
        .as_u64()
        .ok_or("range bounds are non-negative integers")?;
    let end = a[1]
        .as_u64()
        .ok_or("range bounds are non-negative integers")?;
    Ok((start, end))
}

fn parse_list(v: &Value) -> Result<ListRequest, String> {
    let obj = v.as_object().ok_or("a list must be an object")?;
    let mut ranges = Vec::new();
    if let Some(r) = obj.get("ranges").filter(|r| !r.is_null()) {
        for range in r.as_array().ok_or("ranges must be a list")? {
            ranges.push(parse_range(range)?);
        }
    }
    if let Some(r) = obj.get("range").filter(|r| !r.is_null()) {
        ranges.push(parse_range(r)?);
    }
    let filters = match obj.get("filters").filter(|f| !f.is_null()) {
        Some(f) => parse_filters(f)?,
        None => ListFilters::default(),
    };
    Ok(ListRequest {
        ranges,
        config: parse_room_config(v)?,
        filters,
    })
}

fn opt_bool(obj: &Map<String, Value>, keys: &[&str]) -> Result<Option<bool>, String> {
    for k in keys {
        match obj.get(*k) {
            None | Some(Value::Null) => continue,
            Some(Value::Bool(b)) => return Ok(Some(*b)),
            Some(_) => return Err(format!("{k} must be a boolean")),
        }
    }
    Ok(None)
}

fn room_type_list(v: &Value, key: &str) -> Result<Vec<Option<String>>, String> {
    v.as_array()
        .ok_or(format!("{key} must be a list"))?
        .iter()
        .map(|t| match t {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(format!("{key} holds strings or null")),
        })
        .collect()
}

fn parse_filters(v: &Value) -> Result<ListFilters, String> {
    let obj = v.as_object().ok_or("filters must be an object")?;
    let mut f = ListFilters {
        is_dm: opt_bool(obj, &["is_dm"])?,
        is_encrypted: opt_bool(obj, &["is_encrypted"])?,
        is_invite: opt_bool(obj, &["is_invite", "is_invited"])?,
        ..Default::default()
    };
    if let Some(t) = obj.get("room_types").filter(|t| !t.is_null()) {
        f.room_types = Some(room_type_list(t, "room_types")?);
    }
    if let Some(t) = obj.get("not_room_types").filter(|t| !t.is_null()) {
        f.not_room_types = room_type_list(t, "not_room_types")?;
    }
    if let Some(s) = obj.get("spaces").filter(|s| !s.is_null()) {
        let spaces: Vec<String> = s
            .as_array()
            .ok_or("spaces must be a list")?
            .iter()
            .map(|x| x.as_str().map(str::to_owned).ok_or("spaces holds room IDs"))
            .collect::<Result<_, _>>()?;
        f.spaces = Some(spaces);
    }
    Ok(f)
}

fn parse_room_config(v: &Value) -> Result<RoomConfig, String> {
    let obj = v
        .as_object()
        .ok_or("a room configuration must be an object")?;
    let timeline_limit = match obj.get("timeline_limit") {
        None | Some(Value::Null) => 0,
        Some(t) => t
            .as_u64()
            .ok_or("timeline_limit must be a non-negative integer")?,
    }
    .min(MAX_TIMELINE_LIMIT);
    let mut pairs: Vec<(String, String)> = Vec::new();
    match obj.get("required_state") {
        None | Some(Value::Null) => {}
        // `[[type, state_key], ...]`
        Some(Value::Array(a)) => {
            for p in a {
                let pair = p
                    .as_array()
                    .filter(|p| p.len() == 2)
                    .and_then(|p| Some((p[0].as_str()?.to_owned(), p[1].as_str()?.to_owned())))
                    .ok_or("required_state holds [type, state_key] pairs")?;
                pairs.push(pair);
            }
        }
        // The newer MSC form: `{include: [{type, state_key}], lazy_members: bool}`.
        Some(Value::Object(o)) => {
            for p in o
                .get("include")
                .and_then(|i| i.as_array())
                .into_iter()
                .flatten()
            {
                let t = p.get("type").and_then(|t| t.as_str()).unwrap_or("*");
                let k = p.get("state_key").and_then(|k| k.as_str()).unwrap_or("*");
                pairs.push((t.to_owned(), k.to_owned()));
            }
            if o.get("lazy_members") == Some(&Value::Bool(true)) {
                pairs.push(("m.room.member".into(), "$LAZY".into()));
            }
        }
        Some(_) => return Err("required_state must be a list".into()),
    }
    Ok(RoomConfig {
        timeline_limit,
        required_state: RequiredState::new(pairs),
    })
}

fn parse_scope(v: Option<&Value>) -> Result<ExtensionScope, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(ExtensionScope::default());
    };
    let obj = v.as_object().ok_or("an extension must be an object")?;
    let strings = |k: &str| -> Result<Option<Vec<String>>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or(format!("{k} holds strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(format!("{k} must be a list")),
        }
    };
    Ok(ExtensionScope {
        enabled: opt_bool(obj, &["enabled"])?.unwrap_or(false),
        lists: strings("lists")?,
        rooms: strings("rooms")?,
    })
}

fn parse_extensions(v: &Value) -> Result<Extensions, String> {
    let obj = v.as_object().ok_or("extensions must be an object")?;
    let mut ext = Extensions {
        to_device_limit: TO_DEVICE_LIMIT,
        ..Default::default()
    };
    if let Some(td) = obj.get("to_device").and_then(|t| t.as_object()) {
        ext.to_device = opt_bool(td, &["enabled"])?.unwrap_or(false);
        if let Some(s) = td.get("since").filter(|s| !s.is_null()) {
            let s = s.as_str().ok_or("to_device.since must be a string")?;
            ext.to_device_since = Some(
                s.parse::<i64>()
                    .ok()
                    .or_else(|| SyncToken::parse(s).map(|t| t.stream))
                    .ok_or("invalid to_device.since")?,
            );
        }
        if let Some(l) = td.get("limit").filter(|l| !l.is_null()) {
            ext.to_device_limit = l.as_i64().ok_or("to_device.limit must be an integer")?;
        }
    }
    if let Some(e) = obj.get("e2ee").and_then(|t| t.as_object()) {
        ext.e2ee = opt_bool(e, &["enabled"])?.unwrap_or(false);
    }
    ext.account_data = parse_scope(obj.get("account_data"))?;
    ext.receipts = parse_scope(obj.get("receipts"))?;
    ext.typing = parse_scope(obj.get("typing"))?;
    Ok(ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sdk_dialect_and_the_newer_names() {
        let sdk = json!({
            "conn_id": "room-list",
            "lists": {"all_rooms": {
                "ranges": [[0, 19]], "timeline_limit": 1,
                "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]],
                "filters": {"is_invite": false, "not_room_types": ["m.space"]},
            }},
            "room_subscriptions": {"!a:x": {"timeline_limit": 20}},
            "extensions": {
                "to_device": {"enabled": true, "since": "17"},
                "e2ee": {"enabled": true},
                "receipts": {"enabled": true, "rooms": ["*"]},
            },
        });
        let r = parse_request(&sdk).unwrap();
        let l = &r.lists["all_rooms"];
        assert_eq!(l.ranges, vec![(0, 19)]);
        assert_eq!(l.config.timeline_limit, 1);
        assert!(l.config.required_state.lazy_members());
        assert_eq!(l.filters.is_invite, Some(false));
        assert_eq!(l.filters.not_room_types, vec![Some("m.space".to_owned())]);
        assert_eq!(r.subscriptions["!a:x"].timeline_limit, 20);
        assert!(r.extensions.to_device && r.extensions.e2ee);
        assert_eq!(r.extensions.to_device_since, Some(17));
        assert!(r.extensions.receipts.enabled && !r.extensions.typing.enabled);

        let newer = json!({"lists": {"l": {
            "range": [0, 5], "timeline_limit": 1000,
            "required_state": {"include": [{"type": "m.room.topic", "state_key": ""}], "lazy_members": true},
            "filters": {"is_invited": true, "room_types": [null]},
        }}});
        let r = parse_request(&newer).unwrap();
        let l = &r.lists["l"];
        assert_eq!(l.ranges, vec![(0, 5)]);
        assert_eq!(l.config.timeline_limit, MAX_TIMELINE_LIMIT);
        assert!(l.config.required_state.lazy_members());
        assert_eq!(l.filters.is_invite, Some(true));
        assert_eq!(l.filters.room_types, Some(vec![None]));
    }

    #[test]
    fn refuses_bad_shapes() {
        let bad = [
            json!([]),
            json!({"lists": []}),
            json!({"lists": {"l": {"ranges": [[0]]}}}),
            json!({"lists": {"l": {"ranges": [[-1, 3]]}}}),
            json!({"lists": {"l": {"ranges": "0-3"}}}),
            json!({"lists": {"l": {"timeline_limit": -1}}}),
            json!({"lists": {"l": {"required_state": [["m.room.name"]]}}}),
            json!({"lists": {"l": {"required_state": 5}}}),
            json!({"lists": {"l": {"filters": {"is_dm": "yes"}}}}),
            json!({"lists": {"l": {"filters": {"room_types": [1]}}}}),
            json!({"room_subscriptions": {"not a room": {}}}),
            json!({"extensions": {"to_device": {"enabled": true, "since": "x"}}}),
            json!({"extensions": {"receipts": {"enabled": true, "rooms": [1]}}}),
        ];
        for b in bad {
            assert!(parse_request(&b).is_err(), "{b}");
        }
        let many: Map<String, Value> = (0..=MAX_LISTS)
            .map(|i| (format!("l{i}"), json!({})))
            .collect();
        assert!(parse_request(&json!({"lists": many})).is_err());
    }

    #[test]
    fn extension_scopes() {
        let lists: BTreeMap<String, Vec<String>> = [
            ("a".to_owned(), vec!["!1".to_owned()]),
            ("b".to_owned(), vec!["!2".to_owned()]),
        ]
        .into();
        let subs = vec!["!3".to_owned(), "!4".to_owned()];
        let all = ExtensionScope {
            enabled: true,
            ..Default::default()
        };
        assert_eq!(scope_rooms(&all, &lists, &subs).len(), 4);
        let only_a = ExtensionScope {
            enabled: true,
            lists: Some(vec!["a".into()]),
            rooms: Some(vec!["!4".into()]),
        };
        let got = scope_rooms(&only_a, &lists, &subs);
        assert_eq!(got, ["!1".to_owned(), "!4".to_owned()].into());
        let star = ExtensionScope {
            enabled: true,
            lists: Some(vec![]),
            rooms: Some(vec!["*".into()]),
        };
        assert_eq!(
            scope_rooms(&star, &lists, &subs),
            ["!3".to_owned(), "!4".to_owned()].into()
        );
    }
}
