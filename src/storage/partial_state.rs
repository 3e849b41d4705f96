//! Partial-state joins (`send_join?omit_members=true`): the rooms whose full state is still
//! being fetched, and the received events deferred until it is in. Written only by the
//! room's actor (`rooms/actor/partial.rs`); read at start-up to resume the resync and by
//! the client API (`/members` waits for the full state, bounded).

use diesel::prelude::*;

use super::StorageResult;
use super::connection::AnyConnection;

/// A room joined with partial state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialRoom {
    pub room_id: String,
    pub join_event_id: String,
    /// The servers the host named in `servers_in_room`.
    pub servers: Vec<String>,
    pub since_ts: i64,
}

/// Marks a room partial-state (or updates the mark).
pub fn mark(conn: &mut AnyConnection, room: &PartialRoom) -> StorageResult<()> {
    use super::schema::partial_state_rooms as t;
    let servers = serde_json::to_string(&room.servers).unwrap_or_else(|_| "[]".into());
    diesel::delete(t::table.filter(t::room_id.eq(&room.room_id))).execute(conn)?;
    diesel::insert_into(t::table)
        .values((
            t::room_id.eq(&room.room_id),
            t::join_event_id.eq(&room.join_event_id),
            t::servers.eq(servers),
            t::since_ts.eq(room.since_ts),
        ))
        .execute(conn)?;
    Ok(())
}

/// Clears a room's mark and takes its deferred events (oldest and shallowest first, as
/// `(event ID, PDU JSON)`), in one transaction.
pub fn clear(conn: &mut AnyConnection, room_id: &str) -> StorageResult<Vec<(String, String)>> {
    let deferred = deferred(conn, room_id)?;
    {
        use super::schema::partial_state_deferred as d;
        diesel::delete(d::table.filter(d::room_id.eq(room_id))).execute(conn)?;
    }
    use super::schema::partial_state_rooms as t;
    diesel::delete(t::table.filter(t::room_id.eq(room_id))).execute(conn)?;
    Ok(deferred)
}

fn row(r: (String, String, String, i64)) -> PartialRoom {
    PartialRoom {
        room_id: r.0,
        join_event_id: r.1,
        servers: serde_json::from_str(&r.2).unwrap_or_default(),
        since_ts: r.3,
    }
}

/// One room's mark, if it is partial-state.
pub fn get(conn: &mut AnyConnection, room_id: &str) -> StorageResult<Option<PartialRoom>> {
    use super::schema::partial_state_rooms as t;
    Ok(t::table
        .filter(t::room_id.eq(room_id))
        .select((t::room_id, t::join_event_id, t::servers, t::since_ts))
        .first::<(String, String, String, i64)>(conn)
        .optional()?
        .map(row))
}

/// Every partial-state room (at start-up: the resyncs to resume).
pub fn all(conn: &mut AnyConnection) -> StorageResult<Vec<PartialRoom>> {
    use super::schema::partial_state_rooms as t;
    Ok(t::table
        .select((t::room_id, t::join_event_id, t::servers, t::since_ts))
        .order(t::since_ts.asc())
        .load::<(String, String, String, i64)>(conn)?
        .into_iter()
        .map(row)
        .collect())
}

