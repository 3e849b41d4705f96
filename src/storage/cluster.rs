//! The cluster's rows (PostgreSQL only; `docs/CLUSTER.md`): room ownership leases, the shared
//! sequences for stream positions and state group IDs, and the **fence**.
//!
//! Lease times are the database's own clock (`clock_timestamp()` in milliseconds), so nodes
//! with skewed clocks still agree on when a lease ends. An acquisition succeeds only when the
//! lease is free, expired, or already ours, and always increments the epoch.
//!
//! The fence: once a node runs in cluster mode it installs [`install_fence`]; from then on every
//! batch of room events ([`crate::rooms::persist::PersistBatch`]) first calls [`check_fence`]
//! inside its write transaction, which locks the room's lease row (`FOR SHARE`) and refuses the
//! write unless this node holds the lease, at the epoch it acquired, unexpired. A take-over
//! (`UPDATE ... epoch + 1`) waits for that lock, so no batch commits after its node has lost
//! the room. A node paused (or cut off) inside such a transaction must not hold the room
//! forever: the fence also sets `idle_in_transaction_session_timeout` for the rest of the
//! transaction, so PostgreSQL ends a transaction left idle for [`IDLE_TX_TIMEOUT_MS`] (the
//! paused node's commit then fails: its write is refused), and a take-over waits at most
//! `lock_timeout` before trying again. A single node installs no fence and pays nothing.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use diesel::RunQueryDsl;
use diesel::pg::PgConnection;
use diesel::sql_types::{Array, BigInt, Text};

use super::{AnyConnection, StorageError, StorageResult};

/// How long a fenced transaction may sit idle before PostgreSQL ends it (a paused node).
pub const IDLE_TX_TIMEOUT_MS: i64 = 1000;

const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

fn pg(conn: &mut AnyConnection) -> StorageResult<&mut PgConnection> {
    match conn {
        AnyConnection::Postgresql(c) => Ok(c),
        AnyConnection::Sqlite(_) => Err(StorageError::Connection(
            "cluster mode needs PostgreSQL".into(),
        )),
    }
}

#[derive(diesel::QueryableByName)]
struct EpochRow {
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

#[derive(diesel::QueryableByName)]
struct HeldRow {
    #[diesel(sql_type = Text)]
    room_id: String,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
}

#[derive(diesel::QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = Text)]
    owner: String,
    #[diesel(sql_type = BigInt)]
    epoch: i64,
    #[diesel(sql_type = BigInt)]
    remaining_ms: i64,
}

#[derive(diesel::QueryableByName)]
struct ValueRow {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

/// A room's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub epoch: i64,
    /// Milliseconds left (negative: expired that long ago).
    pub remaining_ms: i64,
}

