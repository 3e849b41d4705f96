//! Retention: tables that exist only to recognise a retry (transaction IDs, to-device
//! de-duplication) or to answer "what changed since" (the device-list change log) are pruned
//! after a configured age, so they do not grow with the server's lifetime.
//!
//! Tables without a timestamp of their own carry `seen_ts`, stamped by the sweep the first
//! time it sees a row (the insert paths need not know about retention); such a row lives its
//! age plus at most one sweep interval. A retried transaction older than the horizon is
//! processed as new (clients and peers retry within minutes); a client whose `since` is
//! older than the device-list horizon misses changes before it (it would have to re-query
//! keys anyway after such an absence).

use diesel::prelude::*;

use super::StorageResult;
use super::connection::AnyConnection;
use super::schema::{
    device_list_changes, event_txns, inbound_txns, to_device_inbound_ids, to_device_txns,
};

/// Ages in milliseconds (0: keep forever).
#[derive(Debug, Clone, Copy)]
pub struct Ages {
    pub inbound_txn_ms: i64,
    pub event_txn_ms: i64,
    pub to_device_dedup_ms: i64,
    pub device_list_changes_ms: i64,
}

/// Rows deleted per table by one sweep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub inbound_txns: usize,
    pub event_txns: usize,
    pub to_device_txns: usize,
    pub to_device_inbound_ids: usize,
    pub device_list_changes: usize,
}

impl Pruned {
    pub fn total(&self) -> usize {
        self.inbound_txns
            + self.event_txns
            + self.to_device_txns
            + self.to_device_inbound_ids
            + self.device_list_changes
    }
}

/// Stamps unseen rows with `now` and deletes what is older than its age.
pub fn prune(conn: &mut AnyConnection, now: i64, ages: Ages) -> StorageResult<Pruned> {
    let mut p = Pruned::default();
    diesel::update(event_txns::table.filter(event_txns::seen_ts.eq(0)))
        .set(event_txns::seen_ts.eq(now))
        .execute(conn)?;
    diesel::update(to_device_txns::table.filter(to_device_txns::seen_ts.eq(0)))
        .set(to_device_txns::seen_ts.eq(now))
        .execute(conn)?;
    diesel::update(device_list_changes::table.filter(device_list_changes::seen_ts.eq(0)))
        .set(device_list_changes::seen_ts.eq(now))
        .execute(conn)?;
    if ages.inbound_txn_ms > 0 {
        p.inbound_txns = diesel::delete(
            inbound_txns::table.filter(inbound_txns::received_ts.lt(now - ages.inbound_txn_ms)),
        )
        .execute(conn)?;
    }
    if ages.event_txn_ms > 0 {
        p.event_txns = diesel::delete(
            event_txns::table
                .filter(event_txns::seen_ts.gt(0))
                .filter(event_txns::seen_ts.lt(now - ages.event_txn_ms)),
        )
        .execute(conn)?;
    }
    if ages.to_device_dedup_ms > 0 {
        let horizon = now - ages.to_device_dedup_ms;
        p.to_device_txns = diesel::delete(
            to_device_txns::table
                .filter(to_device_txns::seen_ts.gt(0))
                .filter(to_device_txns::seen_ts.lt(horizon)),
        )
        .execute(conn)?;
        p.to_device_inbound_ids = diesel::delete(
            to_device_inbound_ids::table.filter(to_device_inbound_ids::received_ts.lt(horizon)),
        )
        .execute(conn)?;
    }
    if ages.device_list_changes_ms > 0 {
        p.device_list_changes = diesel::delete(
            device_list_changes::table
                .filter(device_list_changes::seen_ts.gt(0))
                .filter(device_list_changes::seen_ts.lt(now - ages.device_list_changes_ms)),
        )
        .execute(conn)?;
    }
    Ok(p)
}

/// Row counts of the pruned tables (tests, status).
pub fn counts(conn: &mut AnyConnection) -> StorageResult<[i64; 5]> {
    Ok([
        inbound_txns::table.count().get_result(conn)?,
        event_txns::table.count().get_result(conn)?,
        to_device_txns::table.count().get_result(conn)?,
        to_device_inbound_ids::table.count().get_result(conn)?,
        device_list_changes::table.count().get_result(conn)?,
    ])
}
