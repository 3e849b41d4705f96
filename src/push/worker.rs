//! The push worker: evaluates every new timeline event for the room's local members, off
//! the room actors' path.
//!
//! In a cluster every node runs one, over the same event stream. A batch's write job first
//! moves the stored position from the batch's start (`storage::push::advance_progress`);
//! when another node's worker stored a position past that start first, the job writes
//! nothing and the worker goes on from the stored position, so each notification and push
//! is stored once.
//!
//! It follows the event stream the way `/sync` does, behind the notifier's frontier: every
//! event at or below the frontier is committed. Woken by every frontier advance
//! (`Notifier::subscribe_all`), it reads the next batch of events after its position (not
//! outliers, not rejected, not soft-failed; backfilled history has negative positions and
//! is never pushed), with what evaluation needs for their rooms (joined members and when
//! they joined, power levels, display names, each member's rules), and runs ruma's
//! evaluator (the rules' `applies`, as `Ruleset::get_actions` does) for every local member
//! but the sender (and for the local target of an invite; the event is flattened once, and the rules walked per member).
//! What notifies becomes, in ONE write job: the notification
//! rows (counts, `/notifications`), one delivery row per pusher of the user (with the exact
//! body for the gateway and the badge count), and the worker's new position. A crash
//! before that commit re-evaluates the batch on start; after it, nothing is evaluated twice
//! and every push is in the delivery queue (`gateway.rs`). The job takes a notifier
//! position of its own, so the users' `/sync` wakes up and sees the new counts.
//!
//! Passes start at least `push.pass_interval_ms` apart ([`crate::notifier::Pacer`]): while
//! a server sends faster than that, one pass takes several commits' events (one read, one
//! evaluation set-up, one write job beside the rooms' commits instead of one per commit);
//! the first event after a quiet spell is evaluated at once, and a pass cut short by
//! `push.batch_events` is followed at once (a worker behind never waits).
//!
//! The job is a *deferred* write (`Db::write_deferred_then`): nobody waits on it to answer
//! a request, so when the writer takes it without an ordinary job (the usual case: it is
//! queued right after the commit that moved the frontier) it commits at once, in the
//! writer's idle time, without an fsync of its own (`storage::writer`: SQLite `synchronous
//! = NORMAL` for that batch, PostgreSQL `synchronous_commit = off`); the next durable
//! commit makes it durable. A crash before that loses the rows and the stored position
//! together, and the batch is evaluated again from the stored position on start. (An
//! earlier version held the job up to 50 ms for the next ordinary job and committed inside
//! it, which put `/send` N's notification rows in `/send` N+1's commit, in its latency.)
//! The job takes its notifier position *inside* the writer's transaction, and the writer's
//! after-commit hook completes it (waking the users on success, abandoning it otherwise):
//! a job waiting in the writer's queue holds no position, so nothing committed after it
//! waits behind it. (Taking the position before the job, as an earlier version did, kept
//! every later event behind the frontier while the job was held: a client's sequential
//! sends on SQLite fell from 204 to 34 a second.) In a cluster the lazy commit is what the
//! other nodes' `advance_progress` sees; a node that gave its batch up because of it depends
//! on it only through its own later commits, which come after it in PostgreSQL's WAL.
//!
//! Rules are evaluated against the room's state at the event (the state before it, as its
//! state group records it): the members (their count, who is asked, their display names),
//! the power levels, the room's name and alias. The worker runs right behind the commit,
//! so that state is nearly always the current one: when no state event came at or after
//! the event, the current state is used (the membership table and a few current-state
//! entries). Otherwise (the worker is behind, a restart re-evaluates a batch, a member
//! joined or left or was renamed right after) the event's state group is loaded and its
//! differences from the current state are applied to the current context, so only the
//! changed entries' events are read.
//!
//! The current-state context of a room is kept between batches ([`RoomCache`]), tagged
//! with the room's current state group when it was read: a batch reads only that group
//! (one row) and reuses the context while it is unchanged. Every change of the room's
//! current state (a member joining, leaving or renamed, new power levels, name or alias)
//! lands with a new current state group in the same transaction, so an equal group means an
//! equal context. The group is read before the context, so a change racing the read can
//! only make the next batch read again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ruma::push::{FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset};
use ruma::serde::Raw;
use ruma::{Int, OwnedRoomId, OwnedUserId, UInt};
use serde_json::Value;
use tokio::sync::Notify;
use weft_protocol::RoomVersion;
use weft_protocol::push::{self as rules, Outcome, PushDevice, PushedEvent};

