//! Batched reads for sliding sync: one query per question for *all* of a user's rooms
//! (chunked under SQLite's bound-parameter limit), so a room list of thousands of rooms
//! costs a handful of queries, not thousands.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;

use super::schema::{current_state, events, memberships};
use super::{AnyConnection, StorageResult};

const CHUNK: usize = 500;

/// Per room, the highest stream position `<= upto` of a timeline event of one of `types`.
pub fn latest_of_types(
    conn: &mut AnyConnection,
    rooms: &[String],
    types: &[&str],
    upto: i64,
) -> StorageResult<HashMap<String, i64>> {
    let mut out = HashMap::new();
    for chunk in rooms.chunks(CHUNK) {
        let rows: Vec<(String, Option<i64>)> = events::table
            .filter(events::room_id.eq_any(chunk))
            .filter(events::event_type.eq_any(types))
            .filter(events::stream_ordering.le(upto))
            .filter(events::outlier.eq(false))
            .filter(events::rejected.is_null())
            .filter(events::soft_failed.eq(false))
            .group_by(events::room_id)
            .select((events::room_id, diesel::dsl::max(events::stream_ordering)))
            .load(conn)?;
        out.extend(rows.into_iter().filter_map(|(r, s)| s.map(|s| (r, s))));
    }
    Ok(out)
}

/// Rooms among `rooms` with a timeline event in `(after, upto]`.
pub fn rooms_with_events(
    conn: &mut AnyConnection,
    rooms: &[String],
    after: i64,
    upto: i64,
) -> StorageResult<HashSet<String>> {
    let mut out = HashSet::new();
    for chunk in rooms.chunks(CHUNK) {
        let rows: Vec<String> = events::table
            .filter(events::room_id.eq_any(chunk))
            .filter(events::stream_ordering.gt(after))
            .filter(events::stream_ordering.le(upto))
            .filter(events::outlier.eq(false))
            .select(events::room_id)
            .distinct()
            .load(conn)?;
        out.extend(rows);
    }
    Ok(out)
}

/// Current-state entries of the given types in `rooms`: `(room, type, state_key, event_id)`.
pub fn current_state_of_types(
    conn: &mut AnyConnection,
    rooms: &[String],
    types: &[&str],
) -> StorageResult<Vec<(String, String, String, String)>> {
    let mut out = Vec::new();
    for chunk in rooms.chunks(CHUNK) {
        out.extend(
            current_state::table
                .filter(current_state::room_id.eq_any(chunk))
                .filter(current_state::event_type.eq_any(types))
                .select((
                    current_state::room_id,
                    current_state::event_type,
                    current_state::state_key,
                    current_state::event_id,
                ))
                .load::<(String, String, String, String)>(conn)?,
        );
    }
    Ok(out)
}

/// Per room, the number of members with each membership: `(room, membership) -> count`.
pub fn member_counts(
    conn: &mut AnyConnection,
    rooms: &[String],
) -> StorageResult<HashMap<(String, String), i64>> {
    let mut out = HashMap::new();
    for chunk in rooms.chunks(CHUNK) {
        let rows: Vec<(String, String, i64)> = memberships::table
            .filter(memberships::room_id.eq_any(chunk))
            .group_by((memberships::room_id, memberships::membership))
            .select((
                memberships::room_id,
                memberships::membership,
                diesel::dsl::count_star(),
            ))
            .load(conn)?;
        out.extend(rows.into_iter().map(|(r, m, n)| ((r, m), n)));
    }
    Ok(out)
}

/// State events of a room in `(after, upto]`, oldest first, at most `limit`.
pub fn state_events_in_range(
    conn: &mut AnyConnection,
    room_id: &str,
    after: i64,
    upto: i64,
    limit: i64,
) -> StorageResult<Vec<super::events::EventRow>> {
    Ok(events::table
        .filter(events::room_id.eq(room_id))
        .filter(events::stream_ordering.gt(after))
        .filter(events::stream_ordering.le(upto))
        .filter(events::state_key.is_not_null())
        .filter(events::outlier.eq(false))
        .filter(events::rejected.is_null())
        .filter(events::soft_failed.eq(false))
        .order(events::stream_ordering.asc())
        .limit(limit)
        .load(conn)?)
}
