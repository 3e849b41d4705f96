//! Queries for operators (the admin API and the `weft` admin commands): listing users and
//! rooms with their counts, flags on users, destinations' retry state, purging history.

use diesel::prelude::*;

use super::schema::{
    current_state, destinations, event_relations, event_txns, events, forward_extremities,
    memberships, rooms, users,
};
use super::users::UserRow;
use super::{AnyConnection, StorageResult};

pub fn list_users(conn: &mut AnyConnection) -> StorageResult<Vec<UserRow>> {
    Ok(users::table.order(users::user_id).load::<UserRow>(conn)?)
}

pub fn set_admin(conn: &mut AnyConnection, user_id: &str, admin: bool) -> StorageResult<bool> {
    let n = diesel::update(users::table.filter(users::user_id.eq(user_id)))
        .set(users::is_admin.eq(admin))
        .execute(conn)?;
    Ok(n > 0)
}

/// Marks a user deactivated and drops their password (they can never log in again).
pub fn deactivate(conn: &mut AnyConnection, user_id: &str) -> StorageResult<bool> {
    let n = diesel::update(users::table.filter(users::user_id.eq(user_id)))
        .set((
            users::deactivated.eq(true),
            users::password_hash.eq(None::<String>),
        ))
        .execute(conn)?;
    Ok(n > 0)
}

/// Whether a user is an admin and not deactivated (read fresh on every admin request).
pub fn is_active_admin(conn: &mut AnyConnection, user_id: &str) -> StorageResult<bool> {
    let row: Option<(bool, bool)> = users::table
        .filter(users::user_id.eq(user_id))
        .select((users::is_admin, users::deactivated))
        .first(conn)
        .optional()?;
    Ok(matches!(row, Some((true, false))))
}

/// A room as the operator sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomSummary {
    pub room_id: String,
    pub room_version: String,
    pub creator: Option<String>,
    pub is_public: bool,
    pub created_ts: i64,
    pub joined_members: i64,
    pub local_members: i64,
    pub events: i64,
    pub state_events: i64,
}

fn summarize(
    conn: &mut AnyConnection,
    row: super::rooms::RoomRow,
    server_name: &str,
) -> StorageResult<RoomSummary> {
    let joined: Vec<String> = memberships::table
        .filter(memberships::room_id.eq(&row.room_id))
        .filter(memberships::membership.eq("join"))
        .select(memberships::user_id)
        .load(conn)?;
    let suffix = format!(":{server_name}");
    let events_n: i64 = events::table
        .filter(events::room_id.eq(&row.room_id))
        .filter(events::stream_ordering.is_not_null())
        .count()
        .get_result(conn)?;
    let state_n: i64 = current_state::table
        .filter(current_state::room_id.eq(&row.room_id))
        .count()
        .get_result(conn)?;
    Ok(RoomSummary {
        joined_members: joined.len() as i64,
        local_members: joined.iter().filter(|u| u.ends_with(&suffix)).count() as i64,
        events: events_n,
        state_events: state_n,
        room_id: row.room_id,
        room_version: row.room_version,
        creator: row.creator,
        is_public: row.is_public,
        created_ts: row.created_ts,
    })
}

pub fn list_rooms(conn: &mut AnyConnection, server_name: &str) -> StorageResult<Vec<RoomSummary>> {
    let rows: Vec<super::rooms::RoomRow> = rooms::table.order(rooms::room_id).load(conn)?;
    rows.into_iter()
        .map(|r| summarize(conn, r, server_name))
        .collect()
}

pub fn room_summary(
    conn: &mut AnyConnection,
    room_id: &str,
    server_name: &str,
) -> StorageResult<Option<RoomSummary>> {
    match super::rooms::get_room(conn, room_id)? {
        Some(r) => summarize(conn, r, server_name).map(Some),
        None => Ok(None),
    }
}

