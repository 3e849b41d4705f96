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
//!    (`persist::PersistBatch`) and the actor *waits* for the commit (`ctx.wait`): messages
//!    arriving meanwhile stay in the mailbox and form the next batch (group commit).
//! 5. On commit: replies go out, the notifier wakes the room's local users' `/sync`, and the
//!    federation sender gets the PDUs. On failure: every pending reply gets the error and the
//!    actor stops, so the next message starts a fresh actor from what is on disk.
//!
//! The actor never waits on the network: anything remote is done by callers before or after
//! talking to it.

use std::collections::HashSet;
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
use super::messages::{GetSnapshot, InitRoom, RoomSnapshot, SendEvent, TxnKey};
use super::persist::{MembershipChange, PersistBatch, PersistEvent};
use super::state::CurrentState;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::events::NewEvent;
use crate::storage::{self, StorageResult};

/// Most `prev_events` a local event cites.
const MAX_PREV_EVENTS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Loading from the database (the mailbox is held until done).
    Loading,
    /// A new room: waiting for `InitRoom`.
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
    stream: i64,
    replies: Vec<oneshot::Sender<Result<OwnedEventId>>>,
}

pub struct RoomActor {
    core: Arc<Core>,
    actors: ActorMap,
    room_id: OwnedRoomId,
    status: Status,
    version: RoomVersion,
    state: CurrentState,
    extremities: Vec<OwnedEventId>,
    max_depth: u64,
    /// Transactions seen since the actor started (older ones are found in the database by
    /// the handler before it asks the actor).
    txns: std::collections::HashMap<TxnKey, OwnedEventId>,
    pending: Vec<Pending>,
    /// Set when the pending batch creates the room.
    new_room: Option<(String, Option<String>)>,
    flush_scheduled: bool,
    last_active: Instant,
}

/// Flush the pending batch (sent by the actor to itself after the mailbox is drained).
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// What loading a room from storage yields.
struct Loaded {
    version: RoomVersion,
    state: CurrentState,
    extremities: Vec<OwnedEventId>,
    max_depth: u64,
}

