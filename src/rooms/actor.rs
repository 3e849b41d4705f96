//! The room actor: the single owner of a room's ordered event sequence and current state.
//!
//! Life of a local event (a client's `send`):
//!
//! 1. The handler sends `SendEvent` (with `send().await`, so a full mailbox pushes back).
//! 2. The actor builds the PDU on top of its in-memory position (forward extremities, depth,
//!    auth events from current state), signs it, and checks the auth rules against its
//!    current state. A refusal answers at once; nothing is written.
//! 3. Accepted events are applied to the in-memory state and queued in `pending`, with a
//!    stream position; the reply waits on a oneshot.
//! 4. After actix has drained the mailbox, `Flush` writes the whole pending batch as ONE job
//!    (`persist::PersistBatch`, which also queues the event for every other server in the
//!    room) and the actor *waits* for the commit (`ctx.wait`): messages arriving meanwhile
//!    stay in the mailbox and form the next batch (group commit).
//! 5. On commit: replies go out, the notifier wakes the room's local users' `/sync`, and the
//!    per-destination senders are woken. On failure: every pending reply gets the error and
//!    the actor stops, so the next message starts a fresh actor from what is on disk.
//!
//! Life of a received PDU (`InboundPdus`, signatures and hashes already checked):
//!
//! * Fast path: it extends exactly the current forward extremities and cites auth events of
//!   the current state, so the state before it IS the current state, in memory: auth checks
//!   and append need no I/O.
//! * Otherwise the pending batch is flushed, and [`super::inbound::prepare`] loads what it
//!   needs on a blocking thread (state after its prev events, state resolution, forks) while
//!   the actor holds its mailbox (`AtomicResponse`); then the actor soft-fail-checks it
//!   against the current state and appends it. Missing prev or auth events are reported back
//!   to the caller, which fetches them from the network: the actor never waits on a peer.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use ruma::events::StateEventType;
use ruma::{OwnedEventId, OwnedRoomId};
use tokio::sync::oneshot;
use weft_protocol::auth::{self, StateMap};
use weft_protocol::builder::{self, EventDraft, Position};
use weft_protocol::{Pdu, RoomVersion};

use super::ActorMap;
use super::inbound::{self, InboundInput, Prepared};
use super::messages::{
    AppendHistory, BuildEvent, GetSnapshot, InboundOutcome, InboundPdus, InitRoom, RoomSnapshot,
    SendEvent, TxnKey,
};
use super::persist::NewGroup;
use super::persist::{MembershipChange, PersistBatch, PersistEvent, Redaction};
use super::state::{CurrentState, depth_of, make_group};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::events::NewEvent;
use crate::storage::state::MAX_DELTA_DEPTH;
use crate::storage::state::StateIds;
use crate::storage::{self, StorageResult};

/// A stored state group and its delta depth.
type GroupRef = Option<(i64, i32)>;

// Linearized Matrix rooms: the room's role and the messages only those rooms take.
mod linearized;

/// Most `prev_events` a local event cites.
const MAX_PREV_EVENTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Loading from the database (the mailbox is held until done).
    Loading,
    /// A room not yet known here: waiting for `InitRoom` or a join from another server.
    New,
    Ready,
    /// No such room on this server.
    Missing,
    /// Loading failed; answers errors until it stops.
    Broken,
}

struct Pending {
    pdu: Arc<Pdu>,
    persist: PersistEvent,
    stream: Option<i64>,
    replies: Vec<oneshot::Sender<Result<OwnedEventId>>>,
}

/// How a new event lands in the room.
struct AppendPlan {
    pdu: Arc<Pdu>,
    rejected: Option<String>,
    soft_failed: bool,
    /// The state before the event (`None`: the current state).
    state_before: Option<StateIds>,
    /// The room's state after it (`None`: the current state plus the event).
    new_current: Option<StateIds>,
    events: HashMap<String, Arc<Pdu>>,
    /// Created here: deliver it to the other servers in the room.
    local: bool,
    txn: Option<TxnKey>,
    reply: Option<oneshot::Sender<Result<OwnedEventId>>>,
}

pub struct RoomActor {
    core: Arc<Core>,
    actors: ActorMap,
    room_id: OwnedRoomId,
    status: Status,
    version: RoomVersion,
    state: CurrentState,
    extremities: Vec<OwnedEventId>,
    /// Rooms of v1/v2 cite events with their reference hashes: those of the extremities.
    extremity_hashes: HashMap<OwnedEventId, String>,
    max_depth: u64,
    /// Transactions seen since the actor started (older ones are found in the database by
    /// the handler before it asks the actor).
    txns: HashMap<TxnKey, OwnedEventId>,
    pending: Vec<Pending>,
    batch: PersistBatch,
    flush_scheduled: bool,
    last_active: Instant,
    /// Linearized Matrix rooms: hub or participant (`None` for DAG rooms).
    lm: Option<super::linearized::Role>,
    /// Events rejected since the actor started (older ones are found in the database, by
    /// the admission step before the actor and by `inbound::prepare`): rejection is
    /// permanent, so the in-memory path never re-checks one against a newer state.
    rejected: HashSet<OwnedEventId>,
    /// Events (appended since the actor started) after which the room's state is exactly
    /// the current state: the tips of concurrent chains of messages from one point. A
    /// received message whose prev events are all here, while every forward extremity is
    /// here too, has the current state as the state before it and leaves the current state
    /// as it is: it is checked and appended in memory (forks at memory speed). Cleared when
    /// the current state changes.
    at_current: HashSet<OwnedEventId>,
}

