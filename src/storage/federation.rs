//! Federation storage: remote server keys, inbound transaction dedupe, the outbound queue and
//! destination retry state.

use diesel::prelude::*;

use super::schema::{
    destinations, inbound_txns, outbound_queue, server_key_responses, server_keys,
};
use super::{AnyConnection, StorageResult};

/// Stores a server's latest key response and the keys it lists.
pub fn store_server_keys(
    conn: &mut AnyConnection,
    server: &str,
    response: &str,
    valid_until_ts: i64,
    keys: &[(String, String, i64)],
    now: i64,
) -> StorageResult<()> {
    diesel::delete(
        server_key_responses::table.filter(server_key_responses::server_name.eq(server)),
    )
    .execute(conn)?;
    diesel::insert_into(server_key_responses::table)
        .values((
            server_key_responses::server_name.eq(server),
            server_key_responses::response.eq(response),
            server_key_responses::valid_until_ts.eq(valid_until_ts),
            server_key_responses::fetched_ts.eq(now),
        ))
        .execute(conn)?;
    for (key_id, public_key, valid_until) in keys {
        diesel::delete(
            server_keys::table
                .filter(server_keys::server_name.eq(server))
                .filter(server_keys::key_id.eq(key_id)),
        )
        .execute(conn)?;
        diesel::insert_into(server_keys::table)
            .values((
                server_keys::server_name.eq(server),
                server_keys::key_id.eq(key_id),
                server_keys::public_key.eq(public_key),
                server_keys::valid_until_ts.eq(valid_until),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Known keys of a server: `(key_id, public_key, valid_until_ts)`.
pub fn server_keys(
    conn: &mut AnyConnection,
    server: &str,
) -> StorageResult<Vec<(String, String, i64)>> {
    Ok(server_keys::table
        .filter(server_keys::server_name.eq(server))
        .select((
            server_keys::key_id,
            server_keys::public_key,
            server_keys::valid_until_ts,
        ))
        .load(conn)?)
}

/// The stored key response of a server: `(json, valid_until_ts)`.
pub fn server_key_response(
    conn: &mut AnyConnection,
    server: &str,
) -> StorageResult<Option<(String, i64)>> {
    Ok(server_key_responses::table
        .filter(server_key_responses::server_name.eq(server))
        .select((
            server_key_responses::response,
            server_key_responses::valid_until_ts,
        ))
        .first(conn)
        .optional()?)
}

pub fn get_inbound_txn(
    conn: &mut AnyConnection,
    origin: &str,
    txn_id: &str,
) -> StorageResult<Option<String>> {
    Ok(inbound_txns::table
        .filter(inbound_txns::origin.eq(origin))
        .filter(inbound_txns::txn_id.eq(txn_id))
        .select(inbound_txns::response)
        .first(conn)
        .optional()?)
}

pub fn put_inbound_txn(
    conn: &mut AnyConnection,
    origin: &str,
    txn_id: &str,
    response: &str,
    now: i64,
) -> StorageResult<()> {
    if get_inbound_txn(conn, origin, txn_id)?.is_some() {
        return Ok(());
    }
    diesel::insert_into(inbound_txns::table)
        .values((
            inbound_txns::origin.eq(origin),
            inbound_txns::txn_id.eq(txn_id),
            inbound_txns::response.eq(response),
            inbound_txns::received_ts.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// An item owed to a destination.
#[derive(Debug, Clone, Queryable)]
pub struct QueueRow {
    pub id: i64,
    pub destination: String,
    pub kind: String,
    pub payload: String,
    pub created_ts: i64,
}

pub fn enqueue(
    conn: &mut AnyConnection,
    id: i64,
    destination: &str,
    kind: &str,
    payload: &str,
    now: i64,
) -> StorageResult<()> {
    diesel::insert_into(outbound_queue::table)
        .values((
            outbound_queue::id.eq(id),
            outbound_queue::destination.eq(destination),
            outbound_queue::kind.eq(kind),
            outbound_queue::payload.eq(payload),
            outbound_queue::created_ts.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// The oldest queued items of a destination, `kind`-filtered, after `after_id`.
pub fn peek_queue(
    conn: &mut AnyConnection,
    destination: &str,
    kind: &str,
    limit: i64,
) -> StorageResult<Vec<QueueRow>> {
    Ok(outbound_queue::table
        .filter(outbound_queue::destination.eq(destination))
        .filter(outbound_queue::kind.eq(kind))
        .order(outbound_queue::id.asc())
        .limit(limit)
        .load::<QueueRow>(conn)?)
}

pub fn dequeue(conn: &mut AnyConnection, destination: &str, ids: &[i64]) -> StorageResult<()> {
    for chunk in ids.chunks(500) {
        diesel::delete(
            outbound_queue::table
                .filter(outbound_queue::destination.eq(destination))
                .filter(outbound_queue::id.eq_any(chunk)),
        )
        .execute(conn)?;
    }
    Ok(())
}

/// Destinations with something queued, and how much.
pub fn queue_depths(conn: &mut AnyConnection) -> StorageResult<Vec<(String, i64)>> {
    Ok(outbound_queue::table
        .group_by(outbound_queue::destination)
        .select((outbound_queue::destination, diesel::dsl::count_star()))
        .load(conn)?)
}

pub fn max_queue_id(conn: &mut AnyConnection) -> StorageResult<i64> {
    let max: Option<i64> = outbound_queue::table
        .select(diesel::dsl::max(outbound_queue::id))
        .first(conn)?;
    Ok(max.unwrap_or(0))
}

/// Retry state of a destination: `(failures, retry_at)`.
pub fn destination_state(
    conn: &mut AnyConnection,
    server: &str,
) -> StorageResult<Option<(i32, i64)>> {
    Ok(destinations::table
        .filter(destinations::server_name.eq(server))
        .select((destinations::failures, destinations::retry_at))
        .first(conn)
        .optional()?)
}

pub fn set_destination_state(
    conn: &mut AnyConnection,
    server: &str,
    failures: i32,
    retry_at: i64,
    success_ts: Option<i64>,
    error: Option<&str>,
) -> StorageResult<()> {
    let prev_success: Option<Option<i64>> = destinations::table
        .filter(destinations::server_name.eq(server))
        .select(destinations::last_success_ts)
        .first(conn)
        .optional()?;
    diesel::delete(destinations::table.filter(destinations::server_name.eq(server)))
        .execute(conn)?;
    diesel::insert_into(destinations::table)
        .values((
            destinations::server_name.eq(server),
            destinations::failures.eq(failures),
            destinations::retry_at.eq(retry_at),
            destinations::last_success_ts.eq(success_ts.or(prev_success.flatten())),
            destinations::last_error.eq(error),
        ))
        .execute(conn)?;
    Ok(())
}

/// How many rows a destination has queued, and when the oldest was queued.
pub fn queue_stats(
    conn: &mut AnyConnection,
    destination: &str,
) -> StorageResult<(i64, Option<i64>)> {
    Ok(outbound_queue::table
        .filter(outbound_queue::destination.eq(destination))
        .select((
            diesel::dsl::count_star(),
            diesel::dsl::min(outbound_queue::created_ts),
        ))
        .first(conn)?)
}

/// Every queued row of one kind for a destination, `(id, payload)`, oldest first.
pub fn queue_payloads(
    conn: &mut AnyConnection,
    destination: &str,
    kind: &str,
) -> StorageResult<Vec<(i64, String)>> {
    Ok(outbound_queue::table
        .filter(outbound_queue::destination.eq(destination))
        .filter(outbound_queue::kind.eq(kind))
        .order(outbound_queue::id.asc())
        .select((outbound_queue::id, outbound_queue::payload))
        .load(conn)?)
}

/// The room of each of `event_ids` that we hold, `(event_id, room_id)`.
pub fn rooms_of_events(
    conn: &mut AnyConnection,
    event_ids: &[String],
) -> StorageResult<Vec<(String, String)>> {
    use super::schema::events;
    let mut out = Vec::with_capacity(event_ids.len());
    for chunk in event_ids.chunks(500) {
        out.extend(
            events::table
                .filter(events::event_id.eq_any(chunk))
                .select((events::event_id, events::room_id))
                .load::<(String, String)>(conn)?,
        );
    }
    Ok(out)
}

/// A destination's persisted retry state, as the operator sees it.
#[derive(Debug, Clone, Queryable)]
pub struct DestinationRow {
    pub server_name: String,
    pub failures: i32,
    pub retry_at: i64,
    pub last_success_ts: Option<i64>,
    pub last_error: Option<String>,
}

/// Every destination with persisted retry state.
pub fn destination_rows(conn: &mut AnyConnection) -> StorageResult<Vec<DestinationRow>> {
    Ok(destinations::table
        .select((
            destinations::server_name,
            destinations::failures,
            destinations::retry_at,
            destinations::last_success_ts,
            destinations::last_error,
        ))
        .load(conn)?)
}
