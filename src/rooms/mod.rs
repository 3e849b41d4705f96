//! Rooms: one actor per room ([`actor::RoomActor`]), started on demand by the
//! [`RoomRegistry`] and stopped when idle.
//!
//! Room actors live on a fixed set of arbiters (threads), a room always on the same one, so
//! rooms run in parallel while each room's events are strictly ordered by its actor.
//!
//! In cluster mode (`docs/CLUSTER.md`) [`RoomRegistry::send`] first asks the cluster where
//! the room lives: here, under a lease epoch (an actor started under an older epoch, or while
//! the room was not ours, is replaced by a fresh one loaded from the database), or on another
//! node, to which the message is forwarded ([`remote`]).

pub mod access;
pub mod actor;
pub mod admission;
pub mod create;
pub mod directory;
pub mod kind;
pub mod linearized;
pub mod messages;
pub mod outliers;
pub mod partial_state;
pub mod persist;
pub mod receipts;
pub mod remote;
pub mod state;
pub mod typing;
pub mod view;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use parking_lot::Mutex;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};
use weft_protocol::RoomVersion;
use weft_protocol::builder::EventDraft;

use crate::core::Core;
use crate::error::{Error, Result};
use actor::RoomActor;

pub(crate) type ActorMap = Arc<Mutex<HashMap<OwnedRoomId, Addr<RoomActor>>>>;

pub struct RoomRegistry {
    core: Arc<Core>,
    actors: ActorMap,
    arbiters: Vec<ArbiterHandle>,
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Cluster mode: the lease epoch each live actor was started under (0: not owned here).
    epochs: Mutex<HashMap<OwnedRoomId, i64>>,
    /// Room versions read before (a room's version never changes), so that `/send` can
    /// parse a transaction's PDUs before its first database read. A hint only: the reader
    /// still checks that the room is held ([`RoomRegistry::cached_version`]).
    versions: Mutex<HashMap<String, RoomVersion>>,
}

/// Past this many remembered versions the cache starts over (it is only a shortcut).
const VERSIONS_CACHED: usize = 100_000;