/// Most events [`RoomActor::at_current`] holds (then only the forward extremities stay).
const MAX_AT_CURRENT: usize = 20_000;

/// Most rejected event IDs an actor remembers (then it starts over; the database remembers
/// all of them).
const MAX_REMEMBERED_REJECTIONS: usize = 10_000;

/// Flush the pending batch (sent by the actor to itself after the mailbox is drained).
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// What loading a room from storage yields.
struct Loaded {
    version: RoomVersion,
    state: CurrentState,
    extremities: Vec<OwnedEventId>,
    extremity_hashes: HashMap<OwnedEventId, String>,
    max_depth: u64,
}

/// The reference hash a v1/v2 event cites `pdu` with (`None` in later versions).
fn cited_hash(version: RoomVersion, pdu: &Pdu) -> Option<String> {
    version
        .cites_event_hashes()
        .then(|| weft_protocol::pdu::reference_hash(pdu.json(), version).ok())
        .flatten()
}

fn server_of(user: &str) -> &str {
    user.split_once(':').map(|(_, s)| s).unwrap_or_default()
}

impl RoomActor {
    pub(super) fn new(
        core: Arc<Core>,
        actors: ActorMap,
        room_id: OwnedRoomId,
        fresh: Option<RoomVersion>,
    ) -> Self {
        let batch = PersistBatch {
            room_id: room_id.to_string(),
            ..Default::default()
        };
        Self {
            core,
            actors,
            room_id,
            status: if fresh.is_some() {
                Status::New
            } else {
                Status::Loading
            },
            version: fresh.unwrap_or(RoomVersion::V12),
            state: CurrentState::default(),
            extremities: Vec::new(),
            extremity_hashes: HashMap::new(),
            max_depth: 0,
            txns: HashMap::new(),
            pending: Vec::new(),
            batch,
            flush_scheduled: false,
            last_active: Instant::now(),
            lm: None,
            rejected: HashSet::new(),
            at_current: HashSet::new(),
        }
    }

    fn check_ready(&self) -> Result<()> {
        match self.status {
            Status::Ready => Ok(()),
            Status::Missing | Status::New => Err(Error::not_found("unknown room")),
            Status::Loading | Status::Broken => Err(Error::internal("room is unavailable")),
        }
    }

    /// Builds a local event on top of the current position and checks it.
    fn build_local(&self, draft: &EventDraft) -> Result<Pdu> {
        self.lm_guard_local_build()?;
        let auth_events = auth::select_auth_events_with(
            self.version,
            &draft.kind,
            &draft.sender,
            draft.state_key.as_deref(),
            &draft.content,
            |key| self.state.as_map().get(key).map(|e| e.owned_event_id()),
        )
        .map_err(|e| Error::BadJson(e.0))?;
        let prev_events: Vec<OwnedEventId> = self
            .extremities
            .iter()
            .rev()
            .take(MAX_PREV_EVENTS)
            .cloned()
            .collect();
        let position = Position {
            version: self.version,
            room_id: Some(&self.room_id),
            prev_events,
            auth_events,
            depth: self.max_depth + 1,
        };
        let mut draft = draft.clone();
        if draft.origin_server_ts == 0 {
            draft.origin_server_ts = storage::now_ms() as u64;
        }
        let index = if self.version.cites_event_hashes() {
            self.state.index()
        } else {
            HashMap::new()
        };
        let hashes = |id: &ruma::EventId| {
            self.extremity_hashes
                .get(id)
                .cloned()
                .or_else(|| index.get(id).and_then(|e| cited_hash(self.version, e)))
        };
        let pdu = builder::build_pdu_citing(
            &draft,
            &position,
            &hashes,
            self.core.server_name(),
            &self.core.key,
        )
        .map_err(|e| match e {
            builder::BuildError::Pdu(weft_protocol::pdu::PduError::TooLarge(_)) => Error::TooLarge,
            e => Error::BadJson(e.to_string()),
        })?;
        auth::check_against_state(self.version, &pdu, self.state.as_map())
            .map_err(|e| Error::Forbidden(format!("event not allowed: {}", e.0)))?;
        Ok(pdu)
    }

    fn row_for(&self, pdu: &Pdu, stream: Option<i64>) -> NewEvent {
        NewEvent {
            event_id: pdu.event_id().to_string(),
            room_id: self.room_id.to_string(),
            stream_ordering: stream,
            depth: pdu.depth().min(i64::MAX as u64) as i64,
            event_type: pdu.kind_str(),
            state_key: pdu.state_key().map(str::to_owned),
            sender: pdu.sender().to_string(),
            origin_server_ts: pdu.origin_server_ts().min(i64::MAX as u64) as i64,
            json: pdu.to_canonical_string(),
            state_before: None,
            state_after: None,
            outlier: stream.is_none(),
            rejected: None,
            soft_failed: false,
            redacted_by: None,
        }
    }

