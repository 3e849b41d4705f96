//! Events: the signed JSON of every event we hold, with the columns queries need, and the
//! client transaction-ID map.

use diesel::prelude::*;

use super::schema::{event_txns, events};
use super::{AnyConnection, StorageResult};

#[derive(Debug, Clone, Queryable)]
pub struct EventRow {
    pub event_id: String,
    pub room_id: String,
    pub stream_ordering: Option<i64>,
    pub depth: i64,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: i64,
    pub json: String,
    pub state_before: Option<i64>,
    pub state_after: Option<i64>,
    pub outlier: bool,
    pub rejected: Option<String>,
    pub soft_failed: bool,
    pub redacted_by: Option<String>,
}

/// An event to store (serializable: a room actor's batch may cross cluster nodes).
// `None` is written as NULL (every nullable column's default), which lets a batch of rows
// go to SQLite as one multi-row INSERT.
#[derive(Debug, Clone, Insertable, serde::Serialize, serde::Deserialize)]
#[diesel(table_name = events, treat_none_as_default_value = false)]
pub struct NewEvent {
    pub event_id: String,
    pub room_id: String,
    pub stream_ordering: Option<i64>,
    pub depth: i64,
    pub event_type: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub origin_server_ts: i64,
    pub json: String,
    pub state_before: Option<i64>,
    pub state_after: Option<i64>,
    pub outlier: bool,
    pub rejected: Option<String>,
    pub soft_failed: bool,
    pub redacted_by: Option<String>,
}

/// Inserts an event; an event already stored is left alone (`Ok(false)`), except that an
/// outlier copy is promoted into the timeline when the new row is not an outlier.
///
/// Rejection is permanent: a row stored as rejected is never promoted, never un-rejected,
/// whichever path brings the event again (the room actor also refuses such events before it
/// gets here; this is the last line).
pub fn insert_event(conn: &mut AnyConnection, ev: &NewEvent) -> StorageResult<bool> {
    let existing: Option<(bool, Option<String>)> = events::table
        .filter(events::event_id.eq(&ev.event_id))
        .select((events::outlier, events::rejected))
        .first(conn)
        .optional()?;
    match existing {
        None => {
            diesel::insert_into(events::table)
                .values(ev)
                .execute(conn)?;
            super::relations::index_event(conn, ev)?;
            super::search::index_backfilled(conn, &[ev])?;
            Ok(true)
        }
        Some((true, None)) if !ev.outlier => {
            diesel::update(events::table.filter(events::event_id.eq(&ev.event_id)))
                .set((
                    events::stream_ordering.eq(ev.stream_ordering),
                    events::state_before.eq(ev.state_before),
                    events::state_after.eq(ev.state_after),
                    events::outlier.eq(false),
                    events::rejected.eq(&ev.rejected),
                    events::soft_failed.eq(ev.soft_failed),
                ))
                .execute(conn)?;
            super::relations::index_event(conn, ev)?;
            super::search::index_backfilled(conn, &[ev])?;
            Ok(true)
        }
        Some(_) => Ok(false),
    }
}

/// Rows per multi-row INSERT of events (15 columns: well under SQLite's and PostgreSQL's
/// limits on bound parameters).
const EVENT_CHUNK: usize = 1000;

/// Inserts many outliers at once: [`insert_event`] for each, in a few statements. Events
/// already stored are left alone, except that an outlier known without a state before it
/// gets `state_before` (as [`set_state_before_if_unknown`]). Returns how many were new.
pub fn insert_outliers(conn: &mut AnyConnection, rows: &[&NewEvent]) -> StorageResult<usize> {
    let mut known: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in rows.chunks(EVENT_CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|r| r.event_id.as_str()).collect();
        known.extend(
            events::table
                .filter(events::event_id.eq_any(ids))
                .select(events::event_id)
                .load::<String>(conn)?,
        );
    }
    let mut fresh: Vec<&NewEvent> = Vec::with_capacity(rows.len());
    for &row in rows {
        if known.insert(row.event_id.clone()) {
            fresh.push(row);
        } else if let Some(group) = row.state_before {
            set_state_before_if_unknown(conn, &row.event_id, group)?;
        }
    }
    for chunk in fresh.chunks(EVENT_CHUNK) {
        let chunk: Vec<NewEvent> = chunk.iter().map(|r| (*r).clone()).collect();
        match conn {
            AnyConnection::Sqlite(c) => diesel::insert_into(events::table)
                .values(&chunk)
                .execute(c)?,
            AnyConnection::Postgresql(c) => diesel::insert_into(events::table)
                .values(&chunk)
                .execute(c)?,
        };
        // Outliers are never in the timeline: nothing for the relation or search indexes
        // (`relations::index_event`, `search::index_event` skip them too).
    }
    Ok(fresh.len())
}

