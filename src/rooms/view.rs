//! How stored events look to a client: the Client-Server event format with `unsigned`
//! (age, the viewer's own transaction ID, `redacted_because`, and the bundled aggregations
//! of `m.relations`: latest edit, thread summary, references), with redactions applied.
//! Every endpoint that serves events goes through [`client_events`], so all of them bundle.
//! Runs inside a database read (synchronous).

use std::collections::HashMap;

use ruma::CanonicalJsonValue;
use serde_json::{Map, Value, json};
use weft_protocol::client_event::client_event;
use weft_protocol::redaction::redact;
use weft_protocol::{Pdu, RoomVersion};

use crate::rooms::actor::parse_row;
use crate::storage::events::EventRow;
use crate::storage::{AnyConnection, StorageResult, events, now_ms, relations, rooms};
use weft_protocol::relations as rel;

/// Who is looking (their own transaction IDs are shown back to them).
#[derive(Debug, Clone)]
pub struct Viewer {
    pub user_id: String,
    pub device_id: String,
}

/// Caches room versions during one request.
#[derive(Default)]
pub struct Versions(HashMap<String, RoomVersion>);

impl Versions {
    pub fn get(&mut self, conn: &mut AnyConnection, room_id: &str) -> StorageResult<RoomVersion> {
        if let Some(v) = self.0.get(room_id) {
            return Ok(*v);
        }
        let v = rooms::room_version(conn, room_id)?
            .and_then(|v| RoomVersion::parse(&v))
            .unwrap_or(RoomVersion::V11);
        self.0.insert(room_id.to_owned(), v);
        Ok(v)
    }
}

/// Parses a row, applying a redaction if it has been redacted.
pub fn pdu_of(row: &EventRow, version: RoomVersion) -> StorageResult<Pdu> {
    let pdu = parse_row(&row.event_id, &row.json, version)?;
    if row.redacted_by.is_none() {
        return Ok(pdu);
    }
    let redacted = redact(&pdu.json(), version)
        .map_err(|e| crate::storage::StorageError::Corrupt(e.to_string()))?;
    Pdu::from_json_with_id(pdu.owned_event_id(), redacted, version)
        .map_err(|e| crate::storage::StorageError::Corrupt(e.to_string()))
}

/// Client events for rows of one room, in the given order, with bundled aggregations.
pub fn client_events(
    conn: &mut AnyConnection,
    rows: &[EventRow],
    version: RoomVersion,
    viewer: &Viewer,
) -> StorageResult<Vec<Value>> {
    let mut out = render(conn, rows, version, viewer)?;
    bundle_aggregations(conn, rows, &mut out, version, viewer)?;
    Ok(out)
}

