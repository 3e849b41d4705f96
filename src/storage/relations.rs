//! The relations index (`event_relations`): one row per timeline event that relates to
//! another, written by `events::insert_event` in the event's own transaction and removed
//! by a redaction.

use diesel::prelude::*;
use weft_protocol::relations::Child;

use super::events::NewEvent;
use super::schema::event_relations;
use super::{AnyConnection, StorageResult};

#[derive(Debug, Clone, Queryable)]
pub struct RelationRow {
    pub event_id: String,
    pub room_id: String,
    pub relates_to: String,
    pub rel_type: String,
    pub event_type: String,
    pub sender: String,
    pub origin_server_ts: i64,
    pub stream_ordering: i64,
}

impl RelationRow {
    pub fn child(&self) -> Child {
        Child {
            event_id: self.event_id.clone(),
            rel_type: self.rel_type.clone(),
            event_type: self.event_type.clone(),
            sender: self.sender.clone(),
            origin_server_ts: self.origin_server_ts,
            stream_ordering: self.stream_ordering,
        }
    }
}

/// Indexes an event's relation, if it is a timeline event with one.
pub fn index_event(conn: &mut AnyConnection, ev: &NewEvent) -> StorageResult<()> {
    let Some(pos) = ev.stream_ordering else {
        return Ok(());
    };
    // Cheap test first: most events have no relation.
    if ev.outlier
        || ev.rejected.is_some()
        || ev.soft_failed
        || ev.redacted_by.is_some()
        || !ev.json.contains("m.relates_to")
    {
        return Ok(());
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&ev.json) else {
        return Ok(());
    };
    let Some(rel) = json
        .get("content")
        .and_then(weft_protocol::relations::relation)
    else {
        return Ok(());
    };
    diesel::delete(event_relations::table.filter(event_relations::event_id.eq(&ev.event_id)))
        .execute(conn)?;
    diesel::insert_into(event_relations::table)
        .values((
            event_relations::event_id.eq(&ev.event_id),
            event_relations::room_id.eq(&ev.room_id),
            event_relations::relates_to.eq(&rel.event_id),
            event_relations::rel_type.eq(&rel.rel_type),
            event_relations::event_type.eq(&ev.event_type),
            event_relations::sender.eq(&ev.sender),
            event_relations::origin_server_ts.eq(ev.origin_server_ts),
            event_relations::stream_ordering.eq(pos),
        ))
        .execute(conn)?;
    Ok(())
}

/// Drops a redacted event's relation.
pub fn forget_event(conn: &mut AnyConnection, event_id: &str) -> StorageResult<()> {
    diesel::delete(event_relations::table.filter(event_relations::event_id.eq(event_id)))
        .execute(conn)?;
    Ok(())
}

/// Every relation to any of `parents`.
pub fn children_of(
    conn: &mut AnyConnection,
    parents: &[String],
) -> StorageResult<Vec<RelationRow>> {
    let mut out = Vec::new();
    for chunk in parents.chunks(500) {
        out.extend(
            event_relations::table
                .filter(event_relations::relates_to.eq_any(chunk))
                .load::<RelationRow>(conn)?,
        );
    }
    Ok(out)
}

/// Relations to one parent, optionally of a type and event type, within `(lo, hi]`, at
/// most `limit`, newest first (`backwards`) or oldest first.
#[allow(clippy::too_many_arguments)]
pub fn page(
    conn: &mut AnyConnection,
    parent: &str,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    lo: i64,
    hi: i64,
    limit: i64,
    backwards: bool,
) -> StorageResult<Vec<RelationRow>> {
    let rows = event_relations::table
        .filter(event_relations::relates_to.eq(parent))
        .filter(event_relations::stream_ordering.gt(lo))
        .filter(event_relations::stream_ordering.le(hi))
        .load::<RelationRow>(conn)?;
    let mut rows: Vec<RelationRow> = rows
        .into_iter()
        .filter(|r| rel_type.is_none_or(|t| r.rel_type == t))
        .filter(|r| event_type.is_none_or(|t| r.event_type == t))
        .collect();
    rows.sort_by_key(|r| r.stream_ordering);
    if backwards {
        rows.reverse();
    }
    rows.truncate(limit.max(0) as usize);
    Ok(rows)
}

/// Thread roots of a room with their latest reply's position, newest thread first.
pub fn threads(
    conn: &mut AnyConnection,
    room_id: &str,
) -> StorageResult<Vec<(String, i64, Vec<String>)>> {
    let rows = event_relations::table
        .filter(event_relations::room_id.eq(room_id))
        .filter(event_relations::rel_type.eq("m.thread"))
        .load::<RelationRow>(conn)?;
    let mut by_root: std::collections::HashMap<String, (i64, Vec<String>)> = Default::default();
    for r in rows {
        let e = by_root
            .entry(r.relates_to)
            .or_insert((i64::MIN, Vec::new()));
        e.0 = e.0.max(r.stream_ordering);
        e.1.push(r.sender);
    }
    let mut out: Vec<(String, i64, Vec<String>)> =
        by_root.into_iter().map(|(k, (p, s))| (k, p, s)).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(out)
}