/// Rows per multi-row INSERT of a timeline batch's events and search rows: a batch is cut
/// into chunks of these sizes, largest first (50 rows: 32 + 16 + 2), so every statement
/// has one of a few shapes and stays in diesel's and SQLite's statement caches.
pub(crate) const ROW_CHUNKS: [usize; 6] = [32, 16, 8, 4, 2, 1];

/// `rows` cut into chunks of [`ROW_CHUNKS`] sizes, largest first.
pub(crate) fn fixed_chunks<T>(rows: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let size = ROW_CHUNKS
            .iter()
            .copied()
            .find(|&n| n <= rest.len())
            .unwrap_or(1);
        let (chunk, tail) = rest.split_at(size);
        out.push(chunk);
        rest = tail;
    }
    out
}

/// [`insert_event`] for each row, in order, in a few statements: one read of which are
/// stored, multi-row INSERTs of the new ones ([`fixed_chunks`]), their relation rows (and
/// search rows for backfilled history; the search indexer writes the rest). Rows already stored go through [`insert_event`] one by one (an outlier copy is
/// promoted as there). A batch naming one event twice goes through [`insert_event`]
/// entirely. Answers, per row, whether it was new or promoted.
pub fn insert_events(conn: &mut AnyConnection, rows: &[&NewEvent]) -> StorageResult<Vec<bool>> {
    let mut ids: std::collections::HashSet<&str> = std::collections::HashSet::new();
    if rows.len() < 2 || !rows.iter().all(|r| ids.insert(r.event_id.as_str())) {
        return rows.iter().map(|r| insert_event(conn, r)).collect();
    }
    let mut stored: std::collections::HashSet<String> = std::collections::HashSet::new();
    for chunk in fixed_chunks(rows) {
        let ids: Vec<&str> = chunk.iter().map(|r| r.event_id.as_str()).collect();
        stored.extend(
            events::table
                .filter(events::event_id.eq_any(ids))
                .select(events::event_id)
                .load::<String>(conn)?,
        );
    }
    let fresh: Vec<&NewEvent> = rows
        .iter()
        .copied()
        .filter(|r| !stored.contains(&r.event_id))
        .collect();
    for chunk in fixed_chunks(&fresh) {
        match conn {
            AnyConnection::Sqlite(c) => diesel::insert_into(events::table)
                .values(chunk.to_vec())
                .execute(c)?,
            AnyConnection::Postgresql(c) => diesel::insert_into(events::table)
                .values(chunk.to_vec())
                .execute(c)?,
        };
    }
    for row in &fresh {
        super::relations::index_event(conn, row)?;
    }
    // Search rows are the indexer's, off this commit (`search::index_backfilled` writes
    // only backfilled history's here).
    super::search::index_backfilled(conn, &fresh)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(if stored.contains(&row.event_id) {
            insert_event(conn, row)?
        } else {
            true
        });
    }
    Ok(out)
}