/// Takes a room's lease for `node` if it is free, expired or already `node`'s: the new epoch,
/// or `None` when another node holds it.
pub fn acquire(
    conn: &mut AnyConnection,
    room_id: &str,
    node: &str,
    ttl_ms: i64,
) -> StorageResult<Option<i64>> {
    let q = format!(
        "INSERT INTO cluster_leases (room_id, owner, epoch, expires_at) VALUES ($1, $2, 1, {NOW_MS} + $3) \
         ON CONFLICT (room_id) DO UPDATE SET owner = $2, epoch = cluster_leases.epoch + 1, \
         expires_at = {NOW_MS} + $3 \
         WHERE cluster_leases.owner = $2 OR cluster_leases.expires_at < {NOW_MS} \
         RETURNING epoch"
    );
    let c = pg(conn)?;
    let got = diesel::Connection::transaction::<_, diesel::result::Error, _>(c, |c| {
        // A former owner paused inside a fenced transaction holds the row until PostgreSQL
        // ends it; do not wait longer than that here (the caller tries again).
        diesel::sql_query(format!(
            "SET LOCAL lock_timeout = '{}ms'",
            IDLE_TX_TIMEOUT_MS * 2
        ))
        .execute(c)?;
        let rows: Vec<EpochRow> = diesel::sql_query(&q)
            .bind::<Text, _>(room_id)
            .bind::<Text, _>(node)
            .bind::<BigInt, _>(ttl_ms)
            .load(c)?;
        Ok(rows.first().map(|r| r.epoch))
    });
    match got {
        Ok(epoch) => Ok(epoch),
        // lock_timeout: 55P03 (lock_not_available); someone else's transaction holds it.
        Err(diesel::result::Error::DatabaseError(_, info))
            if info.message().contains("lock timeout") =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Extends `node`'s leases on `rooms`; answers the ones still held and their epochs (a room
/// missing from the answer was taken over).
///
/// One statement takes every row nobody else has locked (`SKIP LOCKED`); the few a write
/// transaction holds at that moment (the fence's `FOR SHARE`) are then renewed one statement
/// each. A single `UPDATE` over all of them would wait for one such row while holding the
/// others, and a writer batch fencing two rooms in the other order would deadlock with it.
pub fn renew(
    conn: &mut AnyConnection,
    node: &str,
    rooms: &[String],
    ttl_ms: i64,
) -> StorageResult<HashMap<String, i64>> {
    let bulk = format!(
        "WITH free AS (SELECT room_id FROM cluster_leases WHERE owner = $1 AND room_id = ANY($2) \
         FOR UPDATE SKIP LOCKED) \
         UPDATE cluster_leases l SET expires_at = {NOW_MS} + $3 FROM free \
         WHERE l.room_id = free.room_id RETURNING l.room_id, l.epoch"
    );
    let c = pg(conn)?;
    let rows: Vec<HeldRow> = diesel::sql_query(bulk)
        .bind::<Text, _>(node)
        .bind::<Array<Text>, _>(rooms)
        .bind::<BigInt, _>(ttl_ms)
        .load(c)?;
    let mut held: HashMap<String, i64> = rows.into_iter().map(|r| (r.room_id, r.epoch)).collect();
    let one = format!(
        "UPDATE cluster_leases SET expires_at = {NOW_MS} + $3 \
         WHERE owner = $1 AND room_id = $2 RETURNING room_id, epoch"
    );
    let busy: Vec<&String> = rooms.iter().filter(|r| !held.contains_key(*r)).collect();
    for room in busy {
        let rows: Vec<HeldRow> = diesel::sql_query(&one)
            .bind::<Text, _>(node)
            .bind::<Text, _>(room)
            .bind::<BigInt, _>(ttl_ms)
            .load(c)?;
        held.extend(rows.into_iter().map(|r| (r.room_id, r.epoch)));
    }
    Ok(held)
}

/// Gives up leases (a node leaving, or rooms that now hash elsewhere).
pub fn release(conn: &mut AnyConnection, node: &str, rooms: &[String]) -> StorageResult<()> {
    diesel::sql_query("DELETE FROM cluster_leases WHERE owner = $1 AND room_id = ANY($2)")
        .bind::<Text, _>(node)
        .bind::<Array<Text>, _>(rooms)
        .execute(pg(conn)?)?;
    Ok(())
}

/// Ends `node`'s lease on `key` at `epoch` now, keeping the row (so the next acquisition
/// still gets a higher epoch). A lease re-acquired meanwhile (another epoch) is left alone.
pub fn expire(conn: &mut AnyConnection, node: &str, key: &str, epoch: i64) -> StorageResult<()> {
    diesel::sql_query(
        "UPDATE cluster_leases SET expires_at = 0 WHERE room_id = $1 AND owner = $2 AND epoch = $3",
    )
    .bind::<Text, _>(key)
    .bind::<Text, _>(node)
    .bind::<BigInt, _>(epoch)
    .execute(pg(conn)?)?;
    Ok(())
}

/// Ends every lease `node` holds among `keys` now, keeping the rows (a node cut off from
/// NATS giving its rooms and destinations back).
pub fn expire_all(conn: &mut AnyConnection, node: &str, keys: &[String]) -> StorageResult<()> {
    diesel::sql_query(
        "UPDATE cluster_leases SET expires_at = 0 WHERE owner = $1 AND room_id = ANY($2)",
    )
    .bind::<Text, _>(node)
    .bind::<Array<Text>, _>(keys)
    .execute(pg(conn)?)?;
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Records that `node` last heard its own heartbeat back from NATS `echo_age_ms` ago
/// (`cluster_nodes`), and answers how many *other* nodes heard theirs within the last
/// `within_ms`: none means NATS is down for everyone (or the node is alone), some means this
/// node alone is cut off.
pub fn note_nats_seen(
    conn: &mut AnyConnection,
    node: &str,
    echo_age_ms: i64,
    within_ms: i64,
) -> StorageResult<i64> {
    let c = pg(conn)?;
    diesel::sql_query(format!(
        "INSERT INTO cluster_nodes (node, nats_seen_at) VALUES ($1, {NOW_MS} - $2) \
         ON CONFLICT (node) DO UPDATE SET nats_seen_at = EXCLUDED.nats_seen_at"
    ))
    .bind::<Text, _>(node)
    .bind::<BigInt, _>(echo_age_ms)
    .execute(c)?;
    let rows: Vec<CountRow> = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM cluster_nodes WHERE node <> $1 AND nats_seen_at > {NOW_MS} - $2"
    ))
    .bind::<Text, _>(node)
    .bind::<BigInt, _>(within_ms)
    .load(c)?;
    Ok(rows.first().map(|r| r.n).unwrap_or(0))
}

#[derive(diesel::QueryableByName)]
struct DestinationRow {
    #[diesel(sql_type = Text)]
    destination: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    mine: bool,
}

/// Destinations with queued outbound rows whose delivery lease (key `key_prefix` + name) is
/// missing, expired, or held by `node`: `(destination, held by node)`. What a node sweeps for
/// work nobody is sending (a dead owner's, or rows whose wake-up was lost).
pub fn destinations_to_sweep(
    conn: &mut AnyConnection,
    node: &str,
    key_prefix: &str,
) -> StorageResult<Vec<(String, bool)>> {
    let q = format!(
        "SELECT q.destination AS destination, bool_or(COALESCE(l.owner = $2 AND l.expires_at > {NOW_MS}, false)) AS mine \
         FROM outbound_queue q LEFT JOIN cluster_leases l ON l.room_id = $1 || q.destination \
         WHERE l.room_id IS NULL OR l.expires_at < {NOW_MS} OR l.owner = $2 \
         GROUP BY q.destination"
    );
    let rows: Vec<DestinationRow> = diesel::sql_query(q)
        .bind::<Text, _>(key_prefix)
        .bind::<Text, _>(node)
        .load(pg(conn)?)?;
    Ok(rows.into_iter().map(|r| (r.destination, r.mine)).collect())
}

/// The lease of a room, if any.
pub fn lease(conn: &mut AnyConnection, room_id: &str) -> StorageResult<Option<Lease>> {
    let q = format!(
        "SELECT owner, epoch, expires_at - {NOW_MS} AS remaining_ms FROM cluster_leases WHERE room_id = $1"
    );
    let rows: Vec<LeaseRow> = diesel::sql_query(q)
        .bind::<Text, _>(room_id)
        .load(pg(conn)?)?;
    Ok(rows.into_iter().next().map(|r| Lease {
        owner: r.owner,
        epoch: r.epoch,
        remaining_ms: r.remaining_ms,
    }))
}

/// The next stream position of the cluster.
pub fn next_stream_position(conn: &mut AnyConnection) -> StorageResult<i64> {
    next(conn, "cluster_stream_positions")
}

/// The next state group ID of the cluster.
pub fn next_state_group(conn: &mut AnyConnection) -> StorageResult<i64> {
    next(conn, "cluster_state_groups")
}

fn next(conn: &mut AnyConnection, seq: &'static str) -> StorageResult<i64> {
    crate::observe::metrics::cluster_sequence_call(seq.strip_prefix("cluster_").unwrap_or(seq));
    let rows: Vec<ValueRow> =
        diesel::sql_query(format!("SELECT nextval('{seq}') AS value")).load(pg(conn)?)?;
    rows.first()
        .map(|r| r.value)
        .ok_or_else(|| StorageError::Corrupt(format!("nextval({seq}) returned nothing")))
}

/// The next outbound queue row ID of the cluster (queue IDs name federation transactions, so
/// two nodes must never hand out the same one). Called inside the enqueuing transaction.
pub fn next_queue_id(conn: &mut AnyConnection) -> StorageResult<i64> {
    next(conn, "cluster_queue_ids")
}

/// The next backfill sequence value of the cluster (the backfill position is its negation).
pub fn next_backfill(conn: &mut AnyConnection) -> StorageResult<i64> {
    next(conn, "cluster_backfill_positions")
}

/// Moves the shared sequences past what is stored (a database used by a single node before,
/// or positions handed out by in-process counters): never backwards.
pub fn init_sequences(
    conn: &mut AnyConnection,
    max_stream: i64,
    max_group: i64,
) -> StorageResult<()> {
    init_sequences_with_queue(conn, max_stream, max_group, 1, 1)
}

/// [`init_sequences`], and the queue ID sequence past `min_queue`, and the backfill sequence
/// past `min_backfill` (the negation of the lowest backfill position stored).
pub fn init_sequences_with_queue(
    conn: &mut AnyConnection,
    max_stream: i64,
    max_group: i64,
    min_queue: i64,
    min_backfill: i64,
) -> StorageResult<()> {
    let c = pg(conn)?;
    for (seq, floor) in [
        ("cluster_stream_positions", max_stream),
        ("cluster_state_groups", max_group),
        ("cluster_queue_ids", min_queue),
        ("cluster_backfill_positions", min_backfill),
    ] {
        diesel::sql_query(format!(
            "SELECT setval('{seq}', GREATEST($1, (SELECT last_value FROM {seq}), 1)) AS value"
        ))
        .bind::<BigInt, _>(floor)
        .load::<ValueRow>(c)?;
    }
    Ok(())
}

/// Checks, inside the caller's transaction, that `node` still holds `room_id` at `epoch`, and
/// locks the lease row until the transaction ends.
pub fn holds(
    conn: &mut AnyConnection,
    room_id: &str,
    node: &str,
    epoch: i64,
) -> StorageResult<bool> {
    let q = format!(
        "SELECT epoch FROM cluster_leases WHERE room_id = $1 AND owner = $2 AND epoch = $3 \
         AND expires_at > {NOW_MS} FOR SHARE"
    );
    let c = pg(conn)?;
    diesel::sql_query(format!(
        "SET LOCAL idle_in_transaction_session_timeout = '{IDLE_TX_TIMEOUT_MS}ms'"
    ))
    .execute(c)?;
    let rows: Vec<EpochRow> = diesel::sql_query(q)
        .bind::<Text, _>(room_id)
        .bind::<Text, _>(node)
        .bind::<BigInt, _>(epoch)
        .load(c)?;
    Ok(!rows.is_empty())
}

/// What the fence asks: this node's name and the epoch it holds a room at (`None`: not held).
pub trait FenceSource: Send + Sync {
    fn node(&self) -> &str;
    fn epoch(&self, room_id: &str) -> Option<i64>;
}

static FENCE: OnceLock<Arc<dyn FenceSource>> = OnceLock::new();

/// Turns the fence on for this process (cluster start-up).
pub fn install_fence(source: Arc<dyn FenceSource>) {
    let _ = FENCE.set(source);
}

/// Refuses a write of `room_id`'s events unless this node holds the room's lease (no-op on a
/// single node).
pub fn check_fence(conn: &mut AnyConnection, room_id: &str) -> StorageResult<()> {
    let Some(fence) = FENCE.get() else {
        return Ok(());
    };
    let Some(epoch) = fence.epoch(room_id) else {
        tracing::warn!(
            room_id,
            "fenced: a write of a room this node no longer owns"
        );
        return Err(StorageError::Fenced(format!(
            "{} does not own {room_id}",
            fence.node()
        )));
    };
    if holds(conn, room_id, fence.node(), epoch)? {
        Ok(())
    } else {
        tracing::warn!(
            room_id,
            epoch,
            "fenced: a write of a room this node no longer owns"
        );
        Err(StorageError::Fenced(format!(
            "{} lost the lease of {room_id} (epoch {epoch})",
            fence.node()
        )))
    }
}