    /// Lands an event: groups, extremities, current state, memberships, outbound queue.
    fn append(&mut self, plan: AppendPlan) {
        let pdu = plan.pdu;
        if let Some(reason) = plan.rejected {
            if self.rejected.len() >= MAX_REMEMBERED_REJECTIONS {
                self.rejected.clear();
            }
            self.rejected.insert(pdu.owned_event_id());
            let mut row = self.row_for(&pdu, None);
            row.rejected = Some(reason);
            self.pending.push(Pending {
                pdu,
                persist: PersistEvent {
                    row,
                    txn: None,
                    redaction: None,
                },
                stream: None,
                replies: plan.reply.into_iter().collect(),
            });
            return;
        }
        let stream = self.core.notifier.allocate();
        let cur_group = self.state.group;
        let simple = plan.state_before.is_none() && plan.new_current.is_none();

        let (before_group, after_group) = if simple {
            // The common case (local sends, received events extending our extremities): the
            // state before is the current state; only a state event changes it, by one entry.
            let mut after_group = cur_group;
            if !plan.soft_failed
                && let Some(k) = pdu.state_key()
            {
                let key = (pdu.kind_str(), k.to_owned());
                let group = match cur_group {
                    Some((g, d)) if d < MAX_DELTA_DEPTH => NewGroup {
                        id: self.core.next_state_group(),
                        parent: Some((g, d)),
                        entries: vec![(key.clone(), Some(pdu.event_id().to_string()))],
                    },
                    _ => {
                        let mut full = self.state.string_ids();
                        full.insert(key.clone(), pdu.event_id().to_string());
                        NewGroup {
                            id: self.core.next_state_group(),
                            parent: None,
                            entries: full.into_iter().map(|(k, v)| (k, Some(v))).collect(),
                        }
                    }
                };
                after_group = Some((group.id, depth_of(&group)));
                self.batch.groups.push(group);
                let old = self
                    .state
                    .get(&key.0, &key.1)
                    .map(|e| e.event_id().to_string());
                self.state.events.insert(
                    (StateEventType::from(key.0.as_str()), key.1.clone()),
                    Arc::clone(&pdu),
                );
                self.state.group = after_group;
                self.record_state_change(key, old, &pdu, stream);
            }
            (cur_group, after_group)
        } else {
            self.append_with_state(
                &pdu,
                stream,
                plan.state_before,
                plan.new_current,
                &plan.events,
                plan.soft_failed,
            )
        };
        let mut row = self.row_for(&pdu, Some(stream));
        row.state_before = before_group.map(|g| g.0);
        row.state_after = after_group.map(|g| g.0);
        row.soft_failed = plan.soft_failed;
        let redaction = pdu.redacts().map(|target| {
            let pl = self.state.power_levels(self.version);
            Redaction {
                target: target.to_string(),
                sender: pdu.sender().to_string(),
                has_power: pl.user_level(pdu.sender().as_str()) >= pl.redact_level(),
            }
        });
        if let Some(t) = &plan.txn {
            self.txns.insert(t.clone(), pdu.owned_event_id());
        }

        if !plan.soft_failed {
            // Forward extremities.
            let prevs: HashSet<&OwnedEventId> = pdu.prev_events().iter().collect();
            self.extremities.retain(|e| !prevs.contains(e));
            self.extremities.push(pdu.owned_event_id());
            // Which tips still have the current state after them.
            if !simple || pdu.state_key().is_some() {
                self.at_current.clear();
            }
            if simple || self.extremities.len() == 1 {
                self.at_current.insert(pdu.owned_event_id());
            }
            if self.at_current.len() > MAX_AT_CURRENT {
                let exts: HashSet<&OwnedEventId> = self.extremities.iter().collect();
                self.at_current.retain(|e| exts.contains(e));
            }
            if let Some(hash) = cited_hash(self.version, &pdu) {
                self.extremity_hashes.insert(pdu.owned_event_id(), hash);
                let exts = &self.extremities;
                self.extremity_hashes.retain(|id, _| exts.contains(id));
            }
            self.max_depth = self.max_depth.max(pdu.depth());
            self.batch.state_group = self.state.group.map(|g| g.0);
            self.batch.extremities = Some(self.extremities.iter().map(|e| e.to_string()).collect());

            // Deliveries to the other servers of the room.
            if plan.local {
                for d in self.destinations(&pdu) {
                    if !self.core.is_local(&d)
                        && !d.is_empty()
                        && let Some(fed) = self.core.federation.get()
                    {
                        self.batch.queue.push((
                            fed.sender.next_queue_id(),
                            d,
                            pdu.event_id().to_string(),
                        ));
                    }
                }
            }
        }
        self.pending.push(Pending {
            pdu,
            persist: PersistEvent {
                row,
                txn: plan.txn,
                redaction,
            },
            stream: Some(stream),
            replies: plan.reply.into_iter().collect(),
        });
    }

    /// The servers a local event goes to: those with a joined user, and a membership event's
    /// target's (Linearized Matrix rooms: what the room's role says).
    fn destinations(&mut self, pdu: &Pdu) -> BTreeSet<String> {
        if let Some(dests) = self.lm_destinations(pdu) {
            return dests;
        }
        let mut dests: BTreeSet<String> = self.state.joined_servers();
        if let Some(target) = pdu.state_key().filter(|_| pdu.membership().is_some()) {
            dests.insert(server_of(target).to_owned());
        }
        dests
    }