/// Defers a received event (kept once; a second copy is ignored).
pub fn defer(
    conn: &mut AnyConnection,
    room_id: &str,
    event_id: &str,
    depth: i64,
    pdu: &str,
    now: i64,
) -> StorageResult<()> {
    use super::schema::partial_state_deferred as t;
    let known: i64 = t::table
        .filter(t::room_id.eq(room_id))
        .filter(t::event_id.eq(event_id))
        .count()
        .get_result(conn)?;
    if known > 0 {
        return Ok(());
    }
    diesel::insert_into(t::table)
        .values((
            t::room_id.eq(room_id),
            t::event_id.eq(event_id),
            t::depth.eq(depth),
            t::pdu.eq(pdu),
            t::received_ts.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// The deferred events of a room, shallowest first (a deferred event's deferred prev events
/// come before it), as `(event ID, PDU JSON)`.
pub fn deferred(conn: &mut AnyConnection, room_id: &str) -> StorageResult<Vec<(String, String)>> {
    use super::schema::partial_state_deferred as t;
    Ok(t::table
        .filter(t::room_id.eq(room_id))
        .order((t::depth.asc(), t::received_ts.asc()))
        .select((t::event_id, t::pdu))
        .load(conn)?)
}

/// A timeline event of a partial-state room, as its completion needs it.
#[derive(Debug, Clone)]
pub struct TimelineEvent {
    pub event_id: String,
    /// The state groups before and after it.
    pub before: Option<i64>,
    pub after: Option<i64>,
    /// Rejected or soft-failed already (not checked again).
    pub decided: bool,
    pub json: String,
}

/// `(event ID, state before, state after, rejected, soft-failed, JSON)`.
type TimelineRow = (
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    bool,
    String,
);

/// A room's timeline events from stream position `from` on, in stream order.
pub fn timeline_since(
    conn: &mut AnyConnection,
    room_id: &str,
    from: i64,
) -> StorageResult<Vec<TimelineEvent>> {
    use super::schema::events as e;
    let rows: Vec<TimelineRow> = e::table
        .filter(e::room_id.eq(room_id))
        .filter(e::stream_ordering.ge(from))
        .filter(e::outlier.eq(false))
        .order(e::stream_ordering.asc())
        .select((
            e::event_id,
            e::state_before,
            e::state_after,
            e::rejected,
            e::soft_failed,
            e::json,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(event_id, before, after, rejected, soft_failed, json)| TimelineEvent {
                event_id,
                before,
                after,
                decided: rejected.is_some() || soft_failed,
                json,
            },
        )
        .collect())
}

/// Marks an event accepted during partial state rejected: it failed the authorization
/// rules against the full state before it. It is never served to clients again.
pub fn reject(conn: &mut AnyConnection, event_id: &str, reason: &str) -> StorageResult<()> {
    use super::schema::events as e;
    diesel::update(e::table.filter(e::event_id.eq(event_id)))
        .set(e::rejected.eq(Some(reason)))
        .execute(conn)?;
    Ok(())
}

/// Points an event at rebuilt state groups (a partial-state room's events, completed).
pub fn set_event_groups(
    conn: &mut AnyConnection,
    event_id: &str,
    before: Option<i64>,
    after: Option<i64>,
) -> StorageResult<()> {
    use super::schema::events as e;
    diesel::update(e::table.filter(e::event_id.eq(event_id)))
        .set((e::state_before.eq(before), e::state_after.eq(after)))
        .execute(conn)?;
    Ok(())
}

/// Records that a room got its full state at stream position `stream` (the memberships
/// learned are recorded at it).
pub fn record_completed(conn: &mut AnyConnection, room_id: &str, stream: i64) -> StorageResult<()> {
    use super::schema::partial_state_completed as t;
    diesel::delete(t::table.filter(t::room_id.eq(room_id))).execute(conn)?;
    diesel::insert_into(t::table)
        .values((t::room_id.eq(room_id), t::stream_ordering.eq(stream)))
        .execute(conn)?;
    Ok(())
}

/// The rooms that got their full state at a position in `(after, upto]`, with it.
pub fn completed_between(
    conn: &mut AnyConnection,
    after: i64,
    upto: i64,
) -> StorageResult<std::collections::HashMap<String, i64>> {
    use super::schema::partial_state_completed as t;
    Ok(t::table
        .filter(t::stream_ordering.gt(after))
        .filter(t::stream_ordering.le(upto))
        .select((t::room_id, t::stream_ordering))
        .load::<(String, i64)>(conn)?
        .into_iter()
        .collect())
}

/// The membership events of a room recorded at stream position `stream` (what a completion
/// learned).
pub fn memberships_at(
    conn: &mut AnyConnection,
    room_id: &str,
    stream: i64,
) -> StorageResult<Vec<String>> {
    use super::schema::memberships as m;
    Ok(m::table
        .filter(m::room_id.eq(room_id))
        .filter(m::stream_ordering.eq(stream))
        .select(m::event_id)
        .load(conn)?)
}
