//! History visibility for a user's reads, evaluated per event at that event's state.
//!
//! [`user_ranges`] reads the room's history-visibility events and the user's own membership
//! events (an indexed query) and hands them to the pure rule
//! [`weft_protocol::visibility::visible_ranges`], which answers the stream positions the
//! user may see as a few ranges. Readers ([`visible_timeline`]) then query the timeline
//! inside those ranges, so a page of `limit` events is never cut short by hidden ones.

use serde_json::Value;
use weft_protocol::visibility::{HistoryVisibility, VisibilityChange, visible_ranges};

use crate::storage::events::{self, EventRow};
use crate::storage::state::{self, StateIds};
use crate::storage::{AnyConnection, StorageResult};

/// Sorted, disjoint `(after, upto]` ranges of stream positions.
pub type Ranges = Vec<(i64, i64)>;

/// The positions `user_id` may see in a room, up to `upto`.
pub fn user_ranges(
    conn: &mut AnyConnection,
    room_id: &str,
    user_id: &str,
    upto: i64,
) -> StorageResult<Ranges> {
    let changes: Vec<(i64, VisibilityChange)> = events::visibility_events(conn, room_id, user_id)?
        .into_iter()
        .map(|(pos, kind, json)| {
            let content = serde_json::from_str::<Value>(&json)
                .ok()
                .and_then(|v| v.get("content").cloned());
            let change = if kind == "m.room.member" {
                VisibilityChange::Membership(
                    content
                        .as_ref()
                        .and_then(|c| c.get("membership"))
                        .and_then(|m| m.as_str())
                        .map(str::to_owned),
                )
            } else {
                VisibilityChange::HistoryVisibility(HistoryVisibility::from_content(
                    content.as_ref(),
                ))
            };
            (pos, change)
        })
        .collect();
    Ok(visible_ranges(&changes, upto))
}

/// Ranges cut to `(after, upto]`.
pub fn clip(ranges: &[(i64, i64)], after: i64, upto: i64) -> Ranges {
    ranges
        .iter()
        .map(|(lo, hi)| ((*lo).max(after), (*hi).min(upto)))
        .filter(|(lo, hi)| hi > lo)
        .collect()
}

/// Up to `limit` visible timeline events in `(after, upto]`, oldest first: the newest such
/// events when `newest`, else the oldest.
pub fn visible_timeline(
    conn: &mut AnyConnection,
    room_id: &str,
    ranges: &[(i64, i64)],
    after: i64,
    upto: i64,
    limit: i64,
    newest: bool,
) -> StorageResult<Vec<EventRow>> {
    let mut clipped = clip(ranges, after, upto);
    if newest {
        clipped.reverse();
    }
    let mut out: Vec<EventRow> = Vec::new();
    for (lo, hi) in clipped {
        let left = limit - out.len() as i64;
        if left <= 0 {
            break;
        }
        let rows = events::timeline_range(conn, room_id, lo, hi, left, newest)?;
        if newest {
            // Older ranges come later and go in front.
            let mut rows = rows;
            rows.extend(out);
            out = rows;
        } else {
            out.extend(rows);
        }
    }
    Ok(out)
}

/// The room's current history visibility.
pub fn current_visibility(
    conn: &mut AnyConnection,
    room_id: &str,
) -> StorageResult<HistoryVisibility> {
    let Some(id) = state::current_state_entry(conn, room_id, "m.room.history_visibility", "")?
    else {
        return Ok(HistoryVisibility::Shared);
    };
    let content = events::get_event(conn, &id)?
        .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
        .and_then(|v| v.get("content").cloned());
    Ok(HistoryVisibility::from_content(content.as_ref()))
}

/// The state after an event (its stored group), or `None` when it has none.
pub fn state_after(conn: &mut AnyConnection, event_id: &str) -> StorageResult<Option<StateIds>> {
    match events::get_event(conn, event_id)?.and_then(|r| r.state_after) {
        Some(group) => Ok(Some(state::load_group(conn, group)?)),
        None => Ok(None),
    }
}