    /// Records one changed current-state entry (stored state, membership index).
    fn record_state_change(
        &mut self,
        key: (String, String),
        old: Option<String>,
        ev: &Arc<Pdu>,
        stream: i64,
    ) {
        if old.as_deref() == Some(ev.event_id().as_str()) {
            return;
        }
        if key.0 == "m.room.member"
            && let Some(m) = ev.membership()
        {
            let invite_state = (m == "invite").then(|| {
                let stripped = self.state.stripped_for_invite(Some(ev.sender().as_str()));
                serde_json::Value::Array(stripped).to_string()
            });
            self.batch.memberships.push(MembershipChange {
                user_id: key.1.clone(),
                membership: m,
                sender: ev.sender().to_string(),
                event_id: ev.event_id().to_string(),
                stream,
                invite_state,
            });
        }
        self.batch
            .current_state_delta
            .push((key, Some(ev.event_id().to_string())));
    }

    /// Lands an event whose state before it (or the room's state after it) is not simply the
    /// current state: state groups by difference, and the new current state from `new_current`.
    fn append_with_state(
        &mut self,
        pdu: &Arc<Pdu>,
        stream: i64,
        state_before: Option<StateIds>,
        new_current: Option<StateIds>,
        events: &HashMap<String, Arc<Pdu>>,
        soft_failed: bool,
    ) -> (GroupRef, GroupRef) {
        let cur_ids = self.state.string_ids();
        let cur_group = self.state.group;
        let (before_ids, before_group) = match state_before {
            None => (cur_ids.clone(), cur_group),
            Some(ids) => {
                match make_group(|| self.core.next_state_group(), cur_group, &cur_ids, &ids) {
                    None => (ids, cur_group),
                    Some(g) => {
                        let r = Some((g.id, depth_of(&g)));
                        self.batch.groups.push(g);
                        (ids, r)
                    }
                }
            }
        };
        let mut after_ids = before_ids.clone();
        let mut after_group = before_group;
        if let Some(k) = pdu.state_key() {
            after_ids.insert((pdu.kind_str(), k.to_owned()), pdu.event_id().to_string());
            if let Some(g) = make_group(
                || self.core.next_state_group(),
                before_group,
                &before_ids,
                &after_ids,
            ) {
                after_group = Some((g.id, depth_of(&g)));
                self.batch.groups.push(g);
            }
        }
        if !soft_failed {
            let (new_ids, new_group) = match new_current {
                None => (after_ids, after_group),
                Some(ids) if ids == after_ids => (ids, after_group),
                Some(ids) => {
                    match make_group(|| self.core.next_state_group(), cur_group, &cur_ids, &ids) {
                        None => (ids, cur_group),
                        Some(g) => {
                            let r = Some((g.id, depth_of(&g)));
                            self.batch.groups.push(g);
                            (ids, r)
                        }
                    }
                }
            };
            self.set_current_state(&cur_ids, new_ids, new_group, events, pdu, stream);
        }
        (before_group, after_group)
    }

