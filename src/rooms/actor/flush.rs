//! Group commit: the pending batch is written as one storage job after the mailbox is
//! drained (`Flush`), while the actor holds its mailbox; on commit the replies go out and
//! the destination senders are woken; on failure the actor stops.
//!
//! Local users are woken by the writer thread itself, right after the commit
//! ([`crate::storage::Database::write_then`]), not after the answer's hop back to this
//! actor's arbiter; so are the callers of the received PDUs in the batch (`InboundPdus`:
//! their outcomes were decided before the flush, and wait in [`super::received`]'s
//! `InboundWaiter`s), and a federation `/send` handler gets its outcomes straight from the
//! writer thread. A batch of plain timeline events leaves a note on its positions
//! ([`CommittedEvents`]) from which a woken `/sync` answers without reading the database
//! again.

use super::*;
use crate::rooms::messages::{CommittedEvent, CommittedEvents};

/// Completes a batch's positions from the writer thread once its commit ends; dropped
/// without running (the job never reached a writer) it still completes them, waking nobody.
struct CompleteOnCommit {
    core: Arc<Core>,
    positions: Vec<i64>,
    wake: Vec<String>,
    note: Option<crate::notifier::Note>,
    /// When the writer began the job and when its statements were done (`observe::wake`).
    stamps: Arc<parking_lot::Mutex<(Option<Instant>, Option<Instant>)>>,
    /// Received messages whose PDUs (and transaction answers) this batch commits.
    inbound: Vec<super::received::InboundWaiter>,
    done: bool,
}

impl CompleteOnCommit {
    fn run(mut self, committed: bool) {
        self.done = true;
        let positions = std::mem::take(&mut self.positions);
        let writer = *self.stamps.lock();
        if committed {
            crate::observe::wake::committed(&positions, writer);
            let wake = std::mem::take(&mut self.wake);
            self.core
                .notifier
                .complete_noted(&positions, wake, self.note.take());
        } else {
            self.core.notifier.complete(&positions, []);
        }
        for w in std::mem::take(&mut self.inbound) {
            w.answer_after(committed, writer);
        }
    }
}

impl Drop for CompleteOnCommit {
    fn drop(&mut self) {
        if !self.done {
            self.core.notifier.complete(&self.positions, []);
        }
    }
}

impl RoomActor {
    pub(super) fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    /// Local users who must see this batch: joined members, plus targets of membership events.
    pub(super) fn users_to_wake(&self, memberships: &[MembershipChange]) -> Vec<String> {
        let mut users: HashSet<String> = self.state.members_with("join").into_iter().collect();
        users.extend(memberships.iter().map(|m| m.user_id.clone()));
        let suffix = format!(":{}", self.core.server_name());
        users.into_iter().filter(|u| u.ends_with(&suffix)).collect()
    }

    /// The note for a batch of plain timeline events (see [`CommittedEvents`]); `None` when
    /// the batch holds anything a reader must look up in the database.
    fn committed_note(
        &self,
        pending: &[Pending],
        job: &PersistBatch,
        wake: &[String],
    ) -> Option<crate::notifier::Note> {
        if !job.memberships.is_empty() || job.new_room.is_some() {
            return None;
        }
        let mut events = Vec::with_capacity(pending.len());
        for p in pending {
            let Some(stream) = p.stream else {
                // Rejected: no position, never shown.
                continue;
            };
            if p.persist.row.soft_failed || p.persist.redaction.is_some() {
                return None;
            }
            events.push(CommittedEvent {
                pdu: Arc::clone(&p.pdu),
                stream,
                txn: p.persist.txn.clone(),
            });
        }
        if events.is_empty() {
            return None;
        }
        Some(Arc::new(CommittedEvents {
            room_id: self.room_id.to_string(),
            version: self.version,
            joined_local: wake.to_vec(),
            events,
        }))
    }

    /// Nothing pending and nothing in the batch: a flush would write nothing.
    pub(super) fn nothing_to_flush(&self) -> bool {
        self.pending.is_empty()
            && self.batch.outliers.is_empty()
            && self.batch.inbound_txns.is_empty()
            && self.batch.groups.is_empty()
            && self.batch.current_state_delta.is_empty()
            && self.batch.deferred.is_empty()
            && self.batch.partial_completed.is_none()
    }

    /// Writes the pending batch and completes it (the caller holds the mailbox meanwhile).
    pub(super) fn flush_fut(&mut self) -> ResponseActFuture<Self, bool> {
        self.flush_scheduled = false;
        if self.nothing_to_flush() {
            // (Waiters come only with something to commit; any left have nothing to wait for.)
            for w in std::mem::take(&mut self.inbound_waiters) {
                w.answer(true);
            }
            return Box::pin(actix::fut::ready(true));
        }
        let inbound = std::mem::take(&mut self.inbound_waiters);
        for w in &inbound {
            w.flushing();
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
        let destinations: BTreeSet<String> = job.queue.iter().map(|q| q.0.clone()).collect();
        let wake = self.users_to_wake(&job.memberships);
        let note = self.committed_note(&pending, &job, &wake);
        let stamps = Arc::new(parking_lot::Mutex::new((None, None)));
        let hook = CompleteOnCommit {
            core: Arc::clone(&self.core),
            positions: pending
                .iter()
                .filter_map(|p| p.stream)
                .chain(job.partial_completed)
                .collect(),
            wake,
            note,
            stamps: Arc::clone(&stamps),
            inbound,
            done: false,
        };
        let db = self.core.db.clone();
        let shard = self.room_id.to_string();
        let started = Instant::now();
        let fut = async move {
            db.write_then(
                &shard,
                move |conn| {
                    stamps.lock().0 = Some(Instant::now());
                    let r = job.run(conn);
                    stamps.lock().1 = Some(Instant::now());
                    r
                },
                Box::new(move |committed| hook.run(committed)),
            )
            .await
        };
        Box::pin(fut.into_actor(self).map(move |res: StorageResult<()>, act, ctx| {
            match res {
                Ok(()) => {
                    tracing::debug!(room = %act.room_id, events = pending.len(), ms = started.elapsed().as_millis() as u64, "batch committed");
                    crate::observe::rooms::committed(act.room_id.as_str(), pending.len(), pending.iter().filter(|p| act.core.is_local(p.pdu.sender().server_name().as_str())).count());
                    for d in &destinations {
                        act.core.delivery.wake(d);
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
}

impl Handler<Flush> for RoomActor {
    type Result = ();
    fn handle(&mut self, _msg: Flush, ctx: &mut Self::Context) {
        let fut = self.flush_fut().map(|_, _, _| ());
        ctx.wait(fut);
    }
}