/// Adds `unsigned["m.relations"]` to each event that others relate to.
fn bundle_aggregations(
    conn: &mut AnyConnection,
    rows: &[EventRow],
    out: &mut [Value],
    version: RoomVersion,
    viewer: &Viewer,
) -> StorageResult<()> {
    let ids: Vec<String> = rows
        .iter()
        .filter(|r| r.redacted_by.is_none())
        .map(|r| r.event_id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let children = relations::children_of(conn, &ids)?;
    if children.is_empty() {
        return Ok(());
    }
    let mut by_parent: HashMap<&str, Vec<weft_protocol::relations::Child>> = HashMap::new();
    for c in &children {
        by_parent
            .entry(c.relates_to.as_str())
            .or_default()
            .push(c.child());
    }
    let mut bundles = Vec::new();
    let mut wanted: Vec<String> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let Some(kids) = by_parent.get(row.event_id.as_str()) else {
            continue;
        };
        let parent = rel::Parent {
            event_type: &row.event_type,
            sender: &row.sender,
            is_state: row.state_key.is_some(),
        };
        let b = rel::bundle(&parent, kids, &viewer.user_id);
        if b.is_empty() {
            continue;
        }
        wanted.extend(b.latest_edit.iter().cloned());
        wanted.extend(b.thread_latest.iter().cloned());
        bundles.push((i, b));
    }
    if bundles.is_empty() {
        return Ok(());
    }
    let related_rows = events::get_events(conn, &wanted)?;
    let rendered = render(conn, &related_rows, version, viewer)?;
    let related: HashMap<&str, &Value> = related_rows
        .iter()
        .map(|r| r.event_id.as_str())
        .zip(rendered.iter())
        .collect();
    for (i, b) in bundles {
        let mut m = Map::new();
        if let Some(e) = b.latest_edit.as_deref().and_then(|id| related.get(id)) {
            m.insert("m.replace".into(), (*e).clone());
        }
        if let Some(e) = b.thread_latest.as_deref().and_then(|id| related.get(id)) {
            m.insert(
                "m.thread".into(),
                json!({
                    "latest_event": e,
                    "count": b.thread_count,
                    "current_user_participated": b.thread_participated,
                }),
            );
        }
        if !b.references.is_empty() {
            let chunk: Vec<Value> = b
                .references
                .iter()
                .map(|id| json!({"event_id": id}))
                .collect();
            m.insert("m.reference".into(), json!({"chunk": chunk}));
        }
        if m.is_empty() {
            continue;
        }
        if let Some(obj) = out.get_mut(i).and_then(Value::as_object_mut) {
            let unsigned = obj.entry("unsigned").or_insert_with(|| json!({}));
            if let Some(u) = unsigned.as_object_mut() {
                u.insert("m.relations".into(), Value::Object(m));
            }
        }
    }
    Ok(())
}

/// Client events without bundled aggregations (for the events bundled into others).
fn render(
    conn: &mut AnyConnection,
    rows: &[EventRow],
    version: RoomVersion,
    viewer: &Viewer,
) -> StorageResult<Vec<Value>> {
    let own: Vec<String> = rows
        .iter()
        .filter(|r| r.sender == viewer.user_id)
        .map(|r| r.event_id.clone())
        .collect();
    let txns: HashMap<String, String> = if own.is_empty() {
        HashMap::new()
    } else {
        events::txn_for_event(conn, &viewer.user_id, &viewer.device_id, &own)?
            .into_iter()
            .collect()
    };
    let redaction_ids: Vec<String> = rows.iter().filter_map(|r| r.redacted_by.clone()).collect();
    let redactions: HashMap<String, EventRow> = if redaction_ids.is_empty() {
        HashMap::new()
    } else {
        events::get_events(conn, &redaction_ids)?
            .into_iter()
            .map(|r| (r.event_id.clone(), r))
            .collect()
    };
    let now = now_ms();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let pdu = pdu_of(row, version)?;
        let mut unsigned = Map::new();
        unsigned.insert("age".into(), json!((now - row.origin_server_ts).max(0)));
        if let Some(t) = txns.get(&row.event_id) {
            unsigned.insert("transaction_id".into(), json!(t));
        }
        if let Some(rid) = &row.redacted_by
            && let Some(r) = redactions.get(rid)
            && let Ok(rp) = parse_row(&r.event_id, &r.json, version)
        {
            unsigned.insert("redacted_because".into(), client_event(&rp, Map::new()));
        }
        out.push(client_event(&pdu, unsigned));
    }
    Ok(out)
}

/// One event for a client, by ID, with its room's version.
pub fn client_event_by_id(
    conn: &mut AnyConnection,
    event_id: &str,
    viewer: &Viewer,
    versions: &mut Versions,
) -> StorageResult<Option<(EventRow, Value)>> {
    let Some(row) = events::get_event(conn, event_id)? else {
        return Ok(None);
    };
    // A rejected event is never shown to clients, whatever path stored it.
    if row.rejected.is_some() {
        return Ok(None);
    }
    let version = versions.get(conn, &row.room_id)?;
    let mut evs = client_events(conn, std::slice::from_ref(&row), version, viewer)?;
    Ok(evs.pop().map(|e| (row, e)))
}

/// A string field of a canonical object (helper for stored JSON).
pub fn field_str<'a>(obj: &'a ruma::CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match obj.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}
