//! Partial-state rooms in the actor (`rooms::partial_state` has the design): the mark, the
//! deferral of received events that fail against the partial state, and the completion
//! (state groups rebuilt, current state and memberships, the forward extremities without
//! the events rejected against the full state, the mark cleared, the deferred events handed
//! back to be admitted again).

use super::*;
use crate::rooms::partial_state::{self as ps, ClearPartial, CompletePartial, MarkPartial};

/// Most events one partial-state room defers (past it they are decided as usual).
const MAX_DEFERRED: usize = 50_000;

/// What the actor knows of its room's partial state.
#[derive(Debug, Default)]
pub(super) struct Partial {
    /// The host's `servers_in_room`: our events go there too while partial.
    pub(super) servers: BTreeSet<String>,
    /// Events deferred until the full state is in.
    pub(super) deferred: HashSet<OwnedEventId>,
}

impl Partial {
    pub(super) fn from_stored(
        room: crate::storage::partial_state::PartialRoom,
        deferred: Vec<String>,
    ) -> Self {
        Self {
            servers: room.servers.into_iter().collect(),
            deferred: deferred
                .iter()
                .filter_map(|d| OwnedEventId::try_from(d.as_str()).ok())
                .collect(),
        }
    }
}

impl RoomActor {
    /// Defers a received event that failed against the partial state (`None`: the room is
    /// not partial, the event is ours, or too many are deferred: decide it as usual).
    pub(super) fn defer(
        &mut self,
        pdu: &Arc<Pdu>,
        reason: &str,
        local: bool,
    ) -> Option<InboundOutcome> {
        if local {
            return None;
        }
        let room = self.room_id.to_string();
        let p = self.partial.as_mut()?;
        if p.deferred.len() >= MAX_DEFERRED {
            tracing::warn!(room = %room, "partial state: too many deferred events; deciding as usual");
            return None;
        }
        if p.deferred.insert(pdu.owned_event_id()) {
            tracing::info!(room = %room, event = %pdu.event_id(), reason, "partial state: event deferred until the full state is in");
            crate::observe::metrics::partial_state("deferred");
            // Written with the batch that answers the transaction carrying it (the
            // caller flushes before answering).
            self.batch
                .deferred
                .push(crate::rooms::persist::DeferredRow {
                    event_id: pdu.event_id().to_string(),
                    depth: pdu.depth().min(i64::MAX as u64) as i64,
                    json: pdu.to_canonical_string(),
                    received_ts: crate::storage::now_ms(),
                });
        }
        Some(InboundOutcome::Deferred(reason.to_owned()))
    }

    /// Whether an event cites an event deferred here (it is deferred with it).
    pub(super) fn cites_deferred(&self, prev: &[String]) -> bool {
        self.partial.as_ref().is_some_and(|p| {
            prev.iter().any(|id| {
                OwnedEventId::try_from(id.as_str()).is_ok_and(|id| p.deferred.contains(&id))
            })
        })
    }
}

impl Handler<MarkPartial> for RoomActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: MarkPartial, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if matches!(self.status, Status::Broken | Status::Loading) {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(Error::internal(
                "room is unavailable",
            )))));
        }
        self.partial = Some(Partial {
            servers: msg.servers.iter().cloned().collect(),
            deferred: HashSet::new(),
        });
        let row = crate::storage::partial_state::PartialRoom {
            room_id: self.room_id.to_string(),
            join_event_id: msg.join_event_id,
            servers: msg.servers,
            since_ts: crate::storage::now_ms(),
        };
        let db = self.core.db.clone();
        let shard = self.room_id.to_string();
        AtomicResponse::new(Box::pin(
            async move {
                db.write(&shard, move |c| {
                    crate::storage::partial_state::mark(c, &row)
                })
                .await
            }
            .into_actor(self)
            .map(|r, _, _| r.map_err(Error::from)),
        ))
    }
}

impl Handler<ClearPartial> for RoomActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, _msg: ClearPartial, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        self.partial = None;
        let db = self.core.db.clone();
        let room = self.room_id.to_string();
        AtomicResponse::new(Box::pin(
            async move {
                let shard = room.clone();
                db.write(&shard, move |c| {
                    crate::storage::partial_state::clear(c, &room)
                })
                .await
            }
            .into_actor(self)
            .map(|r, act: &mut Self, _| {
                ps::completed(act.room_id.as_str());
                r.map(|_| ()).map_err(Error::from)
            }),
        ))
    }
}

impl Handler<CompletePartial> for RoomActor {
    type Result = AtomicResponse<Self, Result<Vec<(String, String)>>>;