/// Every membership row of a room: `(user_id, membership)`.
pub fn room_members(
    conn: &mut AnyConnection,
    room_id: &str,
) -> StorageResult<Vec<(String, String)>> {
    Ok(memberships::table
        .filter(memberships::room_id.eq(room_id))
        .select((memberships::user_id, memberships::membership))
        .order(memberships::user_id)
        .load(conn)?)
}

/// The stream position of an event of a room (for "purge before this event").
pub fn stream_of(
    conn: &mut AnyConnection,
    room_id: &str,
    event_id: &str,
) -> StorageResult<Option<i64>> {
    Ok(events::table
        .filter(events::room_id.eq(room_id))
        .filter(events::event_id.eq(event_id))
        .select(events::stream_ordering)
        .first::<Option<i64>>(conn)
        .optional()?
        .flatten())
}

/// The highest stream position of a room's events older than `ts` (ms), if any.
pub fn stream_before_ts(
    conn: &mut AnyConnection,
    room_id: &str,
    ts: i64,
) -> StorageResult<Option<i64>> {
    Ok(events::table
        .filter(events::room_id.eq(room_id))
        .filter(events::origin_server_ts.lt(ts))
        .filter(events::stream_ordering.is_not_null())
        .select(diesel::dsl::max(events::stream_ordering))
        .first::<Option<i64>>(conn)?)
}

/// Deletes a room's *non-state* timeline events with stream position below `before`
/// (state events stay: the room's state and auth chains need them; forward extremities
/// stay: new events cite them). Returns how many events were deleted.
pub fn purge_history(conn: &mut AnyConnection, room_id: &str, before: i64) -> StorageResult<usize> {
    let keep: Vec<String> = forward_extremities::table
        .filter(forward_extremities::room_id.eq(room_id))
        .select(forward_extremities::event_id)
        .load(conn)?;
    let doomed: Vec<(String, Option<i64>)> = events::table
        .filter(events::room_id.eq(room_id))
        .filter(events::state_key.is_null())
        .filter(events::stream_ordering.lt(before))
        .filter(events::event_id.ne_all(&keep))
        .select((events::event_id, events::stream_ordering))
        .load(conn)?;
    for chunk in doomed.chunks(500) {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
        let positions: Vec<i64> = chunk.iter().filter_map(|(_, at)| *at).collect();
        diesel::delete(event_txns::table.filter(event_txns::event_id.eq_any(&ids)))
            .execute(conn)?;
        // The indexes built from these events go with them (the words must not outlive
        // the purge); search rows are keyed by position.
        super::search::forget_positions(conn, &positions)?;
        diesel::delete(event_relations::table.filter(event_relations::event_id.eq_any(&ids)))
            .execute(conn)?;
        diesel::delete(events::table.filter(events::event_id.eq_any(&ids))).execute(conn)?;
    }
    Ok(doomed.len())
}

/// Every destination with retry state: `(server, failures, retry_at, last_success, last_error)`.
pub type DestinationRow = (String, i32, i64, Option<i64>, Option<String>);

pub fn destinations(conn: &mut AnyConnection) -> StorageResult<Vec<DestinationRow>> {
    Ok(destinations::table
        .select((
            destinations::server_name,
            destinations::failures,
            destinations::retry_at,
            destinations::last_success_ts,
            destinations::last_error,
        ))
        .order(destinations::server_name)
        .load(conn)?)
}

/// `(user, room)` for every local deactivated user still joined, invited or knocking.
pub fn deactivated_still_in_rooms(
    conn: &mut AnyConnection,
    server_name: &str,
) -> StorageResult<Vec<(String, String)>> {
    let gone: Vec<String> = users::table
        .filter(users::deactivated.eq(true))
        .select(users::user_id)
        .load(conn)?;
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    let suffix = format!(":{server_name}");
    let rows: Vec<(String, String)> = memberships::table
        .filter(memberships::user_id.eq_any(&gone))
        .filter(memberships::membership.eq_any(["join", "invite", "knock"]))
        .select((memberships::user_id, memberships::room_id))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter(|(u, _)| u.ends_with(&suffix))
        .collect())
}