use super::parse_ruleset;
use crate::core::Core;
use crate::storage::events::EventRow;
use crate::storage::push::{self, NotificationRow, OutboxRow};
use crate::storage::state::StateIds;
use crate::storage::{self, AnyConnection, StorageResult, account, events, rooms, state};

/// What evaluation needs of a room, at one state of it.
#[derive(Clone)]
struct RoomCtx {
    room_id: OwnedRoomId,
    version: RoomVersion,
    creators: Vec<OwnedUserId>,
    /// Every joined member.
    joined: HashSet<String>,
    member_count: UInt,
    /// Local joined members and the position of their join (`i64::MIN` in a context made
    /// from an event's own state, where every member listed was joined at the event).
    local: Vec<(String, i64)>,
    power_levels: PushConditionPowerLevelsCtx,
    display_names: HashMap<String, String>,
    room_name: Option<String>,
    room_alias: Option<String>,
}

/// One batch read from the database.
struct Batch {
    events: Vec<EventRow>,
    /// The position evaluated up to once the batch is done.
    upto: i64,
    /// Each room's context at its current state.
    rooms: HashMap<String, RoomCtx>,
    /// Contexts at the state groups of events that came before a state change, by group.
    at_group: HashMap<i64, RoomCtx>,
    rules: HashMap<String, Ruleset>,
}

impl Batch {
    /// The context to evaluate an event in: its own state's when that differs from the
    /// current state, else the room's current one.
    fn ctx_of(&self, ev: &EventRow) -> Option<&RoomCtx> {
        ev.state_before
            .and_then(|g| self.at_group.get(&g))
            .filter(|c| c.room_id.as_str() == ev.room_id)
            .or_else(|| self.rooms.get(&ev.room_id))
    }
}

/// An event that notifies a user.
pub struct Found {
    pub row: NotificationRow,
    pub outcome: Outcome,
    pub event: PushedEvent,
}

fn content_of(
    conn: &mut AnyConnection,
    room: &str,
    kind: &str,
    key: &str,
) -> StorageResult<Option<Value>> {
    let Some(id) = state::current_state_entry(conn, room, kind, key)? else {
        return Ok(None);
    };
    Ok(events::get_event(conn, &id)?
        .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
        .map(|v| v["content"].clone()))
}

fn int_of(v: &Value) -> Option<Int> {
    match v {
        Value::Number(n) => n.as_i64().and_then(|i| Int::try_from(i).ok()),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|i| Int::try_from(i).ok()),
        _ => None,
    }
}

/// The push-rule view of a room's power levels (no event: the creators at 100, others 0).
fn power_levels_ctx(
    version: RoomVersion,
    content: Option<&Value>,
    creators: Vec<OwnedUserId>,
) -> PushConditionPowerLevelsCtx {
    let mut users = std::collections::BTreeMap::new();
    let mut users_default = Int::from(0u32);
    let mut notifications = ruma::power_levels::NotificationPowerLevels::new();
    match content {
        Some(c) => {
            if let Some(map) = c["users"].as_object() {
                for (u, l) in map {
                    if let (Ok(u), Some(l)) = (OwnedUserId::try_from(u.as_str()), int_of(l)) {
                        users.insert(u, l);
                    }
                }
            }
            if let Some(d) = int_of(&c["users_default"]) {
                users_default = d;
            }
            if let Some(r) = int_of(&c["notifications"]["room"]) {
                notifications.room = r;
            }
        }
        None => {
            for u in &creators {
                users.insert(u.clone(), Int::from(100u32));
            }
        }
    }
    let rules = ruma::room_version_rules::RoomPowerLevelsRules::new(
        &version.rules().authorization,
        creators,
    );
    PushConditionPowerLevelsCtx::new(users, users_default, notifications, rules)
}

