//! Room state storage.
//!
//! # State groups
//!
//! Federation needs the state *before* any event (to authorize it, to answer `/state_ids`,
//! to resolve forks), not only the current state. Storing a full snapshot per event would
//! cost O(events × state size), so state is stored as **state groups**:
//!
//! * A state group is one immutable room state (`(type, state_key) → event_id`), named by an
//!   `i64` allocated in-process.
//! * A group is stored either in full (`parent` NULL, every entry listed) or as a **delta**
//!   against a parent group (`parent` set, only the changed entries listed; an entry with a
//!   NULL `event_id` removes that key, which state resolution may do).
//! * `delta_depth` counts the deltas between a group and its nearest full ancestor. When a new
//!   delta would exceed [`MAX_DELTA_DEPTH`], the group is written in full instead, so loading
//!   any group reads at most `MAX_DELTA_DEPTH + 1` groups.
//! * Every timeline event records `state_before`, the group of the state before it. A message
//!   event on top of the current state creates no group; a state event creates one delta
//!   group of one entry (the state after it), which the next event points at.
//!
//! # Current state
//!
//! `current_state` holds the resolved current state of each room, rewritten entry by entry in
//! the same transaction as the events that change it, and `forward_extremities` the room's
//! DAG tips (the `prev_events` of the next local event). Room actors load both when they start
//! and then keep them in memory.

use std::collections::HashMap;

use diesel::prelude::*;

use super::schema::{current_state, forward_extremities, state_group_entries, state_groups};
use super::{AnyConnection, StorageError, StorageResult};

/// Longest chain of deltas before a group is stored in full.
pub const MAX_DELTA_DEPTH: i32 = 64;

/// A state map keyed by `(type, state_key)`, values are event IDs.
pub type StateIds = HashMap<(String, String), String>;

/// A change to a state map: `None` removes the key.
pub type StateDelta = Vec<((String, String), Option<String>)>;

/// Writes a new group. `parent` is the group it is a delta of (`None` = full snapshot).
pub fn insert_group(
    conn: &mut AnyConnection,
    id: i64,
    room_id: &str,
    parent: Option<(i64, i32)>,
    entries: &StateDelta,
) -> StorageResult<()> {
    diesel::insert_into(state_groups::table)
        .values((
            state_groups::id.eq(id),
            state_groups::room_id.eq(room_id),
            state_groups::parent.eq(parent.map(|p| p.0)),
            state_groups::delta_depth.eq(parent.map(|p| p.1 + 1).unwrap_or(0)),
        ))
        .execute(conn)?;
    // Multi-row INSERTs (a joined room's first group has one entry per member). The
    // multi-backend connection has no batch insert of its own: each dialect's does it.
    for chunk in entries.chunks(ENTRY_CHUNK) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|((t, k), e)| {
                (
                    state_group_entries::group_id.eq(id),
                    state_group_entries::event_type.eq(t.as_str()),
                    state_group_entries::state_key.eq(k.as_str()),
                    state_group_entries::event_id.eq(e.as_deref()),
                )
            })
            .collect();
        match conn {
            AnyConnection::Sqlite(c) => diesel::insert_into(state_group_entries::table)
                .values(&rows)
                .execute(c)?,
            AnyConnection::Postgresql(c) => diesel::insert_into(state_group_entries::table)
                .values(&rows)
                .execute(c)?,
        };
    }
    Ok(())
}

/// Rows per multi-row INSERT of state entries (4 columns each: well under SQLite's and
/// PostgreSQL's limits on bound parameters).
const ENTRY_CHUNK: usize = 2000;

/// Stores the state `delta` applied to `parent` as a new group `id`, choosing between a delta
/// and a full snapshot. `parent_state` is the parent's full state (the caller has it).
pub fn store_group(
    conn: &mut AnyConnection,
    id: i64,
    room_id: &str,
    parent: Option<i64>,
    parent_state: &StateIds,
    delta: &StateDelta,
) -> StorageResult<()> {
    let depth = match parent {
        Some(p) => Some(group_depth(conn, p)?),
        None => None,
    };
    match (parent, depth) {
        (Some(p), Some(d)) if d < MAX_DELTA_DEPTH => {
            insert_group(conn, id, room_id, Some((p, d)), delta)
        }
        _ => {
            let mut full = parent_state.clone();
            apply_delta(&mut full, delta);
            let entries: StateDelta = full.into_iter().map(|(k, v)| (k, Some(v))).collect();
            insert_group(conn, id, room_id, None, &entries)
        }
    }
}

/// Applies a delta to a state map.
pub fn apply_delta(state: &mut StateIds, delta: &StateDelta) {
    for (key, value) in delta {
        match value {
            Some(v) => {
                state.insert(key.clone(), v.clone());
            }
            None => {
                state.remove(key);
            }
        }
    }
}

pub fn group_depth(conn: &mut AnyConnection, id: i64) -> StorageResult<i32> {
    state_groups::table
        .filter(state_groups::id.eq(id))
        .select(state_groups::delta_depth)
        .first(conn)
        .optional()?
        .ok_or_else(|| StorageError::Corrupt(format!("state group {id} missing")))
}

