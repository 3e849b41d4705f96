//! The client-facing shapes of an event: the Client-Server API event format and the stripped
//! state used in invites and knocks.

use serde_json::{Map, Value, json};

use crate::pdu::Pdu;

/// The Client-Server API form of an event. `unsigned` carries server-computed fields (age,
/// transaction ID, prev_content, redacted_because).
pub fn client_event(pdu: &Pdu, unsigned: Map<String, Value>) -> Value {
    let mut out = Map::new();
    out.insert("content".into(), pdu.content_value());
    out.insert("event_id".into(), Value::String(pdu.event_id().to_string()));
    out.insert("origin_server_ts".into(), json!(pdu.origin_server_ts()));
    out.insert("room_id".into(), Value::String(pdu.room_id().to_string()));
    out.insert("sender".into(), Value::String(pdu.sender().to_string()));
    out.insert("type".into(), Value::String(pdu.kind_str()));
    if let Some(k) = pdu.state_key() {
        out.insert("state_key".into(), Value::String(k.to_owned()));
    }
    if let Some(r) = pdu.redacts() {
        // Clients of every room version find `redacts` at the top level.
        out.insert("redacts".into(), Value::String(r.to_string()));
    }
    if !unsigned.is_empty() {
        out.insert("unsigned".into(), Value::Object(unsigned));
    }
    Value::Object(out)
}

/// Stripped state (`type`, `state_key`, `sender`, `content`) for invite and knock previews.
pub fn stripped_state(pdu: &Pdu) -> Value {
    json!({
        "type": pdu.kind_str(),
        "state_key": pdu.state_key().unwrap_or_default(),
        "sender": pdu.sender().to_string(),
        "content": pdu.content_value(),
    })
}