    /// Replaces the in-memory current state and records what changed.
    fn set_current_state(
        &mut self,
        old_ids: &StateIds,
        new_ids: StateIds,
        group: Option<(i64, i32)>,
        extra: &HashMap<String, Arc<Pdu>>,
        pdu: &Arc<Pdu>,
        stream: i64,
    ) {
        let by_id: HashMap<String, Arc<Pdu>> = self
            .state
            .events
            .values()
            .map(|e| (e.event_id().to_string(), Arc::clone(e)))
            .chain(extra.iter().map(|(k, v)| (k.clone(), Arc::clone(v))))
            .chain(std::iter::once((
                pdu.event_id().to_string(),
                Arc::clone(pdu),
            )))
            .collect();
        let mut events: StateMap<Arc<Pdu>> = StateMap::new();
        for ((t, k), id) in &new_ids {
            match by_id.get(id) {
                Some(e) => {
                    events.insert((StateEventType::from(t.as_str()), k.clone()), Arc::clone(e));
                }
                None => {
                    tracing::warn!(room = %self.room_id, event = %id, "state event not in memory; state may be incomplete")
                }
            }
        }
        // What changed, for the stored current state and the membership index.
        for (key, id) in &new_ids {
            if old_ids.get(key) == Some(id) {
                continue;
            }
            if let Some(ev) = by_id.get(id).cloned() {
                self.record_state_change(key.clone(), old_ids.get(key).cloned(), &ev, stream);
            }
        }
        for key in old_ids.keys() {
            if !new_ids.contains_key(key) {
                self.batch.current_state_delta.push((key.clone(), None));
            }
        }
        self.state.events = events;
        self.state.group = group;
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    /// Local users who must see this batch: joined members, plus targets of membership events.
    fn users_to_wake(&self, memberships: &[MembershipChange]) -> Vec<String> {
        let mut users: HashSet<String> = self.state.members_with("join").into_iter().collect();
        users.extend(memberships.iter().map(|m| m.user_id.clone()));
        let suffix = format!(":{}", self.core.server_name());
        users.into_iter().filter(|u| u.ends_with(&suffix)).collect()
    }

    /// Writes the pending batch and completes it (the caller holds the mailbox meanwhile).
    fn flush_fut(&mut self) -> ResponseActFuture<Self, bool> {
        self.flush_scheduled = false;
        if self.pending.is_empty() {
            return Box::pin(actix::fut::ready(true));
        }
        let pending = std::mem::take(&mut self.pending);
        let mut job = std::mem::replace(
            &mut self.batch,
            PersistBatch {
                room_id: self.room_id.to_string(),
                ..Default::default()
            },
        );
        job.events = pending.iter().map(|p| p.persist.clone()).collect();
        let memberships = job.memberships.clone();
        let destinations: BTreeSet<String> = job.queue.iter().map(|q| q.1.clone()).collect();
        let db = self.core.db.clone();
        let shard = self.room_id.to_string();
        let started = Instant::now();
        let fut = async move { db.write(&shard, move |conn| job.run(conn)).await };
        Box::pin(fut.into_actor(self).map(move |res: StorageResult<()>, act, ctx| {
            let positions: Vec<i64> = pending.iter().filter_map(|p| p.stream).collect();
            match res {
                Ok(()) => {
                    tracing::debug!(room = %act.room_id, events = pending.len(), ms = started.elapsed().as_millis() as u64, "batch committed");
                    crate::observe::rooms::committed(act.room_id.as_str(), pending.len(), pending.iter().filter(|p| act.core.is_local(p.pdu.sender().server_name().as_str())).count());
                    let wake = act.users_to_wake(&memberships);
                    act.core.notifier.complete(&positions, wake);
                    if let Some(fed) = act.core.federation.get() {
                        for d in &destinations {
                            fed.sender.wake(d);
                        }
                    }
                    for p in pending {
                        for r in p.replies {
                            let _ = r.send(Ok(p.pdu.owned_event_id()));
                        }
                    }
                    true
                }
                Err(e) => {
                    tracing::error!(room = %act.room_id, error = %e, "batch failed; restarting room actor");
                    act.core.notifier.complete(&positions, []);
                    let msg = e.to_string();
                    for p in pending {
                        for r in p.replies {
                            let _ = r.send(Err(Error::Internal(format!("could not store event: {msg}"))));
                        }
                    }
                    act.status = Status::Broken;
                    ctx.stop();
                    false
                }
            }
        }))
    }

    fn load(core: &Core, room_id: &str) -> StorageResult<Option<Loaded>> {
        let room_id = room_id.to_owned();
        core.db.read_blocking(move |conn| {
            let Some(room) = storage::rooms::get_room(conn, &room_id)? else {
                return Ok(None);
            };
            let Some(version) = RoomVersion::parse(&room.room_version) else {
                return Err(storage::StorageError::Corrupt(format!(
                    "room {room_id} has unsupported version {}",
                    room.room_version
                )));
            };
            let ids = storage::state::current_state(conn, &room_id)?;
            let wanted: Vec<String> = ids.values().cloned().collect();
            let rows = storage::events::get_events(conn, &wanted)?;
            let mut events: StateMap<Arc<Pdu>> = StateMap::new();
            for row in rows {
                let pdu = parse_row(&row.event_id, &row.json, version)?;
                if let Some(k) = pdu.state_key() {
                    events.insert(
                        (StateEventType::from(pdu.kind_str()), k.to_owned()),
                        Arc::new(pdu),
                    );
                }
            }
            let group = match room.state_group {
                Some(g) => Some((g, storage::state::group_depth(conn, g)?)),
                None => None,
            };
            let ext_ids = storage::state::extremities(conn, &room_id)?;
            let ext_rows = storage::events::get_events(conn, &ext_ids)?;
            let max_depth = ext_rows
                .iter()
                .map(|r| r.depth.max(0) as u64)
                .max()
                .unwrap_or(0);
            let extremities = ext_ids
                .iter()
                .filter_map(|e| OwnedEventId::try_from(e.as_str()).ok())
                .collect();
            let mut extremity_hashes = HashMap::new();
            if version.cites_event_hashes() {
                for row in &ext_rows {
                    let pdu = parse_row(&row.event_id, &row.json, version)?;
                    if let Some(hash) = cited_hash(version, &pdu) {
                        extremity_hashes.insert(pdu.owned_event_id(), hash);
                    }
                }
            }
            Ok(Some(Loaded {
                version,
                state: CurrentState { events, group },
                extremities,
                extremity_hashes,
                max_depth,
            }))
        })
    }

    // ---- inbound PDUs

    /// Tries the in-memory path for a received PDU; `None` when history must be loaded.
    fn try_fast(&mut self, pdu: &Arc<Pdu>, local: bool) -> Option<InboundOutcome> {
        if self.status != Status::Ready {
            return None;
        }
        if self.rejected.contains(pdu.event_id()) {
            return Some(InboundOutcome::Rejected("rejected before".into()));
        }
        let prevs: HashSet<&OwnedEventId> = pdu.prev_events().iter().collect();
        let exts: HashSet<&OwnedEventId> = self.extremities.iter().collect();
        if prevs.is_empty() {
            return None;
        }
        if prevs != exts {
            // A fork of messages: in memory when the state after every prev event and after
            // every tip is the current state (so resolving them changes nothing).
            let fork_in_memory = pdu.state_key().is_none()
                && !self.at_current.contains(pdu.event_id())
                && prevs.iter().all(|p| self.at_current.contains(*p))
                && exts.iter().all(|e| self.at_current.contains(*e));
            if !fork_in_memory {
                return None;
            }
        }
        let index = self.state.index();
        if !pdu.auth_events().iter().all(|a| index.contains_key(a)) {
            return None;
        }
        if self
            .pending
            .iter()
            .any(|p| p.pdu.event_id() == pdu.event_id())
        {
            return Some(InboundOutcome::Accepted);
        }
        let verdict =
            auth::check_against_auth_events(self.version, pdu, |id| index.get(id).cloned())
                .and_then(|()| {
                    auth::check_state_dependent(self.version, pdu, |t, k| {
                        self.state.as_map().get(&(t.clone(), k.to_owned())).cloned()
                    })
                });
        let outcome = match &verdict {
            Ok(()) => InboundOutcome::Accepted,
            Err(e) => InboundOutcome::Rejected(e.0.clone()),
        };
        self.append(AppendPlan {
            pdu: Arc::clone(pdu),
            rejected: verdict.err().map(|e| e.0),
            soft_failed: false,
            state_before: None,
            new_current: None,
            events: HashMap::new(),
            local,
            txn: None,
            reply: None,
        });
        Some(outcome)
    }

    /// Applies the result of `inbound::prepare`.
    fn apply_prepared(
        &mut self,
        pdu: Arc<Pdu>,
        prepared: StorageResult<Prepared>,
        local: bool,
    ) -> InboundOutcome {
        match prepared {
            Err(e) => InboundOutcome::Error(e.to_string()),
            Ok(Prepared::Known) => InboundOutcome::Accepted,
            Ok(Prepared::Missing { prev, auth }) => InboundOutcome::Missing { prev, auth },
            Ok(Prepared::Rejected(reason)) => {
                self.append(AppendPlan {
                    pdu,
                    rejected: Some(reason.clone()),
                    soft_failed: false,
                    state_before: None,
                    new_current: None,
                    events: HashMap::new(),
                    local: false,
                    txn: None,
                    reply: None,
                });
                InboundOutcome::Rejected(reason)
            }
            Ok(Prepared::Ready(ready)) => {
                if self.status == Status::New {
                    // The first event we hold of a room joined over federation.
                    self.status = Status::Ready;
                    self.batch.new_room = Some((self.version.as_str().to_owned(), None));
                }
                let soft = auth::check_state_dependent(self.version, &pdu, |t, k| {
                    self.state.as_map().get(&(t.clone(), k.to_owned())).cloned()
                });
                let soft_failed = soft.is_err() && !self.state.events.is_empty();
                if let Err(e) = &soft
                    && soft_failed
                {
                    tracing::info!(room = %self.room_id, event = %pdu.event_id(), reason = %e.0, "soft-failed event");
                }
                let ready = *ready;
                self.append(AppendPlan {
                    pdu,
                    rejected: None,
                    soft_failed,
                    state_before: Some(ready.state_before),
                    new_current: Some(ready.new_current),
                    events: ready.events,
                    local,
                    txn: None,
                    reply: None,
                });
                if soft_failed {
                    InboundOutcome::SoftFailed(soft.err().map(|e| e.0).unwrap_or_default())
                } else {
                    InboundOutcome::Accepted
                }
            }
        }
    }

    fn inbound_input(&self, pdu: &Arc<Pdu>, state_hint: Option<StateIds>) -> InboundInput {
        let mut known: HashMap<String, Arc<Pdu>> = self
            .state
            .events
            .values()
            .map(|e| (e.event_id().to_string(), Arc::clone(e)))
            .collect();
        for p in &self.pending {
            known.insert(p.pdu.event_id().to_string(), Arc::clone(&p.pdu));
        }
        InboundInput {
            version: self.version,
            pdu: Arc::clone(pdu),
            extremities: self.extremities.iter().map(|e| e.to_string()).collect(),
            current_ids: self.state.string_ids(),
            known,
            state_hint,
        }
    }

    /// Processes received PDUs one by one, then commits them together.
    fn process_inbound(
        mut items: VecDeque<(Arc<Pdu>, Option<StateIds>)>,
        mut results: Vec<InboundOutcome>,
        local: bool,
    ) -> ResponseActFuture<Self, Vec<InboundOutcome>> {
        Box::pin(actix::fut::ready(()).then(move |(), act: &mut Self, _ctx| {
            let Some((pdu, hint)) = items.pop_front() else {
                return Box::pin(act.flush_fut().map(move |ok, _, _| {
                    if ok {
                        results
                    } else {
                        results
                            .into_iter()
                            .map(|_| InboundOutcome::Error("storage failure".into()))
                            .collect()
                    }
                })) as ResponseActFuture<Self, Vec<InboundOutcome>>;
            };
            if hint.is_none()
                && let Some(outcome) = act.try_fast(&pdu, local)
            {
                results.push(outcome);
                return Self::process_inbound(items, results, local);
            }
            Box::pin(
                act.flush_fut()
                    .then(move |_, act: &mut Self, _| {
                        let input = act.inbound_input(&pdu, hint);
                        let db = act.core.db.clone();
                        let timer = crate::observe::metrics::SlowPath::start("inbound_prepare");
                        async move {
                            (
                                pdu,
                                timer.finish(db.read(move |c| inbound::prepare(c, input)).await),
                            )
                        }
                        .into_actor(act)
                    })
                    .then(move |(pdu, prepared), act: &mut Self, _| {
                        let outcome = act.apply_prepared(pdu, prepared, local);
                        results.push(outcome);
                        Self::process_inbound(items, results, local)
                    }),
            )
        }))
    }
}

/// Parses a stored event row back into a PDU.
pub fn parse_row(event_id: &str, json: &str, version: RoomVersion) -> StorageResult<Pdu> {
    let obj = weft_protocol::canonical::parse_object(json.as_bytes())
        .map_err(|e| storage::StorageError::Corrupt(format!("{event_id}: {e}")))?;
    let id = OwnedEventId::try_from(event_id)
        .map_err(|e| storage::StorageError::Corrupt(format!("{event_id}: {e}")))?;
    Pdu::from_json_with_id(id, obj, version)
        .map_err(|e| storage::StorageError::Corrupt(format!("{event_id}: {e}")))
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.core.config.actors.room_mailbox);
        if self.status == Status::Loading {
            let core = Arc::clone(&self.core);
            let room_id = self.room_id.to_string();
            let fut = async move {
                tokio::task::spawn_blocking(move || RoomActor::load(&core, &room_id))
                    .await
                    .map_err(|e| storage::StorageError::Task(e.to_string()))?
            };
            ctx.wait(fut.into_actor(self).map(|res, act, _ctx| match res {
                Ok(Some(loaded)) => {
                    act.version = loaded.version;
                    act.state = loaded.state;
                    act.extremities = loaded.extremities;
                    if let [only] = act.extremities.as_slice() {
                        // One tip: the current state is the state after it.
                        act.at_current.insert(only.clone());
                    }
                    act.extremity_hashes = loaded.extremity_hashes;
                    act.max_depth = loaded.max_depth;
                    act.status = Status::Ready;
                    act.lm_set_role();
                }
                Ok(None) => act.status = Status::Missing,
                Err(e) => {
                    tracing::error!(room = %act.room_id, error = %e, "could not load room");
                    act.status = Status::Broken;
                }
            }));
        }
        let idle = self.core.config.room_idle();
        ctx.run_interval(Duration::from_secs(1).max(idle / 4), move |act, ctx| {
            let limit = if matches!(act.status, Status::Missing | Status::Broken) {
                Duration::from_secs(5).min(idle)
            } else {
                idle
            };
            if act.pending.is_empty() && act.last_active.elapsed() >= limit {
                tracing::debug!(room = %act.room_id, "stopping idle room actor");
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        let me = ctx.address();
        let mut map = self.actors.lock();
        if map.get(&self.room_id).is_some_and(|a| *a == me) {
            map.remove(&self.room_id);
        }
    }
}

impl Handler<Flush> for RoomActor {
    type Result = ();
    fn handle(&mut self, _msg: Flush, ctx: &mut Self::Context) {
        let fut = self.flush_fut().map(|_, _, _| ());
        ctx.wait(fut);
    }
}

fn reply_now<T: Send + 'static>(v: Result<T>) -> ResponseFuture<Result<T>> {
    Box::pin(async move { v })
}

fn await_reply(
    rx: oneshot::Receiver<Result<OwnedEventId>>,
) -> ResponseFuture<Result<OwnedEventId>> {
    Box::pin(async move {
        rx.await.unwrap_or_else(|_| {
            Err(Error::internal(
                "room actor stopped before the event was stored",
            ))
        })
    })
}

impl Handler<SendEvent> for RoomActor {
    type Result = ResponseFuture<Result<OwnedEventId>>;

