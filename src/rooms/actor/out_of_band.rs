//! A room's writes that are not events of its DAG, made by its actor like every other write
//! of the room: an out-of-band membership (`RecordOutOfBand`: an invite or knock for a room
//! we may hold no copy of, or our leave a remote server took), a declined out-of-band invite
//! (`DeclineOutOfBand`), Linearized join staging (`StageJoinPdus`, `UnstageJoinPdus`), and
//! the operator's history purge (`PurgeHistory`).
//!
//! Each is one storage job from `rooms::persist` (fenced like a batch), run after the pending
//! batch is committed, while the actor holds its mailbox: the job sees the room as the actor
//! does, and nothing of the room is written between. They are taken in every state but a
//! broken one: the actor of a room this server is not in answers them too (that is where an
//! out-of-band invite arrives), and so does one being joined (staging).

use super::*;
use crate::rooms::messages::{
    DeclineOutOfBand, PurgeHistory, RecordOutOfBand, StageJoinPdus, UnstageJoinPdus,
};
use crate::rooms::persist::{self, OutOfBandMembership};
use crate::storage::AnyConnection;

impl RoomActor {
    /// Runs `job` on the room's writer once the pending batch is committed.
    fn write_after_flush<T, F>(&mut self, job: F) -> ResponseActFuture<Self, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> StorageResult<T> + Send + 'static,
    {
        self.last_active = Instant::now();
        if matches!(self.status, Status::Broken | Status::Loading) {
            return Box::pin(actix::fut::ready(Err(Error::internal(
                "room is unavailable",
            ))));
        }
        let db = self.core.db.clone();
        let shard = self.room_id.to_string();
        Box::pin(self.flush_fut().then(move |flushed, act, _| {
            let fut = async move {
                if !flushed {
                    return Err(Error::internal("could not store the room's pending events"));
                }
                Ok(db.write(&shard, job).await?)
            };
            fut.into_actor(act)
        }))
    }
}

impl Handler<RecordOutOfBand> for RoomActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: RecordOutOfBand, _ctx: &mut Self::Context) -> Self::Result {
        let pdu = msg.pdu;
        let target = pdu.state_key().unwrap_or_default().to_owned();
        let stream = self.core.notifier.allocate();
        let job = OutOfBandMembership {
            room_id: self.room_id.to_string(),
            version: msg.version.as_str().to_owned(),
            row: persist::event_row(&pdu, self.room_id.as_str(), None),
            change: MembershipChange {
                user_id: target.clone(),
                membership: pdu.membership().unwrap_or_default(),
                sender: pdu.sender().to_string(),
                event_id: pdu.event_id().to_string(),
                stream,
                invite_state: Some(serde_json::Value::Array(msg.stripped).to_string()),
            },
        };
        let room = self.room_id.clone();
        let write = self.write_after_flush(move |c| job.run(c));
        AtomicResponse::new(Box::pin(write.map(move |res, act, _| {
            let recorded = matches!(res, Ok(true));
            act.core.notifier.complete(
                &[stream],
                if recorded { vec![target.clone()] } else { Vec::new() },
            );
            match res {
                Ok(true) => Ok(()),
                Ok(false) => {
                    tracing::info!(room = %room, user = %target, "out-of-band membership refused: the user's membership in a room we hold changes only by its events");
                    Err(Error::forbidden(
                        "the user's membership in this room is decided by the room's state",
                    ))
                }
                Err(e) => Err(e),
            }
        })))
    }
}

impl Handler<DeclineOutOfBand> for RoomActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: DeclineOutOfBand, _ctx: &mut Self::Context) -> Self::Result {
        let stream = self.core.notifier.allocate();
        let (room, user) = (self.room_id.to_string(), msg.user_id);
        let u = user.clone();
        let write =
            self.write_after_flush(move |c| persist::decline_out_of_band(c, &room, &u, stream));
        AtomicResponse::new(Box::pin(write.map(move |res, act, _| {
            let changed = matches!(res, Ok(true));
            act.core
                .notifier
                .complete(&[stream], if changed { vec![user] } else { Vec::new() });
            res.map(|_| ())
        })))
    }
}

impl Handler<StageJoinPdus> for RoomActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: StageJoinPdus, _ctx: &mut Self::Context) -> Self::Result {
        let room = self.room_id.to_string();
        AtomicResponse::new(self.write_after_flush(move |c| {
            persist::stage_join(c, &room, &msg.origin, msg.first_seq, &msg.pdus)
        }))
    }
}

impl Handler<UnstageJoinPdus> for RoomActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: UnstageJoinPdus, _ctx: &mut Self::Context) -> Self::Result {
        let room = self.room_id.to_string();
        AtomicResponse::new(
            self.write_after_flush(move |c| persist::unstage_join(c, &room, msg.upto_seq)),
        )
    }
}

impl Handler<PurgeHistory> for RoomActor {
    type Result = AtomicResponse<Self, Result<Option<usize>>>;

    fn handle(&mut self, msg: PurgeHistory, _ctx: &mut Self::Context) -> Self::Result {
        let room = self.room_id.to_string();
        AtomicResponse::new(
            self.write_after_flush(move |c| persist::purge_history_job(c, &room, &msg.point)),
        )
    }
}