fn creators_of(create: Option<&Value>, create_sender: Option<String>) -> Vec<OwnedUserId> {
    let mut out: Vec<OwnedUserId> = create_sender
        .iter()
        .chain(
            create
                .and_then(|c| c["content"]["creator"].as_str().map(str::to_owned))
                .iter(),
        )
        .filter_map(|u| OwnedUserId::try_from(u.as_str()).ok())
        .collect();
    if let Some(list) = create.and_then(|c| c["content"]["additional_creators"].as_array()) {
        out.extend(
            list.iter()
                .filter_map(Value::as_str)
                .filter_map(|u| OwnedUserId::try_from(u).ok()),
        );
    }
    out.sort();
    out.dedup();
    out
}

fn load_room(
    conn: &mut AnyConnection,
    room: &str,
    server_suffix: &str,
    senders: &HashSet<String>,
) -> StorageResult<Option<RoomCtx>> {
    let Ok(room_id) = OwnedRoomId::try_from(room) else {
        return Ok(None);
    };
    let version = rooms::room_version(conn, room)?
        .and_then(|v| RoomVersion::parse(&v))
        .unwrap_or(RoomVersion::V10);
    let members = push::joined_members(conn, room)?;
    let member_count = UInt::try_from(members.len() as u64).unwrap_or(UInt::MAX);
    let joined: HashSet<String> = members.iter().map(|(u, _)| u.clone()).collect();
    let local: Vec<(String, i64)> = members
        .into_iter()
        .filter(|(u, _)| u.ends_with(server_suffix))
        .collect();
    let create = state::current_state_entry(conn, room, "m.room.create", "")?
        .and_then(|id| events::get_event(conn, &id).ok().flatten());
    let create_json = create
        .as_ref()
        .and_then(|r| serde_json::from_str::<Value>(&r.json).ok());
    let creators = creators_of(create_json.as_ref(), create.map(|r| r.sender));
    let pl = content_of(conn, room, "m.room.power_levels", "")?;
    let power_levels = power_levels_ctx(version, pl.as_ref(), creators.clone());
    let mut display_names = HashMap::new();
    let wanted: HashSet<&String> = local.iter().map(|(u, _)| u).chain(senders.iter()).collect();
    for u in wanted {
        if let Some(d) = display_name(conn, room, u)? {
            display_names.insert(u.clone(), d);
        }
    }
    let room_name = content_of(conn, room, "m.room.name", "")?
        .and_then(|c| c["name"].as_str().map(str::to_owned));
    let room_alias = content_of(conn, room, "m.room.canonical_alias", "")?
        .and_then(|c| c["alias"].as_str().map(str::to_owned));
    Ok(Some(RoomCtx {
        room_id,
        version,
        creators,
        joined,
        member_count,
        local,
        power_levels,
        display_names,
        room_name,
        room_alias,
    }))
}

/// Room contexts at their current state, kept between batches (see the module comment).
#[derive(Default)]
struct RoomCache {
    rooms: HashMap<String, CachedRoom>,
}

struct CachedRoom {
    /// The room's current state group the context was read at.
    group: i64,
    ctx: RoomCtx,
    /// Users whose display name was looked up at that state (found or not).
    named: HashSet<String>,
}

/// At most this many rooms' contexts are kept; past it the cache starts again empty.
const CACHED_ROOMS: usize = 10_000;