impl RoomActor {
    pub(super) fn new(
        core: Arc<Core>,
        actors: ActorMap,
        room_id: OwnedRoomId,
        fresh: Option<RoomVersion>,
    ) -> Self {
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
            max_depth: 0,
            txns: Default::default(),
            pending: Vec::new(),
            new_room: None,
            flush_scheduled: false,
            last_active: Instant::now(),
        }
    }

    fn check_ready(&self) -> Result<()> {
        match self.status {
            Status::Ready => Ok(()),
            Status::Missing | Status::New => Err(Error::not_found("unknown room")),
            Status::Loading | Status::Broken => Err(Error::internal("room is unavailable")),
        }
    }

    /// Builds a local event on top of the current position, checks it, and applies it.
    fn build_local(&self, draft: &EventDraft) -> Result<Pdu> {
        let content = &draft.content;
        let auth_events = auth::select_auth_events(
            self.version,
            &draft.kind,
            &draft.sender,
            draft.state_key.as_deref(),
            content,
            &self.state.ids(),
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
        let pdu = builder::build_pdu(&draft, &position, self.core.server_name(), &self.core.key)
            .map_err(|e| match e {
                builder::BuildError::Pdu(weft_protocol::pdu::PduError::TooLarge(_)) => {
                    Error::TooLarge
                }
                e => Error::BadJson(e.to_string()),
            })?;
        auth::check_against_state(self.version, &pdu, self.state.as_map())
            .map_err(|e| Error::Forbidden(format!("event not allowed: {}", e.0)))?;
        Ok(pdu)
    }

    /// Appends an accepted event to the in-memory room and the pending batch.
    fn append(
        &mut self,
        pdu: Pdu,
        txn: Option<TxnKey>,
        reply: Option<oneshot::Sender<Result<OwnedEventId>>>,
    ) {
        let pdu = Arc::new(pdu);
        let stream = self.core.notifier.allocate();
        let state_before = self.state.group.map(|(g, _)| g);
        let mut group = None;
        let mut membership = None;
        if pdu.is_state() {
            let new_group = self.state.apply(&pdu, self.core.next_state_group());
            group = Some(new_group);
            if let (Some(m), Some(target)) = (pdu.membership(), pdu.state_key()) {
                let invite_state = (m == "invite").then(|| {
                    serde_json::Value::Array(self.state.stripped_for_invite()).to_string()
                });
                membership = Some(MembershipChange {
                    user_id: target.to_owned(),
                    membership: m,
                    sender: pdu.sender().to_string(),
                    invite_state,
                });
            }
        }
        self.extremities = vec![pdu.owned_event_id()];
        self.max_depth = self.max_depth.max(pdu.depth());
        if let Some(t) = &txn {
            self.txns.insert(t.clone(), pdu.owned_event_id());
        }
        let row = NewEvent {
            event_id: pdu.event_id().to_string(),
            room_id: self.room_id.to_string(),
            stream_ordering: Some(stream),
            depth: pdu.depth() as i64,
            event_type: pdu.kind_str(),
            state_key: pdu.state_key().map(str::to_owned),
            sender: pdu.sender().to_string(),
            origin_server_ts: pdu.origin_server_ts() as i64,
            json: pdu.to_canonical_string(),
            state_before,
            outlier: false,
            rejected: None,
            soft_failed: false,
            redacted_by: None,
        };
        let persist = PersistEvent {
            row,
            group,
            membership,
            txn,
            redacts: pdu.redacts().map(|r| r.to_string()),
        };
        self.pending.push(Pending {
            pdu,
            persist,
            stream,
            replies: reply.into_iter().collect(),
        });
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    /// Local users who must see this batch: joined members, plus targets of membership events.
    fn users_to_wake(&self, batch: &[Pending]) -> Vec<String> {
        let mut users: HashSet<String> = self.state.members_with("join").into_iter().collect();
        for p in batch {
            if let Some(m) = &p.persist.membership {
                users.insert(m.user_id.clone());
            }
        }
        let suffix = format!(":{}", self.core.server_name());
        users.into_iter().filter(|u| u.ends_with(&suffix)).collect()
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.flush_scheduled = false;
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let mut current_state_delta = Vec::new();
        for p in &batch {
            if let Some(k) = p.pdu.state_key() {
                current_state_delta.push((
                    (p.pdu.kind_str(), k.to_owned()),
                    Some(p.pdu.event_id().to_string()),
                ));
            }
        }
        let job = PersistBatch {
            room_id: self.room_id.to_string(),
            new_room: self.new_room.take(),
            events: batch.iter().map(|p| p.persist.clone()).collect(),
            current_state_delta,
            extremities: Some(self.extremities.iter().map(|e| e.to_string()).collect()),
            state_group: self.state.group.map(|(g, _)| g),
        };
        let db = self.core.db.clone();
        let shard = self.room_id.to_string();
        let started = Instant::now();
        let fut = async move { db.write(&shard, move |conn| job.run(conn)).await };
        ctx.wait(fut.into_actor(self).map(move |res: StorageResult<()>, act, ctx| {
            let positions: Vec<i64> = batch.iter().map(|p| p.stream).collect();
            match res {
                Ok(()) => {
                    tracing::debug!(room = %act.room_id, events = batch.len(), ms = started.elapsed().as_millis() as u64, "batch committed");
                    let wake = act.users_to_wake(&batch);
                    act.core.notifier.complete(&positions, wake);
                    for p in batch {
                        for r in p.replies {
                            let _ = r.send(Ok(p.pdu.owned_event_id()));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(room = %act.room_id, error = %e, "batch failed; restarting room actor");
                    act.core.notifier.complete(&positions, []);
                    let msg = e.to_string();
                    for p in batch {
                        for r in p.replies {
                            let _ = r.send(Err(Error::Internal(format!("could not store event: {msg}"))));
                        }
                    }
                    act.status = Status::Broken;
                    ctx.stop();
                }
            }
        }));
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
            Ok(Some(Loaded {
                version,
                state: CurrentState { events, group },
                extremities,
                max_depth,
            }))
        })
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
                    act.max_depth = loaded.max_depth;
                    act.status = Status::Ready;
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
        self.flush(ctx);
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
            if let Some(p) = self.pending.iter_mut().find(|p| *p.pdu.event_id() == id) {
                let (tx, rx) = oneshot::channel();
                p.replies.push(tx);
                return await_reply(rx);
            }
            return reply_now(Ok(id));
        }
        let pdu = match self.build_local(&msg.draft) {
            Ok(p) => p,
            Err(e) => return reply_now(Err(e)),
        };
        let (tx, rx) = oneshot::channel();
        self.append(pdu, msg.txn, Some(tx));
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
        let empty = StateMap::new();
        if let Err(e) = auth::check_against_state(self.version, &msg.create, &empty) {
            return reply_now(Err(Error::BadJson(format!(
                "invalid create event: {}",
                e.0
            ))));
        }
        self.status = Status::Ready;
        self.new_room = Some((
            self.version.as_str().to_owned(),
            Some(msg.create.sender().to_string()),
        ));
        let mut receivers = Vec::new();
        let (tx, rx) = oneshot::channel();
        receivers.push(rx);
        self.append(msg.create, None, Some(tx));
        for draft in &msg.drafts {
            match self.build_local(draft) {
                Ok(pdu) => {
                    let (tx, rx) = oneshot::channel();
                    receivers.push(rx);
                    self.append(pdu, None, Some(tx));
                }
                Err(e) => {
                    // Nothing was written yet: drop the whole room.
                    let positions: Vec<i64> = self.pending.iter().map(|p| p.stream).collect();
                    self.core.notifier.complete(&positions, []);
                    self.pending.clear();
                    self.status = Status::Broken;
                    ctx.stop();
                    return reply_now(Err(e));
                }
            }
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

impl Handler<GetSnapshot> for RoomActor {
    type Result = Result<RoomSnapshot>;

    fn handle(&mut self, _msg: GetSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        self.check_ready()?;
        Ok(RoomSnapshot {
            version: self.version,
            state: self.state.clone(),
            extremities: self.extremities.clone(),
            max_depth: self.max_depth,
        })
    }
}
