//! Outliers written by the actor (`StoreOutliers`): events held only to authorize others
//! (a joined room's state and auth chain, auth events and state fetched to fill a gap),
//! checked before they get here (`rooms::outliers`), written in the actor's batch like every
//! other row of the room; the rejected ones are remembered like the actor's own rejections.

use super::*;
use crate::rooms::messages::StoreOutliers;

impl Handler<StoreOutliers> for RoomActor {
    type Result = AtomicResponse<Self, Result<()>>;

    fn handle(&mut self, msg: StoreOutliers, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        if matches!(self.status, Status::Broken | Status::Loading) {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Err(Error::internal(
                "room is unavailable",
            )))));
        }
        for row in &msg.rows {
            if row.rejected.is_some()
                && let Ok(id) = OwnedEventId::try_from(row.event_id.as_str())
            {
                if self.rejected.len() >= MAX_REMEMBERED_REJECTIONS {
                    self.rejected.clear();
                }
                self.rejected.insert(id);
            }
        }
        self.batch.groups.extend(msg.groups);
        self.batch.outliers.extend(msg.rows);
        AtomicResponse::new(Box::pin(self.flush_fut().map(|ok, _, _| {
            if ok {
                Ok(())
            } else {
                Err(Error::internal("could not store outliers"))
            }
        })))
    }
}