/// A user's display name in a room's current state.
fn display_name(conn: &mut AnyConnection, room: &str, user: &str) -> StorageResult<Option<String>> {
    Ok(content_of(conn, room, "m.room.member", user)?
        .and_then(|c| c["displayname"].as_str().map(str::to_owned)))
}

/// [`load_room`] through the cache: the room's current state group is read first, and a
/// context read at that same group is reused (with the display names of senders it has
/// not looked up yet added).
fn load_room_cached(
    conn: &mut AnyConnection,
    cache: &mut RoomCache,
    room: &str,
    server_suffix: &str,
    senders: &HashSet<String>,
) -> StorageResult<Option<RoomCtx>> {
    let Some(group) = rooms::get_room(conn, room)?.and_then(|r| r.state_group) else {
        cache.rooms.remove(room);
        return load_room(conn, room, server_suffix, senders);
    };
    if let Some(c) = cache.rooms.get_mut(room)
        && c.group == group
    {
        for u in senders {
            if c.named.contains(u) {
                continue;
            }
            // Looked up first: a failed read leaves the user still to look up.
            if let Some(d) = display_name(conn, room, u)? {
                c.ctx.display_names.insert(u.clone(), d);
            }
            c.named.insert(u.clone());
        }
        return Ok(Some(c.ctx.clone()));
    }
    let ctx = load_room(conn, room, server_suffix, senders)?;
    match &ctx {
        Some(ctx) => {
            if cache.rooms.len() >= CACHED_ROOMS && !cache.rooms.contains_key(room) {
                cache.rooms.clear();
            }
            let named = ctx
                .local
                .iter()
                .map(|(u, _)| u.clone())
                .chain(senders.iter().cloned())
                .collect();
            cache.rooms.insert(
                room.to_owned(),
                CachedRoom {
                    group,
                    ctx: ctx.clone(),
                    named,
                },
            );
        }
        None => {
            cache.rooms.remove(room);
        }
    }
    Ok(ctx)
}

/// The content of a state event by ID (`None` when it is missing or unreadable).
fn content_by_id(conn: &mut AnyConnection, id: Option<&String>) -> StorageResult<Option<Value>> {
    let Some(id) = id else {
        return Ok(None);
    };
    Ok(events::get_event(conn, id)?
        .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
        .map(|v| v["content"].clone()))
}

/// The context at another state of the room (`at`, an event's state group), made from the
/// current context by applying the entries where `at` differs from `current`.
fn ctx_at(
    conn: &mut AnyConnection,
    base: &RoomCtx,
    current: &StateIds,
    at: &StateIds,
    server_suffix: &str,
) -> StorageResult<RoomCtx> {
    let mut ctx = base.clone();
    let changed: HashSet<&(String, String)> = current
        .keys()
        .chain(at.keys())
        .filter(|k| current.get(*k) != at.get(*k))
        .collect();
    for key in changed {
        let content = content_by_id(conn, at.get(key))?;
        let (kind, state_key) = (key.0.as_str(), key.1.as_str());
        match kind {
            "m.room.member" => {
                let c = content.as_ref();
                if c.is_some_and(|c| c["membership"] == "join") {
                    ctx.joined.insert(state_key.to_owned());
                } else {
                    ctx.joined.remove(state_key);
                }
                match c.and_then(|c| c["displayname"].as_str()) {
                    Some(d) => ctx.display_names.insert(state_key.to_owned(), d.to_owned()),
                    None => ctx.display_names.remove(state_key),
                };
            }
            "m.room.power_levels" if state_key.is_empty() => {
                ctx.power_levels =
                    power_levels_ctx(ctx.version, content.as_ref(), ctx.creators.clone());
            }
            "m.room.name" if state_key.is_empty() => {
                ctx.room_name = content.and_then(|c| c["name"].as_str().map(str::to_owned));
            }
            "m.room.canonical_alias" if state_key.is_empty() => {
                ctx.room_alias = content.and_then(|c| c["alias"].as_str().map(str::to_owned));
            }
            _ => {}
        }
    }
    ctx.member_count = UInt::try_from(ctx.joined.len() as u64).unwrap_or(UInt::MAX);
    let mut local: Vec<(String, i64)> = ctx
        .joined
        .iter()
        .filter(|u| u.ends_with(server_suffix))
        .map(|u| (u.clone(), i64::MIN))
        .collect();
    local.sort();
    ctx.local = local;
    Ok(ctx)
}

