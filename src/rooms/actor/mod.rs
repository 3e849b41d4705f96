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
//! * Memory path ([`super::admission::memory`]): its prev events and every forward
//!   extremity are recent events whose states after them the actor remembers (the current
//!   state, or a shared snapshot of an earlier one), and every event its checks and any
//!   state resolution look at is in memory. The common cases — extending the tip, several
//!   chains forked from one point, a state event on one of them — need no I/O.
//! * Otherwise the pending batch is flushed, and [`super::admission::prepare`] loads what it
//!   needs on a blocking thread (state after its prev events, state resolution, forks) while
//!   the actor holds its mailbox (`ctx.wait`); then the actor soft-fail-checks it
//!   against the current state and appends it. Missing prev or auth events are reported back
//!   to the caller, which fetches them from the network: the actor never waits on a peer.
//! * Once every PDU of the message is decided, the message's outcomes (and its `/send`
//!   transaction's answer) wait for the commit of the pending batch like a local event's
//!   reply: they go to `Flush` with the batch, and the writer's after-commit hook answers the
//!   caller directly. Messages that queued up meanwhile — other origins' transactions into
//!   the same room — are decided before that `Flush` runs and share its commit.

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
use super::admission::memory::{self, After, Recent, Snapshot};
use super::admission::prepare::{self as inbound, InboundInput, Prepared};
use super::admission::soft_fail;
use super::messages::{
    AppendHistory, BuildEvent, GetSnapshot, InboundOutcome, InboundPdus, InboundTxnRecord,
    InitRoom, RoomSnapshot, SendEvent, TxnKey,
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

mod append;
mod flush;
mod load;
mod local;
mod out_of_band;
mod outliers;
mod partial;
mod received;

pub use load::parse_row;

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
    /// Received messages waiting for the commit of the pending batch (`received.rs`).
    inbound_waiters: Vec<received::InboundWaiter>,
    flush_scheduled: bool,
    last_active: Instant,
    /// DAG room, Linearized Matrix hub or participant: set with the version
    /// ([`RoomActor::set_version`]) and asked, never re-derived.
    kind: super::kind::RoomKind,
    /// Events rejected since the actor started (older ones are found in the database, by
    /// the admission step before the actor and by `admission::prepare`): rejection is
    /// permanent, so the in-memory path never re-checks one against a newer state.
    rejected: HashSet<OwnedEventId>,
    /// The states after recent events (bounded): a received PDU whose prev events and
    /// every forward extremity are here is admitted in memory, forks and small
    /// resolutions included (forks at memory speed; see `admission::memory`).
    recent: Recent,
    /// Set while the room is partial-state (`rooms::partial_state`).
    partial: Option<partial::Partial>,
}

/// Most rejected event IDs an actor remembers (then it starts over; the database remembers
/// all of them).
const MAX_REMEMBERED_REJECTIONS: usize = 10_000;

/// Flush the pending batch (sent by the actor to itself after the mailbox is drained).
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// The reference hash a v1/v2 event cites `pdu` with (`None` in later versions).
fn cited_hash(version: RoomVersion, pdu: &Pdu) -> Option<String> {
    version
        .cites_event_hashes()
        .then(|| weft_protocol::pdu::reference_hash(&pdu.json(), version).ok())
        .flatten()
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
            inbound_waiters: Vec::new(),
            flush_scheduled: false,
            last_active: Instant::now(),
            kind: super::kind::RoomKind::Dag,
            rejected: HashSet::new(),
            recent: Recent::default(),
            partial: None,
        }
    }

    /// The one seam where the room's kind is chosen: with its version.
    fn set_version(&mut self, version: RoomVersion) {
        self.version = version;
        self.kind = super::kind::RoomKind::of(version, &self.room_id, self.core.server_name());
    }

    fn check_ready(&self) -> Result<()> {
        match self.status {
            Status::Ready => Ok(()),
            Status::Missing | Status::New => Err(Error::not_found("unknown room")),
            Status::Loading | Status::Broken => Err(Error::internal("room is unavailable")),
        }
    }
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
                    act.set_version(loaded.version);
                    act.state = loaded.state;
                    act.extremities = loaded.extremities;
                    if let [only] = act.extremities.as_slice() {
                        // One tip: the current state is the state after it.
                        let now = act.recent.current();
                        act.recent.record(only.clone(), now);
                    }
                    act.extremity_hashes = loaded.extremity_hashes;
                    act.max_depth = loaded.max_depth;
                    act.partial = loaded.partial;
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
        // What the actor held (its state, recent events) is freed now: hand it back.
        crate::alloc::release_soon();
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
