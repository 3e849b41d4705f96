//! Group commit: the pending batch is written as one storage job after the mailbox is
//! drained (`Flush`), while the actor holds its mailbox; on commit the replies go out, local
//! users are woken and the destination senders too; on failure the actor stops.

use super::*;

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

    /// Writes the pending batch and completes it (the caller holds the mailbox meanwhile).
    pub(super) fn flush_fut(&mut self) -> ResponseActFuture<Self, bool> {
        self.flush_scheduled = false;
        if self.pending.is_empty()
            && self.batch.outliers.is_empty()
            && self.batch.groups.is_empty()
            && self.batch.current_state_delta.is_empty()
        {
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
        let destinations: BTreeSet<String> = job.queue.iter().map(|q| q.0.clone()).collect();
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
}

impl Handler<Flush> for RoomActor {
    type Result = ();
    fn handle(&mut self, _msg: Flush, ctx: &mut Self::Context) {
        let fut = self.flush_fut().map(|_, _, _| ());
        ctx.wait(fut);
    }
}