/// Contexts at the state groups of the batch's events that precede a state change of their
/// room (a state event at or after them), by group.
fn contexts_at_events(
    conn: &mut AnyConnection,
    events: &[EventRow],
    rooms: &HashMap<String, RoomCtx>,
    server_suffix: &str,
) -> StorageResult<HashMap<i64, RoomCtx>> {
    let mut first: HashMap<&str, i64> = HashMap::new();
    for ev in events {
        if let Some(s) = ev.stream_ordering {
            first.entry(ev.room_id.as_str()).or_insert(s);
        }
    }
    let mut out = HashMap::new();
    let mut current: HashMap<&str, StateIds> = HashMap::new();
    let mut last_change: HashMap<&str, Option<i64>> = HashMap::new();
    for ev in events {
        let (Some(stream), Some(group), Some(base)) =
            (ev.stream_ordering, ev.state_before, rooms.get(&ev.room_id))
        else {
            continue;
        };
        let room = ev.room_id.as_str();
        if !last_change.contains_key(room) {
            let from = first.get(room).copied().unwrap_or(stream);
            last_change.insert(room, push::last_state_change_from(conn, room, from)?);
        }
        let changed_since = last_change
            .get(room)
            .copied()
            .flatten()
            .is_some_and(|s| s >= stream);
        if !changed_since || out.contains_key(&group) {
            continue;
        }
        if !current.contains_key(room) {
            current.insert(room, state::current_state(conn, room)?);
        }
        // A group that cannot be read must not stall push for everyone: that event is
        // evaluated at the current state instead.
        let at = match state::load_group(conn, group) {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!(error = %e, event = %ev.event_id, group,
                    "push worker: cannot read the state at an event; using the current state");
                continue;
            }
        };
        out.insert(
            group,
            ctx_at(conn, base, &current[&room], &at, server_suffix)?,
        );
    }
    Ok(out)
}

/// The local user an invite is for, when the event is one.
fn local_invitee<'a>(ev: &'a EventRow, json: &Value, server_suffix: &str) -> Option<&'a str> {
    (ev.event_type == "m.room.member" && json["content"]["membership"] == "invite")
        .then_some(())
        .and(ev.state_key.as_deref())
        .filter(|u| u.ends_with(server_suffix))
}

fn load_batch(
    conn: &mut AnyConnection,
    cache: &mut RoomCache,
    after: i64,
    frontier: i64,
    limit: i64,
    server_suffix: &str,
) -> StorageResult<Batch> {
    let events = push::events_to_evaluate(conn, after, frontier, limit)?;
    let upto = match events.last() {
        Some(last) if events.len() as i64 >= limit => last.stream_ordering.unwrap_or(frontier),
        _ => frontier,
    };
    let mut senders: HashMap<String, HashSet<String>> = HashMap::new();
    let mut users: HashSet<String> = HashSet::new();
    for ev in &events {
        senders
            .entry(ev.room_id.clone())
            .or_default()
            .insert(ev.sender.clone());
        // Only a membership event can invite (the JSON is parsed for those alone).
        if ev.event_type == "m.room.member"
            && let Ok(json) = serde_json::from_str::<Value>(&ev.json)
            && let Some(u) = local_invitee(ev, &json, server_suffix)
        {
            users.insert(u.to_owned());
        }
    }
    let mut rooms = HashMap::new();
    for (room, senders) in &senders {
        if let Some(ctx) = load_room_cached(conn, cache, room, server_suffix, senders)? {
            users.extend(ctx.local.iter().map(|(u, _)| u.clone()));
            rooms.insert(room.clone(), ctx);
        }
    }
    let at_group = contexts_at_events(conn, &events, &rooms, server_suffix)?;
    for ctx in at_group.values() {
        users.extend(ctx.local.iter().map(|(u, _)| u.clone()));
    }
    let mut rules = HashMap::new();
    for u in users {
        let Ok(uid) = OwnedUserId::try_from(u.as_str()) else {
            continue;
        };
        let stored = account::get_account_data(conn, &u, "", super::ACCOUNT_DATA_TYPE)?
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        rules.insert(u, parse_ruleset(&uid, stored));
    }
    Ok(Batch {
        events,
        upto,
        rooms,
        at_group,
        rules,
    })
}