impl RoomRegistry {
    /// Starts the arbiters that host room actors.
    pub fn new(core: Arc<Core>) -> Self {
        let threads = match core.config.actors.room_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        };
        let arbiters = (0..threads).map(|_| Arbiter::new().handle()).collect();
        Self {
            core,
            actors: Arc::new(Mutex::new(HashMap::new())),
            arbiters,
            cluster: std::sync::OnceLock::new(),
            epochs: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// The version of `room` as read before, if it was: a hint to parse PDUs with, never
    /// proof that the room is held here.
    pub fn cached_version(&self, room: &str) -> Option<RoomVersion> {
        self.versions.lock().get(room).copied()
    }

    /// Remembers the version read for `room` ([`RoomRegistry::cached_version`]).
    pub fn remember_version(&self, room: &str, version: RoomVersion) {
        let mut v = self.versions.lock();
        if v.len() >= VERSIONS_CACHED && !v.contains_key(room) {
            v.clear();
        }
        v.insert(room.to_owned(), version);
    }

    /// Cluster mode: routes every room message through `cluster` from now on.
    pub fn attach_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Cluster mode: the actor of a room started under lease `epoch` (0: not owned here),
    /// replacing one started under another epoch; `fresh` starts a new room's actor.
    fn get_under(
        &self,
        room_id: &RoomId,
        epoch: i64,
        fresh: Option<RoomVersion>,
    ) -> Addr<RoomActor> {
        let mut map = self.actors.lock();
        let mut epochs = self.epochs.lock();
        if let Some(addr) = map.get(room_id)
            && addr.connected()
            && epochs.get(room_id) == Some(&epoch)
        {
            return addr.clone();
        }
        let addr = self.start(room_id, fresh);
        map.insert(room_id.to_owned(), addr.clone());
        epochs.retain(|r, _| map.contains_key(r));
        epochs.insert(room_id.to_owned(), epoch);
        addr
    }

    fn arbiter_for(&self, room_id: &RoomId) -> &ArbiterHandle {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in room_id.as_str().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100000001b3);
        }
        &self.arbiters[(h % self.arbiters.len() as u64) as usize]
    }

    fn start(&self, room_id: &RoomId, fresh: Option<RoomVersion>) -> Addr<RoomActor> {
        let core = Arc::clone(&self.core);
        let actors = Arc::clone(&self.actors);
        let id = room_id.to_owned();
        RoomActor::start_in_arbiter(self.arbiter_for(room_id), move |_ctx| {
            RoomActor::new(core, actors, id, fresh)
        })
    }

    /// The actor of an existing room (loading it if needed). Unknown rooms answer
    /// `M_NOT_FOUND` to every message.
    pub fn get(&self, room_id: &RoomId) -> Addr<RoomActor> {
        let mut map = self.actors.lock();
        if let Some(addr) = map.get(room_id)
            && addr.connected()
        {
            return addr.clone();
        }
        let addr = self.start(room_id, None);
        map.insert(room_id.to_owned(), addr.clone());
        addr
    }

    /// Starts the actor of a room being created here.
    pub fn create(&self, room_id: &RoomId, version: RoomVersion) -> Result<()> {
        if self.cluster.get().is_some() {
            // The owner starts it when `InitRoom` arrives (`Forward::creates`).
            return Ok(());
        }
        let mut map = self.actors.lock();
        if map.get(room_id).is_some_and(|a| a.connected()) {
            return Err(Error::RoomInUse("room already exists".into()));
        }
        let addr = self.start(room_id, Some(version));
        map.insert(room_id.to_owned(), addr);
        Ok(())
    }

    /// Sends a local event with no transaction ID ([`messages::SendEvent::draft`]) and
    /// answers its event ID.
    pub async fn send_draft(&self, room_id: &RoomId, draft: EventDraft) -> Result<OwnedEventId> {
        self.send(room_id, messages::SendEvent::draft(draft))
            .await?
    }

    /// Sends `sender`'s `m.room.member` event for `target` (a join, leave, invite, kick, ban
    /// or unban), with the client's `reason` when it gave a non-empty one.
    pub async fn send_member(
        &self,
        room_id: &RoomId,
        sender: &OwnedUserId,
        target: &str,
        mut content: serde_json::Value,
        reason: Option<String>,
    ) -> Result<OwnedEventId> {
        if let Some(r) = reason.filter(|r| !r.is_empty()) {
            content["reason"] = serde_json::Value::String(r);
        }
        let draft = EventDraft::state("m.room.member", target, sender.clone(), content);
        self.send_draft(room_id, draft).await
    }

    /// Sends a message to a room's actor, waiting for mailbox space (backpressure). If the
    /// actor stopped in between (idle, or restarting after a failed write), a fresh one is
    /// started and the message sent again.
    pub async fn send<M>(&self, room_id: &RoomId, msg: M) -> Result<M::Result>
    where
        M: Message + remote::Forward + Send + Clone + 'static,
        M::Result: Send,
        RoomActor: Handler<M>,
    {
        let Some(cluster) = self.cluster.get() else {
            let r = self.send_local(room_id, msg, None).await;
            if M::READ_YOUR_WRITES && r.is_ok() {
                let upto = self.core.notifier.last_position();
                if !(self.core.notifier)
                    .wait_for(upto, std::time::Duration::from_secs(2))
                    .await
                {
                    tracing::warn!(room_id = %room_id, upto, "frontier slow to pass a local write");
                }
            }
            return r;
        };
        let mut last = None;
        for attempt in 0..5u64 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            let node = match cluster.route(room_id.as_str()).await? {
                crate::cluster::Route::Local { epoch } => {
                    let r = self.send_local(room_id, msg, Some(epoch)).await;
                    // The frontier also waits for the other nodes' safe points: answer once
                    // what was just written is readable here.
                    let upto = self.core.notifier.last_position();
                    let _ = (self.core.notifier)
                        .wait_for(upto, std::time::Duration::from_secs(2))
                        .await;
                    return r;
                }
                crate::cluster::Route::Remote(node) => node,
            };
            let Some(mut req) = msg.encode() else {
                // No wire form: run here on an actor of its own, loaded from the database now
                // (a cached one may predate what the owner wrote since, or the room itself);
                // its writes are fenced unless they are history only.
                return self.send_detached(room_id, msg).await;
            };
            req.room_id = room_id.to_string();
            let body = serde_json::to_vec(&req).map_err(|e| Error::internal(e.to_string()))?;
            match cluster.forward(&node, body).await {
                Ok(bytes) => match serde_json::from_slice::<remote::Reply>(&bytes) {
                    Ok(remote::Reply::Done { value, upto }) => {
                        // Read-your-writes here: the client may sync on this node next.
                        self.core.notifier.note_remote(upto, Vec::new());
                        if !self
                            .core
                            .notifier
                            .wait_for(upto, std::time::Duration::from_secs(2))
                            .await
                        {
                            tracing::warn!(room_id = %room_id, upto, "cluster: frontier slow to pass a forwarded write");
                        }
                        return M::reply_from_wire(value);
                    }
                    Ok(remote::Reply::NotOwner) => {
                        last = Some(Error::Unreachable(format!(
                            "{node} no longer owns {room_id}"
                        )))
                    }
                    Ok(remote::Reply::Failed { errcode, error }) => {
                        let failed = serde_json::json!({
                            "kind": "failed", "errcode": errcode, "error": error
                        });
                        return M::reply_from_wire(failed);
                    }
                    Err(e) => return Err(Error::internal(format!("cluster answer: {e}"))),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(Error::Overloaded))
    }

    /// Runs a message forwarded by another node: `None` when this node does not own the room.
    pub async fn send_here<M>(&self, room_id: &RoomId, msg: M) -> Result<Option<M::Result>>
    where
        M: Message + remote::Forward + Send + Clone + 'static,
        M::Result: Send,
        RoomActor: Handler<M>,
    {
        let Some(cluster) = self.cluster.get() else {
            return self.send_local(room_id, msg, None).await.map(Some);
        };
        match cluster.route(room_id.as_str()).await? {
            crate::cluster::Route::Local { epoch } => {
                self.send_local(room_id, msg, Some(epoch)).await.map(Some)
            }
            crate::cluster::Route::Remote(_) => Ok(None),
        }
    }

    /// Cluster mode, a message without a wire form for a room another node owns: a fresh
    /// actor, never cached (it stops when idle), answers it.
    async fn send_detached<M>(&self, room_id: &RoomId, msg: M) -> Result<M::Result>
    where
        M: Message + remote::Forward + Send + Clone + 'static,
        M::Result: Send,
        RoomActor: Handler<M>,
    {
        let _waiting = crate::observe::rooms::global().enter(room_id.as_str());
        let addr = self.start(room_id, msg.creates());
        Ok(addr.send(msg).await?)
    }

    async fn send_local<M>(&self, room_id: &RoomId, msg: M, epoch: Option<i64>) -> Result<M::Result>
    where
        M: Message + remote::Forward + Send + Clone + 'static,
        M::Result: Send,
        RoomActor: Handler<M>,
    {
        let _waiting = crate::observe::rooms::global().enter(room_id.as_str());
        let fresh = msg.creates();
        let mut last = None;
        for attempt in 0..3 {
            let addr = match epoch {
                Some(e) => self.get_under(room_id, e, fresh.filter(|_| attempt == 0)),
                None => self.get(room_id),
            };
            match addr.send(msg.clone()).await {
                Ok(r) => return Ok(r),
                Err(MailboxError::Closed) => {
                    {
                        let mut map = self.actors.lock();
                        if map.get(room_id).is_some_and(|a| *a == addr) {
                            map.remove(room_id);
                        }
                    }
                    last = Some(MailboxError::Closed);
                    tokio::time::sleep(std::time::Duration::from_millis(5 * (attempt + 1))).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.map(Error::from).unwrap_or(Error::Overloaded))
    }

    /// The one door for received PDUs (signatures and hashes already checked): what the
    /// store already decided answers at once ([`admission::known`]); the rest goes to the
    /// room's actor. Outcomes come back in the order of `msg.pdus`.
    pub async fn admit(
        &self,
        room_id: &RoomId,
        msg: messages::InboundPdus,
    ) -> Result<Vec<messages::InboundOutcome>> {
        let ids: Vec<String> = msg
            .pdus
            .iter()
            .map(|(p, _)| p.event_id().to_string())
            .collect();
        let known = self
            .core
            .db
            .read(move |c| admission::known::screen(c, &ids))
            .await?;
        self.admit_screened(room_id, msg, known).await
    }

    /// [`Self::admit`] with step 0 read by the caller: `known[i]` is the store's verdict on
    /// `msg.pdus[i]` ([`admission::known::screen`]), read for a whole transaction at once
    /// (one read for all of its rooms, beside its signature checks).
    pub async fn admit_screened(
        &self,
        room_id: &RoomId,
        mut msg: messages::InboundPdus,
        known: Vec<admission::known::Known>,
    ) -> Result<Vec<messages::InboundOutcome>> {
        if known.len() != msg.pdus.len() {
            return Err(Error::internal("a screen for other PDUs"));
        }
        let total = known.len();
        let mut decided: Vec<Option<messages::InboundOutcome>> = Vec::with_capacity(total);
        let mut rest = Vec::with_capacity(total);
        for ((pdu, hint), k) in msg.pdus.drain(..).zip(known) {
            match k {
                admission::known::Known::Decided(o) => decided.push(Some(o)),
                admission::known::Known::Admit => {
                    decided.push(None);
                    rest.push((pdu, hint));
                }
            }
        }
        if rest.len() < total {
            // The actor sees only part of the transaction's PDUs: the caller answers.
            msg.txn_record = None;
        }
        let mut outcomes = if rest.is_empty() {
            Vec::new()
        } else {
            msg.pdus = rest;
            self.send(room_id, msg).await?
        }
        .into_iter();
        Ok(decided
            .into_iter()
            .map(|d| {
                d.unwrap_or_else(|| {
                    outcomes
                        .next()
                        .unwrap_or_else(|| messages::InboundOutcome::Error("no outcome".into()))
                })
            })
            .collect())
    }

    /// Number of live room actors (for the status page).
    pub fn live_actors(&self) -> usize {
        self.actors.lock().len()
    }

    /// The rooms whose actors are alive (for the status page).
    pub fn live_rooms(&self) -> std::collections::HashSet<String> {
        self.actors
            .lock()
            .iter()
            .filter(|(_, a)| a.connected())
            .map(|(r, _)| r.to_string())
            .collect()
    }
}
