//! Step 4 of admission: the event must pass the authorization rules against the events it
//! cites in `auth_events` (and, from room version 12, the create event its room ID names).
//! An event failing here is rejected; one citing events we do not hold cannot be judged yet
//! (the caller fetches them from the origin and tries again).

use std::sync::Arc;

use ruma::EventId;
use weft_protocol::{Pdu, RoomVersion, auth};

/// The auth events of `pdu` that `known` does not hold, in the order cited (the room's
/// create event last, from room version 12, where the room ID names it).
pub fn missing(version: RoomVersion, pdu: &Pdu, known: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<String> = pdu
        .auth_events()
        .iter()
        .filter(|a| !known(a.as_str()))
        .map(|a| a.to_string())
        .collect();
    if version.room_id_from_create_event() && pdu.kind_str() != "m.room.create" {
        let create_id = format!("${}", &pdu.room_id().as_str()[1..]);
        if !known(&create_id) && !out.contains(&create_id) {
            out.push(create_id);
        }
    }
    out
}

/// Checks `pdu` against its auth events, looked up through `fetch`.
pub fn check(
    version: RoomVersion,
    pdu: &Pdu,
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<(), String> {
    auth::check_against_auth_events(version, pdu, fetch)
        .map_err(|e| format!("auth events: {}", e.0))
}