    fn handle(&mut self, msg: SendEvent, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if let Err(e) = self.check_ready() {
            return reply_now(Err(e));
        }
        if let Some(txn) = &msg.txn
            && let Some(id) = self.txns.get(txn).cloned()
        {
            // A retry of a transaction this actor already took: same answer, once durable.
            if let Some(p) = self.pending.iter_mut().find(|p| p.pdu.event_id() == id) {
                let (tx, rx) = oneshot::channel();
                p.replies.push(tx);
                return await_reply(rx);
            }
            return reply_now(Ok(id));
        }
        if let Some(sent_to_hub) = self.lm_send(&msg) {
            return sent_to_hub;
        }
        let pdu = match self.build_local(&msg.draft) {
            Ok(p) => p,
            Err(e) => return reply_now(Err(e)),
        };
        let (tx, rx) = oneshot::channel();
        self.append(AppendPlan {
            pdu: Arc::new(pdu),
            rejected: None,
            soft_failed: false,
            state_before: None,
            new_current: None,
            events: HashMap::new(),
            local: true,
            txn: msg.txn,
            reply: Some(tx),
        });
        self.schedule_flush(ctx);
        await_reply(rx)
    }
}

impl Handler<InitRoom> for RoomActor {
    type Result = ResponseFuture<Result<Vec<OwnedEventId>>>;

