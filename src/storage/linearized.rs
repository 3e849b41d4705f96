//! Linearized Matrix storage: which LPDUs this server completed as a hub (so a retried LPDU
//! is answered, not appended twice), the line of a room as the hub serves it to joiners, and
//! the rooms an operator sees.

use diesel::prelude::*;

use super::events::EventRow;
use super::rooms::RoomRow;
use super::schema::{events, rooms};
use super::{AnyConnection, StorageResult};

diesel::table! {
    lm_lpdus (lpdu_id) {
        lpdu_id -> Text,
        room_id -> Text,
        event_id -> Text,
    }
}

/// Records that the LPDU `lpdu_id` became `event_id` (written in the event's batch).
pub fn record_lpdu(
    conn: &mut AnyConnection,
    lpdu_id: &str,
    room_id: &str,
    event_id: &str,
) -> StorageResult<()> {
    if event_for_lpdu(conn, lpdu_id)?.is_some() {
        return Ok(());
    }
    diesel::insert_into(lm_lpdus::table)
        .values((
            lm_lpdus::lpdu_id.eq(lpdu_id),
            lm_lpdus::room_id.eq(room_id),
            lm_lpdus::event_id.eq(event_id),
        ))
        .execute(conn)?;
    Ok(())
}

/// The event an LPDU became here, as `(room_id, event_id)`.
pub fn event_for_lpdu(
    conn: &mut AnyConnection,
    lpdu_id: &str,
) -> StorageResult<Option<(String, String)>> {
    Ok(lm_lpdus::table
        .filter(lm_lpdus::lpdu_id.eq(lpdu_id))
        .select((lm_lpdus::room_id, lm_lpdus::event_id))
        .first(conn)
        .optional()?)
}

/// The room's line before stream position `before`, oldest first (accepted events only).
pub fn line_before(
    conn: &mut AnyConnection,
    room_id: &str,
    before: i64,
) -> StorageResult<Vec<EventRow>> {
    Ok(events::table
        .filter(events::room_id.eq(room_id))
        .filter(events::stream_ordering.lt(before))
        .filter(events::outlier.eq(false))
        .filter(events::rejected.is_null())
        .filter(events::soft_failed.eq(false))
        .order(events::stream_ordering.asc())
        .load::<EventRow>(conn)?)
}

/// Every room of the given version this server holds.
pub fn rooms_of_version(conn: &mut AnyConnection, version: &str) -> StorageResult<Vec<RoomRow>> {
    Ok(rooms::table
        .filter(rooms::room_version.eq(version))
        .order(rooms::created_ts.asc())
        .load::<RoomRow>(conn)?)
}

/// Stages PDUs that arrived for a room being joined (`seq` orders them).
pub fn stage_join_pdus(
    conn: &mut AnyConnection,
    room_id: &str,
    origin: &str,
    first_seq: i64,
    pdus: &[String],
    now: i64,
) -> StorageResult<()> {
    use super::schema::lm_join_staging as t;
    for (i, pdu) in pdus.iter().enumerate() {
        diesel::insert_into(t::table)
            .values((
                t::room_id.eq(room_id),
                t::seq.eq(first_seq + i as i64),
                t::origin.eq(origin),
                t::pdu.eq(pdu),
                t::received_ts.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// The PDUs staged for a room, oldest first, as `(seq, pdu JSON)`.
pub fn staged_join_pdus(
    conn: &mut AnyConnection,
    room_id: &str,
) -> StorageResult<Vec<(i64, String)>> {
    use super::schema::lm_join_staging as t;
    Ok(t::table
        .filter(t::room_id.eq(room_id))
        .order(t::seq.asc())
        .select((t::seq, t::pdu))
        .load(conn)?)
}

/// Removes staged PDUs up to `upto_seq` (taken) for a room.
pub fn unstage_join_pdus(
    conn: &mut AnyConnection,
    room_id: &str,
    upto_seq: i64,
) -> StorageResult<()> {
    use super::schema::lm_join_staging as t;
    diesel::delete(
        t::table
            .filter(t::room_id.eq(room_id))
            .filter(t::seq.le(upto_seq)),
    )
    .execute(conn)?;
    Ok(())
}

/// Rooms with staged PDUs (at start-up: joins that were in progress).
pub fn rooms_with_staged_pdus(conn: &mut AnyConnection) -> StorageResult<Vec<String>> {
    use super::schema::lm_join_staging as t;
    let mut rooms: Vec<String> = t::table.select(t::room_id).load(conn)?;
    rooms.sort();
    rooms.dedup();
    Ok(rooms)
}