    fn handle(&mut self, msg: CompletePartial, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if let Err(e) = self.check_ready() {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(e))));
        }
        if self.partial.is_none() {
            // Completed before (a resync that raced a restart): nothing left to do.
            return AtomicResponse::new(Box::pin(actix::fut::ready(Ok(Vec::new()))));
        }
        let full = msg.state;
        let events = msg.events;
        let stream = msg.stream;
        // First what is pending, then the history's groups, then the current state.
        let fut = self
            .flush_fut()
            .then(move |ok, act: &mut Self, _| {
                let db = act.core.db.clone();
                let core = Arc::clone(&act.core);
                let room = act.room_id.to_string();
                let full2 = full.clone();
                let version = act.version;
                let tips: Vec<String> = act.extremities.iter().map(|e| e.to_string()).collect();
                let known: HashMap<String, Arc<Pdu>> = events
                    .iter()
                    .map(|e| (e.event_id().to_string(), Arc::clone(e)))
                    .collect();
                async move {
                    if !ok {
                        return Err(Error::internal("could not store the pending batch"));
                    }
                    let shard = room.clone();
                    db.write(&shard, move |c| {
                        crate::storage::cluster::check_fence(c, &room)?;
                        let next = || core.next_state_group();
                        crate::rooms::persist::complete_partial_groups(
                            c, &next, &room, version, stream, &full2, &known, &tips,
                        )
                    })
                    .await
                    .map_err(Error::from)
                }
                .into_actor(act)
                .map(move |r, _, _| r.map(|n| (n, full, events)))
            })
            .then(move |r, act: &mut Self, _| {
                match r {
                    Err(e) => Box::pin(actix::fut::ready(Err(e)))
                        as ResponseActFuture<Self, Result<Vec<(String, String)>>>,
                    Ok((done, full, mut events)) => {
                        for (id, reason) in &done.rejected {
                            tracing::warn!(room = %act.room_id, event = %id, reason = %reason, "partial state: an event accepted during partial state is rejected against the full state");
                            crate::observe::metrics::partial_state("rejected_after");
                            if let Ok(id) = OwnedEventId::try_from(id.as_str()) {
                                act.rejected.insert(id);
                            }
                        }
                        if let Some(tips) = &done.extremities {
                            act.replace_extremities(tips);
                        }
                        events.extend(done.restored.iter().cloned());
                        // The memberships learned are recorded at a position of their
                        // own, so an incremental /sync across it shows them (and the
                        // room's local members are woken).
                        let at = act.core.notifier.allocate();
                        act.batch.partial_completed = Some(at);
                        act.complete_current_state(&full, &done.undone, &events, at);
                        tracing::info!(room = %act.room_id, events_moved = done.moved, rejected = done.rejected.len(), state = act.state.events.len(), "partial state: full state in");
                        Box::pin(act.flush_fut().then(|ok, act: &mut Self, _| {
                            let db = act.core.db.clone();
                            let room = act.room_id.to_string();
                            async move {
                                if !ok {
                                    return Err(Error::internal("could not store the full state"));
                                }
                                let shard = room.clone();
                                db.write(&shard, move |c| {
                                    crate::storage::partial_state::clear(c, &room)
                                })
                                .await
                                .map_err(Error::from)
                            }
                            .into_actor(act)
                            .map(|r, act: &mut Self, _| {
                                if r.is_ok() {
                                    act.partial = None;
                                    ps::completed(act.room_id.as_str());
                                }
                                r
                            })
                        }))
                    }
                }
            });
        AtomicResponse::new(Box::pin(fut))
    }
}

impl RoomActor {
    /// The forward extremities once the events rejected at completion are out of them
    /// (`ps::extremities_without`): our next event cites these.
    fn replace_extremities(&mut self, tips: &[Arc<Pdu>]) {
        let before: Vec<String> = self.extremities.iter().map(|e| e.to_string()).collect();
        self.extremities = tips.iter().map(|p| p.owned_event_id()).collect();
        self.extremity_hashes = tips
            .iter()
            .filter_map(|p| cited_hash(self.version, p).map(|h| (p.owned_event_id(), h)))
            .collect();
        self.batch.extremities = Some(self.extremities.iter().map(|e| e.to_string()).collect());
        tracing::info!(room = %self.room_id, before = ?before, after = ?self.extremities, "partial state: rejected events taken out of the forward extremities");
    }

    /// The current state gains what the partial state lacked; the memory path forgets the
    /// states it remembered (they were partial).
    /// `undone`: entries of events rejected at completion, `(key, rejected event, the entry
    /// before it)`.
    fn complete_current_state(
        &mut self,
        full: &StateIds,
        undone: &[((String, String), String, Option<String>)],
        events: &[Arc<Pdu>],
        stream: i64,
    ) {
        let cur_ids = self.state.string_ids();
        let mut new_ids = ps::fill_missing(&cur_ids, full);
        for (key, rejected, before) in undone {
            if new_ids.get(key) == Some(rejected) {
                match before {
                    Some(b) => new_ids.insert(key.clone(), b.clone()),
                    None => new_ids.remove(key),
                };
            }
        }
        self.recent = Recent::default();
        if new_ids != cur_ids
            && let Some(any) = events.first()
        {
            let extra: HashMap<String, Arc<Pdu>> = events
                .iter()
                .map(|e| (e.event_id().to_string(), Arc::clone(e)))
                .collect();
            let cur_group = self.state.group;
            let group = match make_group(
                || self.core.next_state_group(),
                cur_group,
                &cur_ids,
                &new_ids,
            ) {
                None => cur_group,
                Some(g) => {
                    let r = Some((g.id, depth_of(&g)));
                    self.batch.groups.push(g);
                    r
                }
            };
            self.set_current_state(&cur_ids, new_ids, group, &extra, any, stream);
            self.batch.state_group = self.state.group.map(|g| g.0);
        }
        if let [only] = self.extremities.as_slice() {
            let now = self.recent.current();
            self.recent.record(only.clone(), now);
        }
    }
}