    fn handle(&mut self, msg: InitRoom, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if self.status != Status::New {
            return reply_now(Err(Error::RoomInUse("room already exists".into())));
        }
        if msg.create.room_id() != &*self.room_id {
            return reply_now(Err(Error::internal("create event names another room")));
        }
        self.version = msg.version;
        self.lm_set_role();
        let empty = StateMap::new();
        if let Err(e) = auth::check_against_state(self.version, &msg.create, &empty) {
            return reply_now(Err(Error::BadJson(format!(
                "invalid create event: {}",
                e.0
            ))));
        }
        self.status = Status::Ready;
        self.batch.new_room = Some((
            self.version.as_str().to_owned(),
            Some(msg.create.sender().to_string()),
        ));
        let mut receivers = Vec::new();
        let mut failure = None;
        let mut next = Some(msg.create);
        let mut drafts = msg.drafts.iter();
        loop {
            let pdu = match next.take() {
                Some(p) => p,
                None => match drafts.next() {
                    None => break,
                    Some(d) => match self.build_local(d) {
                        Ok(p) => p,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    },
                },
            };
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            self.append(AppendPlan {
                pdu: Arc::new(pdu),
                rejected: None,
                soft_failed: false,
                state_before: None,
                new_current: None,
                events: HashMap::new(),
                local: true,
                txn: None,
                reply: Some(tx),
            });
        }
        if let Some(e) = failure {
            // Nothing was written yet: drop the whole room.
            let positions: Vec<i64> = self.pending.iter().filter_map(|p| p.stream).collect();
            self.core.notifier.complete(&positions, []);
            self.pending.clear();
            self.status = Status::Broken;
            ctx.stop();
            return reply_now(Err(e));
        }
        self.schedule_flush(ctx);
        Box::pin(async move {
            let mut ids = Vec::with_capacity(receivers.len());
            for rx in receivers {
                ids.push(
                    rx.await
                        .unwrap_or_else(|_| Err(Error::internal("room actor stopped")))?,
                );
            }
            Ok(ids)
        })
    }
}

impl Handler<InboundPdus> for RoomActor {
    type Result = AtomicResponse<Self, Vec<InboundOutcome>>;

