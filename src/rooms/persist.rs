//! The write job of a room actor's batch: everything a batch of new events changes, written
//! in one transaction (the writer wraps the job in a savepoint inside its group commit).

use crate::storage::events::{self, NewEvent};
use crate::storage::state::{self, StateDelta};
use crate::storage::{AnyConnection, StorageResult, rooms};

/// A new state group to store.
#[derive(Debug, Clone)]
pub struct NewGroup {
    pub id: i64,
    /// The parent group and its delta depth (`None` = full snapshot in `entries`).
    pub parent: Option<(i64, i32)>,
    pub entries: StateDelta,
}

/// A membership change caused by a member event.
#[derive(Debug, Clone)]
pub struct MembershipChange {
    pub user_id: String,
    pub membership: String,
    pub sender: String,
    /// Stripped state shown with an invite.
    pub invite_state: Option<String>,
}

/// One event of a batch, with everything it changes.
#[derive(Debug, Clone)]
pub struct PersistEvent {
    pub row: NewEvent,
    pub group: Option<NewGroup>,
    pub membership: Option<MembershipChange>,
    pub txn: Option<super::messages::TxnKey>,
    /// The event this one redacts, when the redaction is to be applied.
    pub redacts: Option<String>,
}

/// Everything a batch writes.
#[derive(Debug, Clone, Default)]
pub struct PersistBatch {
    pub room_id: String,
    /// Set when the batch creates the room: `(version, creator)`.
    pub new_room: Option<(String, Option<String>)>,
    pub events: Vec<PersistEvent>,
    pub current_state_delta: StateDelta,
    /// The room's forward extremities after the batch (`None` = unchanged).
    pub extremities: Option<Vec<String>>,
    /// The room's current state group after the batch (`None` = unchanged).
    pub state_group: Option<i64>,
}

impl PersistBatch {
    pub fn run(self, conn: &mut AnyConnection) -> StorageResult<()> {
        let now = crate::storage::now_ms();
        if let Some((version, creator)) = &self.new_room {
            rooms::insert_room(conn, &self.room_id, version, creator.as_deref(), now)?;
        }
        for ev in &self.events {
            if let Some(g) = &ev.group {
                state::insert_group(conn, g.id, &self.room_id, g.parent, &g.entries)?;
            }
            events::insert_event(conn, &ev.row)?;
            if let Some(m) = &ev.membership {
                rooms::set_membership(
                    conn,
                    &self.room_id,
                    &m.user_id,
                    &m.membership,
                    &ev.row.event_id,
                    ev.row.stream_ordering.unwrap_or(0),
                    &m.sender,
                    m.invite_state.as_deref(),
                )?;
            }
            if let Some(t) = &ev.txn {
                events::insert_txn(
                    conn,
                    &t.user_id,
                    &t.device_id,
                    &t.scope,
                    &t.txn_id,
                    &ev.row.event_id,
                )?;
            }
            if let Some(target) = &ev.redacts {
                events::set_redacted_by(conn, target, &ev.row.event_id)?;
            }
        }
        if !self.current_state_delta.is_empty() {
            state::update_current_state(conn, &self.room_id, &self.current_state_delta)?;
        }
        if let Some(ext) = &self.extremities {
            state::set_extremities(conn, &self.room_id, ext)?;
        }
        if let Some(g) = self.state_group {
            rooms::set_state_group(conn, &self.room_id, Some(g))?;
        }
        Ok(())
    }
}