/// Why a stored event was rejected (`None`: not stored, or not rejected).
pub fn rejection(conn: &mut AnyConnection, event_id: &str) -> StorageResult<Option<String>> {
    Ok(events::table
        .filter(events::event_id.eq(event_id))
        .select(events::rejected)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// The stored status of some events: `event_id → (in the timeline, rejected reason)`.
pub fn statuses(
    conn: &mut AnyConnection,
    ids: &[String],
) -> StorageResult<std::collections::HashMap<String, (bool, Option<String>)>> {
    let mut out = std::collections::HashMap::new();
    for chunk in ids.chunks(500) {
        let rows: Vec<(String, bool, Option<String>)> = events::table
            .filter(events::event_id.eq_any(chunk))
            .select((events::event_id, events::outlier, events::rejected))
            .load(conn)?;
        for (id, outlier, rejected) in rows {
            out.insert(id, (!outlier, rejected));
        }
    }
    Ok(out)
}

pub fn get_event(conn: &mut AnyConnection, event_id: &str) -> StorageResult<Option<EventRow>> {
    Ok(events::table
        .filter(events::event_id.eq(event_id))
        .first::<EventRow>(conn)
        .optional()?)
}

pub fn get_events(conn: &mut AnyConnection, ids: &[String]) -> StorageResult<Vec<EventRow>> {
    let mut out = Vec::with_capacity(ids.len());
    // Chunked to stay under SQLite's bound-parameter limit.
    for chunk in ids.chunks(500) {
        out.extend(
            events::table
                .filter(events::event_id.eq_any(chunk))
                .load::<EventRow>(conn)?,
        );
    }
    Ok(out)
}

/// Timeline events of a room with `after < stream_ordering <= upto`, oldest first, at most
/// `limit` of the newest such events when `newest` is set (else the oldest).
pub fn timeline_range(
    conn: &mut AnyConnection,
    room_id: &str,
    after: i64,
    upto: i64,
    limit: i64,
    newest: bool,
) -> StorageResult<Vec<EventRow>> {
    let q = events::table
        .filter(events::room_id.eq(room_id))
        .filter(events::stream_ordering.gt(after))
        .filter(events::stream_ordering.le(upto))
        .filter(events::outlier.eq(false))
        .filter(events::rejected.is_null())
        .filter(events::soft_failed.eq(false));
    let mut rows = if newest {
        q.order(events::stream_ordering.desc())
            .limit(limit)
            .load::<EventRow>(conn)?
    } else {
        q.order(events::stream_ordering.asc())
            .limit(limit)
            .load::<EventRow>(conn)?
    };
    if newest {
        rows.reverse();
    }
    Ok(rows)
}

/// Whether the room has any timeline event with `after < stream_ordering <= upto`.
pub fn has_events_in_range(
    conn: &mut AnyConnection,
    room_id: &str,
    after: i64,
    upto: i64,
) -> StorageResult<bool> {
    let n: i64 = events::table
        .filter(events::room_id.eq(room_id))
        .filter(events::stream_ordering.gt(after))
        .filter(events::stream_ordering.le(upto))
        .filter(events::outlier.eq(false))
        .filter(events::rejected.is_null())
        .filter(events::soft_failed.eq(false))
        .count()
        .get_result(conn)?;
    Ok(n > 0)
}

/// The highest and lowest stream positions used by events.
pub fn stream_bounds(conn: &mut AnyConnection) -> StorageResult<(i64, i64)> {
    let max: Option<i64> = events::table
        .select(diesel::dsl::max(events::stream_ordering))
        .first(conn)?;
    let min: Option<i64> = events::table
        .select(diesel::dsl::min(events::stream_ordering))
        .first(conn)?;
    Ok((max.unwrap_or(0), min.unwrap_or(0)))
}

pub fn set_redacted_by(
    conn: &mut AnyConnection,
    event_id: &str,
    redaction_id: &str,
) -> StorageResult<()> {
    diesel::update(events::table.filter(events::event_id.eq(event_id)))
        .set(events::redacted_by.eq(redaction_id))
        .execute(conn)?;
    // A redaction strips `m.relates_to`: the event no longer relates to anything.
    super::relations::forget_event(conn, event_id)?;
    super::search::forget_event(conn, event_id)?;
    Ok(())
}

/// The event a device's transaction created; `scope` is what the request path names besides
/// the transaction ID (see `rooms::messages::TxnKey`).
pub fn get_txn(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    scope: &str,
    txn_id: &str,
) -> StorageResult<Option<String>> {
    Ok(event_txns::table
        .filter(event_txns::user_id.eq(user_id))
        .filter(event_txns::device_id.eq(device_id))
        .filter(event_txns::scope.eq(scope))
        .filter(event_txns::txn_id.eq(txn_id))
        .select(event_txns::event_id)
        .first(conn)
        .optional()?)
}

pub fn insert_txn(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    scope: &str,
    txn_id: &str,
    event_id: &str,
) -> StorageResult<()> {
    if get_txn(conn, user_id, device_id, scope, txn_id)?.is_none() {
        diesel::insert_into(event_txns::table)
            .values((
                event_txns::user_id.eq(user_id),
                event_txns::device_id.eq(device_id),
                event_txns::scope.eq(scope),
                event_txns::txn_id.eq(txn_id),
                event_txns::event_id.eq(event_id),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// The transaction ID a device used for an event (for `unsigned.transaction_id`).
pub fn txn_for_event(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    event_ids: &[String],
) -> StorageResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for chunk in event_ids.chunks(500) {
        out.extend(
            event_txns::table
                .filter(event_txns::user_id.eq(user_id))
                .filter(event_txns::device_id.eq(device_id))
                .filter(event_txns::event_id.eq_any(chunk))
                .select((event_txns::event_id, event_txns::txn_id))
                .load::<(String, String)>(conn)?,
        );
    }
    Ok(out)
}

/// Records the state before an event we hold without it (an outlier whose state was
/// fetched to bridge a gap).
pub fn set_state_before_if_unknown(
    conn: &mut AnyConnection,
    event_id: &str,
    group: i64,
) -> StorageResult<()> {
    diesel::update(
        events::table
            .filter(events::event_id.eq(event_id))
            .filter(events::state_before.is_null()),
    )
    .set(events::state_before.eq(group))
    .execute(conn)?;
    Ok(())
}

const VISIBILITY: &str = "m.room.history_visibility";
const MEMBER: &str = "m.room.member";

/// The timeline events that decide a user's history visibility in a room, in stream order:
/// the room's `m.room.history_visibility` events and the user's own `m.room.member` events,
/// as `(stream_ordering, event_type, json)`.
///
/// Every `/event`, `/context` and `/messages` answer asks this, so it must cost what the
/// few matching events cost, not what the room's history costs: it is two queries, each
/// equalities on all of `events_room_type_key` (room, type, state key) with no `ORDER BY`
/// (SQLite's planner picks `events_room_stream` and reads every event of the room for an
/// `OR` of the two pairs or for an order on `stream_ordering`), sorted here. Each has a
/// fixed shape, so diesel keeps it prepared (an `IN` list would be parsed on every call).
pub fn visibility_events(
    conn: &mut AnyConnection,
    room_id: &str,
    user_id: &str,
) -> StorageResult<Vec<(i64, String, String)>> {
    let mut out: Vec<(i64, String, String)> = Vec::new();
    for (kind, key) in [(VISIBILITY, ""), (MEMBER, user_id)] {
        let rows: Vec<(Option<i64>, String)> = events::table
            .filter(events::room_id.eq(room_id))
            .filter(events::event_type.eq(kind))
            .filter(events::state_key.eq(key))
            .filter(events::outlier.eq(false))
            .filter(events::rejected.is_null())
            .filter(events::soft_failed.eq(false))
            .select((events::stream_ordering, events::json))
            .load(conn)?;
        out.extend(
            rows.into_iter()
                .filter_map(|(s, json)| s.map(|s| (s, kind.to_owned(), json))),
        );
    }
    out.sort_by_key(|(s, _, _)| *s);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, kind: &str, key: Option<&str>, stream: i64) -> NewEvent {
        NewEvent {
            event_id: id.into(),
            room_id: "!r:x".into(),
            stream_ordering: Some(stream),
            depth: stream,
            event_type: kind.into(),
            state_key: key.map(str::to_owned),
            sender: "@a:x".into(),
            origin_server_ts: 0,
            json: format!("{{\"id\":\"{id}\"}}"),
            state_before: None,
            state_after: None,
            outlier: false,
            rejected: None,
            soft_failed: false,
            redacted_by: None,
        }
    }

    /// Only the room's history visibility and the user's own membership decide, in stream
    /// order; the cross pairings, other users, keyed visibilities, other rooms and rejected
    /// events do not.
    #[test]
    fn only_the_visibility_and_the_users_own_membership_decide() {
        let dir = std::env::temp_dir().join(format!(
            "weft-visibility-events-{}-{}",
            std::process::id(),
            crate::random::random_string(6)
        ));
        let config = crate::config::Config {
            server_name: "x".into(),
            data_dir: dir.clone(),
            ..crate::config::Config::default()
        };
        let db = super::super::Db::open(&config).expect("open the database");
        let me = "@bob:example.org";
        let mut rejected = row("$rej", MEMBER, Some(me), 9);
        rejected.rejected = Some("auth".into());
        let mut elsewhere = row("$other-room", VISIBILITY, Some(""), 10);
        elsewhere.room_id = "!s:x".into();
        let rows = vec![
            row("$m2", MEMBER, Some(me), 7),
            row("$v1", VISIBILITY, Some(""), 2),
            row("$m1", MEMBER, Some(me), 4),
            row("$v2", VISIBILITY, Some(""), 8),
            row("$cross1", VISIBILITY, Some(me), 3),
            row("$cross2", MEMBER, Some(""), 5),
            row("$alice", MEMBER, Some("@alice:example.org"), 6),
            row("$keyed", VISIBILITY, Some("x"), 11),
            row("$msg", "m.room.message", None, 12),
            rejected,
            elsewhere,
        ];
        db.write_blocking("!r:x", move |c| {
            for r in &rows {
                insert_event(c, r)?;
            }
            Ok(())
        })
        .expect("insert");
        let got = db
            .read_blocking(|c| visibility_events(c, "!r:x", me))
            .expect("read");
        let want = [
            (2, VISIBILITY, "$v1"),
            (4, MEMBER, "$m1"),
            (7, MEMBER, "$m2"),
            (8, VISIBILITY, "$v2"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((s, kind, json), (ws, wkind, wid)) in got.iter().zip(want) {
            assert_eq!((*s, kind.as_str()), (ws, wkind));
            assert!(json.contains(wid), "{json} is {wid}");
        }
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
