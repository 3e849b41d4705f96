//! Step 1 of admission: a valid event. The received JSON must have the room version's event
//! format (every required field, of the right type, within the size limits: 65,536 bytes
//! in all, 255 for IDs and types), and from it comes the event ID (a hash of the redacted
//! event from room version 3; carried in the event in versions 1 and 2).
//!
//! Parsed once: what comes out is the [`Pdu`] every later step borrows (wrapped in an `Arc`
//! from the room actor on), never parsed again. Pure; the rules themselves are in
//! `weft_protocol::pdu` and `weft_protocol::auth::check_format`.

use serde_json::Value;
use weft_protocol::{Pdu, Received, RoomVersion};

/// Parses a received PDU of a room of `version`: format, size and event ID.
pub fn parse(raw: Value, version: RoomVersion) -> Result<Pdu, String> {
    Pdu::from_received(raw, version).map_err(|e| e.to_string())
}

/// [`parse`], keeping for steps 2–3 the event's JSON object and the bytes its servers
/// signed (written once, for the event ID and the signatures).
pub fn parse_received(raw: Value, version: RoomVersion) -> Result<Received, String> {
    Pdu::parse_received(raw, version).map_err(|e| e.to_string())
}

/// The event ID a malformed PDU would have, when one can still be computed (so that the
/// `/send` answer can name the PDU it refuses).
pub fn event_id_of_malformed(raw: &Value, version: RoomVersion) -> Option<String> {
    let obj = weft_protocol::canonical::value_to_object(raw.clone()).ok()?;
    weft_protocol::pdu::compute_event_id(&obj, version)
        .ok()
        .map(|id| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn malformed_and_oversized_events_are_refused() {
        let cases = [
            (json!("not an object"), "a string"),
            (json!({"type": "m.room.message"}), "missing fields"),
            (
                json!({
                    "type": "m.room.message", "room_id": "!r:a.example", "sender": "@u:a.example",
                    "origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": [],
                    "content": {"body": "x".repeat(70_000)},
                    "hashes": {"sha256": "x"}, "signatures": {}
                }),
                "over 65,536 bytes",
            ),
        ];
        for (raw, what) in cases {
            assert!(parse(raw, RoomVersion::V11).is_err(), "{what} was accepted");
        }
    }
}