/// Evaluates one event for one user: ruma's rules in the spec's order, the first that
/// applies gives the actions (what `Ruleset::get_actions` does, with the event flattened once
/// per event instead of once per member); `None` when it does not notify.
pub async fn evaluate(
    rules: &Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Option<(Outcome, Vec<Value>)> {
    let mut actions = None;
    for rule in rules {
        if rule.applies(event, ctx).await {
            actions = Some(rule.actions());
            break;
        }
    }
    let actions = actions.filter(|a| !a.is_empty())?;
    let json: Vec<Value> = actions
        .iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .collect();
    let o = rules::outcome(&json);
    o.notify.then_some((o, json))
}

async fn evaluate_batch(batch: &Batch, server_suffix: &str, now: i64) -> Vec<Found> {
    let mut found = Vec::new();
    for ev in &batch.events {
        let (Some(room), Some(stream)) = (batch.ctx_of(ev), ev.stream_ordering) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<Value>(&ev.json) else {
            continue;
        };
        let Ok(raw_value) = serde_json::value::RawValue::from_string(ev.json.clone()) else {
            continue;
        };
        let raw: Raw<Value> = Raw::from_json(raw_value);
        let flat = FlattenedJson::from_raw(&raw);
        let mut candidates: Vec<(&str, Option<String>)> = room
            .local
            .iter()
            .filter(|(u, joined)| *joined < stream && *u != ev.sender)
            .map(|(u, _)| (u.as_str(), room.display_names.get(u).cloned()))
            .collect();
        if let Some(invitee) = local_invitee(ev, &json, server_suffix)
            && invitee != ev.sender
            && !candidates.iter().any(|(u, _)| *u == invitee)
        {
            let name = json["content"]["displayname"].as_str().map(str::to_owned);
            candidates.push((invitee, name));
        }
        let thread = rules::thread_of(&json["content"]);
        for (user, display_name) in candidates {
            let (Some(rules), Ok(uid)) = (batch.rules.get(user), OwnedUserId::try_from(user))
            else {
                continue;
            };
            let ctx = PushConditionRoomCtx::new(
                room.room_id.clone(),
                room.member_count,
                uid,
                display_name.unwrap_or_else(|| user.to_owned()),
            )
            .with_power_levels(room.power_levels.clone());
            let Some((outcome, actions)) = evaluate(rules, &flat, &ctx).await else {
                continue;
            };
            found.push(Found {
                row: NotificationRow {
                    user_id: user.to_owned(),
                    event_id: ev.event_id.clone(),
                    room_id: ev.room_id.clone(),
                    thread_id: thread.clone(),
                    stream_ordering: stream,
                    stream_id: 0,
                    ts: now,
                    actions: Value::Array(actions).to_string(),
                    highlight: outcome.highlight,
                },
                outcome,
                event: PushedEvent {
                    event_id: ev.event_id.clone(),
                    room_id: ev.room_id.clone(),
                    event_type: ev.event_type.clone(),
                    sender: ev.sender.clone(),
                    content: json["content"].clone(),
                    state_key: ev.state_key.clone(),
                    sender_display_name: room.display_names.get(&ev.sender).cloned(),
                    room_name: room.room_name.clone(),
                    room_alias: room.room_alias.clone(),
                },
            });
        }
        // Long batches must not hold the thread.
        tokio::task::yield_now().await;
    }
    found
}

/// Stores what a batch of `(after, upto]` found: the position, notification rows, one
/// delivery row per pusher. Answers how many deliveries were queued, or `None` when another
/// worker (another cluster node) stored a position past `after` first: then nothing is
/// written, and the worker reads the position again.
fn store(
    conn: &mut AnyConnection,
    found: &[Found],
    stream_id: i64,
    after: i64,
    upto: i64,
) -> StorageResult<Option<usize>> {
    if !push::advance_progress(conn, after, upto)? {
        return Ok(None);
    }
    let rows: Vec<NotificationRow> = found
        .iter()
        .map(|f| NotificationRow {
            stream_id,
            ..f.row.clone()
        })
        .collect();
    push::insert_notifications(conn, &rows)?;
    let users: Vec<String> = found
        .iter()
        .map(|f| f.row.user_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let pushers = push::pushers_of(conn, &users)?;
    let mut queued = 0;
    if !pushers.is_empty() {
        let now = storage::now_ms();
        let mut badges: HashMap<String, u64> = HashMap::new();
        for f in found {
            let mine: Vec<_> = pushers
                .iter()
                .filter(|p| p.user_id == f.row.user_id)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let unread = match badges.get(&f.row.user_id) {
                Some(b) => *b,
                None => {
                    let b = push::rooms_with_unread(conn, &f.row.user_id)?;
                    badges.insert(f.row.user_id.clone(), b);
                    b
                }
            };
            for p in mine {
                let data: serde_json::Map<String, Value> =
                    serde_json::from_str(&p.data).unwrap_or_default();
                let Some(url) = data.get("url").and_then(Value::as_str).map(str::to_owned) else {
                    continue;
                };
                let device = PushDevice {
                    app_id: p.app_id.clone(),
                    pushkey: p.pushkey.clone(),
                    pushkey_ts: p.created_ts / 1000,
                    data,
                };
                let body =
                    rules::notify_body(&f.event, &f.row.user_id, &device, &f.outcome, unread);
                push::enqueue(
                    conn,
                    &OutboxRow {
                        user_id: p.user_id.clone(),
                        app_id: p.app_id.clone(),
                        pushkey: p.pushkey.clone(),
                        event_id: f.row.event_id.clone(),
                        url,
                        body: body.to_string(),
                        attempts: 0,
                        next_attempt_ts: now,
                        created_ts: now,
                    },
                )?;
                queued += 1;
            }
        }
    }
    Ok(Some(queued))
}

/// The writer shard of push jobs.
const SHARD: &str = "push";

type Slot = std::sync::Mutex<Option<(i64, Vec<String>)>>;

/// A poisoned slot (a panic while it was held) is still read: the position in it must be
/// completed.
fn set_slot(slot: &Slot, v: Option<(i64, Vec<String>)>) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = v;
}

fn take_slot(slot: &Slot) -> Option<(i64, Vec<String>)> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Runs the worker until the process ends.
pub async fn run(core: Arc<Core>, deliveries: Arc<Notify>) {
    let suffix = format!(":{}", core.server_name());
    let limit = i64::from(core.config.push.batch_events.max(1));
    let mut rx = core.notifier.subscribe_all();
    let mut cursor = loop {
        match core.db.read(push::progress).await {
            Ok(Some(p)) => break p,
            // First start: from here on (earlier history is not pushed).
            Ok(None) => {
                let at = core.notifier.frontier();
                match core
                    .db
                    .write(SHARD, move |c| push::set_progress(c, at))
                    .await
                {
                    Ok(()) => break at,
                    Err(e) => tracing::warn!(error = %e, "push worker: cannot save its position"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "push worker: cannot read its position; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // Batches that notified nobody move the position in memory; it is written with the next
    // batch that notifies, or after a second (re-evaluating such a batch changes nothing).
    let mut unsaved = false;
    let mut last_save = Instant::now();
    let cache = Arc::new(std::sync::Mutex::new(RoomCache::default()));
    let mut pacer = crate::notifier::Pacer::new(core.config.push.pass_interval_ms);
    loop {
        if core.notifier.frontier() > cursor {
            pacer.pace().await;
            // Whatever committed during the wait joins this pass.
            let frontier = core.notifier.frontier();
            let s = suffix.clone();
            let after = cursor;
            let cache = Arc::clone(&cache);
            let batch = match core
                .db
                .read(move |c| {
                    // Only this worker uses the cache; a poisoned lock (a panic in a read)
                    // just starts it again.
                    let mut cache = cache.lock().unwrap_or_else(|p| {
                        let mut g = p.into_inner();
                        g.rooms.clear();
                        g
                    });
                    load_batch(c, &mut cache, after, frontier, limit, &s)
                })
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "push worker: cannot read events; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let evaluated = batch.events.len();
            let found = evaluate_batch(&batch, &suffix, storage::now_ms()).await;
            let upto = batch.upto;
            if upto < frontier {
                pacer.behind();
            }
            if found.is_empty() {
                unsaved |= evaluated > 0;
                cursor = upto;
                crate::observe::metrics::push_evaluated(evaluated, 0);
                continue;
            }
            let users: HashSet<String> = found.iter().map(|f| f.row.user_id.clone()).collect();
            let n = found.len();
            // The job takes its notifier position itself, inside the writer's transaction,
            // and the after-commit hook completes it (waking the users on success): while a
            // deferred job waits in the writer's queue it has no position yet, so it holds
            // nothing back (see the module comment).
            let slot: Arc<Slot> = Arc::default();
            let (job_slot, hook_slot) = (Arc::clone(&slot), slot);
            let job_core = Arc::clone(&core);
            let hook_core = Arc::clone(&core);
            let res = core
                .db
                .write_deferred_then(
                    SHARD,
                    move |c| {
                        let pos = job_core.notifier.allocate();
                        // Recorded before the job writes anything, so a failing job's
                        // position is still completed.
                        set_slot(&job_slot, Some((pos, Vec::new())));
                        let stored = store(c, &found, pos, after, upto)?;
                        if stored.is_some() {
                            set_slot(&job_slot, Some((pos, users.into_iter().collect())));
                        }
                        Ok(stored)
                    },
                    Box::new(move |committed| {
                        if let Some((pos, wake)) = take_slot(&hook_slot) {
                            let wake = if committed { wake } else { Vec::new() };
                            hook_core.notifier.complete(&[pos], wake);
                        }
                    }),
                )
                .await;
            match res {
                Ok(None) => {
                    // Another node stored this batch (or one past its start): go on from
                    // the stored position.
                    tracing::debug!(after, upto, "push worker: batch stored by another worker");
                    match core.db.read(push::progress).await {
                        Ok(Some(p)) => cursor = p,
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "push worker: cannot read its position; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    unsaved = false;
                }
                Ok(Some(queued)) => {
                    crate::observe::metrics::push_evaluated(evaluated, n);
                    cursor = upto;
                    unsaved = false;
                    last_save = Instant::now();
                    if queued > 0 {
                        deliveries.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "push worker: cannot store notifications; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        }
        if unsaved && last_save.elapsed() >= Duration::from_secs(1) {
            let at = cursor;
            // Never moves the stored position back (another node may be past it). No
            // notifier position; a deferred write (no fsync of its own).
            match core
                .db
                .write_deferred(SHARD, move |c| {
                    push::advance_progress(c, at, at).map(|_| ())
                })
                .await
            {
                Ok(()) => unsaved = false,
                Err(e) => tracing::warn!(error = %e, "push worker: cannot save its position"),
            }
            last_save = Instant::now();
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