    fn handle(&mut self, msg: InboundPdus, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let fail_all = |reason: &str, n: usize| {
            AtomicResponse::new(Box::pin(actix::fut::ready(vec![
                InboundOutcome::Error(
                    reason.to_owned()
                );
                n
            ])))
        };
        if self.lm.is_some() || msg.version.is_some_and(|v| v.is_linearized()) {
            // LM rooms take PDUs in line order only (`ParticipantReceive`, `HubAppend`).
            return fail_all(
                "a Linearized Matrix room takes no DAG input",
                msg.pdus.len(),
            );
        }
        match self.status {
            Status::Ready => {}
            Status::New if msg.version.is_some() => {
                if let Some(v) = msg.version {
                    self.version = v;
                }
            }
            Status::Missing if msg.version.is_some() => {
                // A room we have no copy of yet, being joined now.
                self.status = Status::New;
                if let Some(v) = msg.version {
                    self.version = v;
                }
            }
            Status::Missing | Status::New => return fail_all("unknown room", msg.pdus.len()),
            Status::Loading | Status::Broken => {
                return fail_all("room unavailable", msg.pdus.len());
            }
        }
        let items: VecDeque<(Arc<Pdu>, Option<StateIds>)> = msg
            .pdus
            .into_iter()
            .map(|(p, h)| (Arc::new(p), h))
            .collect();
        AtomicResponse::new(Self::process_inbound(items, Vec::new(), msg.local))
    }
}

impl Handler<AppendHistory> for RoomActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: AppendHistory, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if let Err(e) = self.check_ready() {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(e))));
        }
        if self.lm.is_some() {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(Error::forbidden(
                "a Linearized Matrix room takes no DAG history",
            )))));
        }
        self.batch.groups.extend(msg.groups);
        for (pdu, row) in msg.events {
            if row.rejected.is_some() {
                self.rejected.insert(pdu.owned_event_id());
            }
            self.pending.push(Pending {
                pdu,
                persist: PersistEvent {
                    row,
                    txn: None,
                    redaction: None,
                },
                // Backfill positions are not the notifier's: nothing to complete.
                stream: None,
                replies: Vec::new(),
            });
        }
        AtomicResponse::new(Box::pin(self.flush_fut().map(|ok, _, _| {
            if ok {
                Ok(())
            } else {
                Err(Error::internal("could not store backfilled history"))
            }
        })))
    }
}

impl Handler<GetSnapshot> for RoomActor {
    type Result = Result<RoomSnapshot>;

    fn handle(&mut self, _msg: GetSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        self.check_ready()?;
        Ok(RoomSnapshot {
            version: self.version,
            state: self.state.clone(),
            extremities: self.extremities.clone(),
            extremity_hashes: self.extremity_hashes.clone(),
            max_depth: self.max_depth,
        })
    }
}

impl Handler<BuildEvent> for RoomActor {
    type Result = Result<(Pdu, RoomVersion, Vec<serde_json::Value>)>;

    fn handle(&mut self, msg: BuildEvent, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        self.check_ready()?;
        let pdu = self.build_local(&msg.draft)?;
        let inviter = msg.draft.sender.to_string();
        Ok((
            pdu,
            self.version,
            self.state.invite_state_pdus(Some(&inviter)),
        ))
    }
}
