//! Step 0 of admission: what is already stored decides, before any check runs again.
//!
//! Rejection is permanent (spec, "Rejection": a rejected event is never used as state and
//! never shown; a server must not change its mind when the same event comes back). So a PDU
//! we hold as rejected is answered "rejected" on every path that brings it again
//! (`/send`, `get_missing_events`, `/event`, `/backfill`, `/state` answers), without
//! reaching the auth checks, where a newer state might let it through. A PDU already in the
//! timeline is answered "accepted" (de-duplication). Outliers go on: the room actor may
//! place one in the timeline once it passes every check; it keeps its own status otherwise.
//!
//! One read per batch; the storage layer ([`crate::storage::events::insert_event`]) and the
//! room actor (its own set of recent rejections, and `admission::prepare`) enforce the same
//! rule, so a race between two paths cannot undo it.

use std::collections::HashMap;

use crate::rooms::messages::InboundOutcome;
use crate::storage::{AnyConnection, StorageResult, events};

/// What the store already says about one received event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Not stored, or stored as an outlier that was not rejected: admit it.
    Admit,
    /// Decided before: this is the answer.
    Decided(InboundOutcome),
}

/// The verdicts of the store for these event IDs, in order.
pub fn screen(conn: &mut AnyConnection, ids: &[String]) -> StorageResult<Vec<Known>> {
    let statuses: HashMap<String, (bool, Option<String>)> = events::statuses(conn, ids)?;
    Ok(ids
        .iter()
        .map(|id| match statuses.get(id) {
            Some((_, Some(reason))) => Known::Decided(InboundOutcome::Rejected(format!(
                "rejected before: {reason}"
            ))),
            Some((true, None)) => Known::Decided(InboundOutcome::Accepted),
            _ => Known::Admit,
        })
        .collect())
}