/// Loads the full state of a group.
pub fn load_group(conn: &mut AnyConnection, id: i64) -> StorageResult<StateIds> {
    // Walk up to the full snapshot, then apply deltas from the top down.
    let mut chain = Vec::new();
    let mut cur = Some(id);
    while let Some(g) = cur {
        if chain.len() > (MAX_DELTA_DEPTH as usize) + 2 {
            return Err(StorageError::Corrupt(format!(
                "state group {id}: chain too long"
            )));
        }
        let parent: Option<Option<i64>> = state_groups::table
            .filter(state_groups::id.eq(g))
            .select(state_groups::parent)
            .first(conn)
            .optional()?;
        let parent =
            parent.ok_or_else(|| StorageError::Corrupt(format!("state group {g} missing")))?;
        chain.push(g);
        cur = parent;
    }
    let mut state = StateIds::new();
    for g in chain.into_iter().rev() {
        let rows: Vec<(String, String, Option<String>)> = state_group_entries::table
            .filter(state_group_entries::group_id.eq(g))
            .select((
                state_group_entries::event_type,
                state_group_entries::state_key,
                state_group_entries::event_id,
            ))
            .load(conn)?;
        for (t, k, e) in rows {
            match e {
                Some(e) => {
                    state.insert((t, k), e);
                }
                None => {
                    state.remove(&(t, k));
                }
            }
        }
    }
    Ok(state)
}

pub fn max_group_id(conn: &mut AnyConnection) -> StorageResult<i64> {
    let max: Option<i64> = state_groups::table
        .select(diesel::dsl::max(state_groups::id))
        .first(conn)?;
    Ok(max.unwrap_or(0))
}

/// Applies changes to a room's current state.
pub fn update_current_state(
    conn: &mut AnyConnection,
    room_id: &str,
    delta: &StateDelta,
) -> StorageResult<()> {
    // The last change of each key wins (as applying the changes one by one would); the old
    // rows of the changed keys go in one DELETE per event type and key chunk, the new ones
    // in multi-row INSERTs.
    let mut last: HashMap<&(String, String), Option<&str>> = HashMap::new();
    for (key, e) in delta {
        last.insert(key, e.as_deref());
    }
    let mut by_type: HashMap<&str, Vec<&str>> = HashMap::new();
    for (t, k) in last.keys() {
        by_type.entry(t.as_str()).or_default().push(k.as_str());
    }
    for (t, keys) in by_type {
        for chunk in keys.chunks(ENTRY_CHUNK) {
            diesel::delete(
                current_state::table
                    .filter(current_state::room_id.eq(room_id))
                    .filter(current_state::event_type.eq(t))
                    .filter(current_state::state_key.eq_any(chunk)),
            )
            .execute(conn)?;
        }
    }
    let rows: Vec<_> = last
        .iter()
        .filter_map(|((t, k), e)| {
            e.map(|e| {
                (
                    current_state::room_id.eq(room_id),
                    current_state::event_type.eq(t.as_str()),
                    current_state::state_key.eq(k.as_str()),
                    current_state::event_id.eq(e),
                )
            })
        })
        .collect();
    for chunk in rows.chunks(ENTRY_CHUNK) {
        match conn {
            AnyConnection::Sqlite(c) => diesel::insert_into(current_state::table)
                .values(chunk)
                .execute(c)?,
            AnyConnection::Postgresql(c) => diesel::insert_into(current_state::table)
                .values(chunk)
                .execute(c)?,
        };
    }
    Ok(())
}

/// A room's current state as `(type, state_key) → event_id`.
pub fn current_state(conn: &mut AnyConnection, room_id: &str) -> StorageResult<StateIds> {
    let rows: Vec<(String, String, String)> = current_state::table
        .filter(current_state::room_id.eq(room_id))
        .select((
            current_state::event_type,
            current_state::state_key,
            current_state::event_id,
        ))
        .load(conn)?;
    Ok(rows.into_iter().map(|(t, k, e)| ((t, k), e)).collect())
}

/// One entry of a room's current state.
pub fn current_state_entry(
    conn: &mut AnyConnection,
    room_id: &str,
    event_type: &str,
    state_key: &str,
) -> StorageResult<Option<String>> {
    Ok(current_state::table
        .filter(current_state::room_id.eq(room_id))
        .filter(current_state::event_type.eq(event_type))
        .filter(current_state::state_key.eq(state_key))
        .select(current_state::event_id)
        .first(conn)
        .optional()?)
}

pub fn set_extremities(
    conn: &mut AnyConnection,
    room_id: &str,
    ids: &[String],
) -> StorageResult<()> {
    // Only the difference is written: a new event usually replaces one extremity of several
    // (concurrent chains), and a row rewritten costs as much as a row changed.
    let old: Vec<String> = forward_extremities::table
        .filter(forward_extremities::room_id.eq(room_id))
        .select(forward_extremities::event_id)
        .load(conn)?;
    for gone in old.iter().filter(|o| !ids.contains(o)) {
        diesel::delete(
            forward_extremities::table
                .filter(forward_extremities::room_id.eq(room_id))
                .filter(forward_extremities::event_id.eq(gone)),
        )
        .execute(conn)?;
    }
    let mut added: Vec<&String> = Vec::with_capacity(ids.len());
    for id in ids {
        if old.contains(id) || added.contains(&id) {
            continue;
        }
        added.push(id);
        diesel::insert_into(forward_extremities::table)
            .values((
                forward_extremities::room_id.eq(room_id),
                forward_extremities::event_id.eq(id),
            ))
            .execute(conn)?;
    }
    Ok(())
}

pub fn extremities(conn: &mut AnyConnection, room_id: &str) -> StorageResult<Vec<String>> {
    Ok(forward_extremities::table
        .filter(forward_extremities::room_id.eq(room_id))
        .select(forward_extremities::event_id)
        .load(conn)?)
}
