//! Shared checks of weft's fuzz targets (see `docs/FUZZING.md`).
//!
//! Every target feeds hostile bytes to the same pure functions weft runs on input from clients
//! and servers. Beyond "does not panic", the checks assert properties that must hold for any
//! input the functions accept: canonical JSON is a fixed point, an accepted PDU re-parses from
//! its own canonical form to the same event ID, an accepted X-Matrix header round-trips.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use weft_protocol::auth::{self, StateMap};
use weft_protocol::ruma::events::StateEventType;
use weft_protocol::ruma::{EventId, OwnedEventId};
use weft_protocol::signatures::{self, KnownKey};
use weft_protocol::{Pdu, RoomVersion, canonical, client_event, redaction};

/// One fixed key that "every server" has, so signature checks run to the end.
fn lookup() -> impl Fn(&str, &str) -> Option<KnownKey> {
    let key = weft_protocol::keys::ServerSigningKey::from_seed([7u8; 32], "1")
        .expect("a fixed seed makes a key");
    let public = key.verifying_key();
    move |_, _| {
        Some(KnownKey {
            key: public,
            valid_until_ts: u64::MAX,
        })
    }
}

/// Everything weft does to one received PDU that needs no room state.
pub fn check_one(pdu: &Pdu, version: RoomVersion) {
    let _ = pdu.content_value();
    let _ = pdu.membership();
    let _ = pdu.redacts();
    let _ = pdu.to_federation_value();
    let _ = client_event::client_event(pdu, Default::default());
    let _ = client_event::stripped_state(pdu);
    // The canonical form re-parses to the same event.
    let text = pdu.to_canonical_string();
    let again = canonical::parse_object(text.as_bytes()).expect("own canonical form parses");
    let reparsed = Pdu::from_json(again, version).expect("an accepted PDU re-parses");
    assert_eq!(reparsed.event_id(), pdu.event_id(), "event ID is stable");
    assert_eq!(reparsed.prev_events(), pdu.prev_events());
    assert_eq!(reparsed.auth_events(), pdu.auth_events());
    // Signatures, hashes, redaction (`Pdu::json` parses the stored text: once here).
    let json = pdu.json();
    let _ = signatures::required_servers(&json, version);
    let _ = signatures::signing_bytes(&json, version);
    let _ = signatures::verify_pdu(&json, version, lookup());
    if let Ok(redacted) = redaction::redact(&json, version) {
        let _ = Pdu::from_json_with_id(pdu.owned_event_id(), redacted, version);
    }
    if let Some(weft_protocol::ruma::CanonicalJsonValue::Object(c)) = json.get("content") {
        let _ = redaction::redact_content(&pdu.kind_str(), c, version);
    }
    // The rules that need no state, and the rules against an empty state.
    let _ = auth::check_format(version, pdu);
    let _ = auth::check_state_independent(version, pdu, |_| None);
    let _ = auth::check_state_dependent(version, pdu, |_, _| None);
    let _ = auth::auth_types_for_event(
        version,
        &pdu.kind_str(),
        pdu.sender(),
        pdu.state_key(),
        &pdu.content_value(),
    );
}

/// Parses `raw` as a received PDU of `version`, as `/send` does, and checks it.
pub fn received(raw: &Value, version: RoomVersion) -> Option<Pdu> {
    match Pdu::from_received(raw.clone(), version) {
        Ok(pdu) => {
            check_one(&pdu, version);
            Some(pdu)
        }
        Err(_) => {
            // `/send` still names a malformed event by its ID when it can compute one.
            if let Ok(obj) = canonical::value_to_object(raw.clone()) {
                let _ = weft_protocol::pdu::compute_event_id(&obj, version);
            }
            None
        }
    }
}

/// A set of parsed events with a lookup by ID, as the rules want it.
pub struct Events {
    by_id: HashMap<OwnedEventId, Arc<Pdu>>,
}

impl Events {
    pub fn new(pdus: impl IntoIterator<Item = Pdu>) -> Self {
        Self {
            by_id: pdus
                .into_iter()
                .map(|p| (p.owned_event_id(), Arc::new(p)))
                .collect(),
        }
    }
    pub fn fetch(&self) -> impl Fn(&EventId) -> Option<Arc<Pdu>> + '_ {
        |id| self.by_id.get(id).cloned()
    }
    /// The state formed by the state events among `pdus`.
    pub fn state_of<'a>(pdus: impl IntoIterator<Item = &'a Pdu>) -> StateMap<OwnedEventId> {
        let mut map = StateMap::new();
        for p in pdus {
            if let Some(k) = p.state_key() {
                map.insert(
                    (StateEventType::from(p.kind_str()), k.to_owned()),
                    p.owned_event_id(),
                );
            }
        }
        map
    }
}

/// The rules against a state made of the other events: the last event is checked against
/// the state of the ones before it, and against its own auth events.
pub fn check_against_events(pdus: &[Pdu], version: RoomVersion) {
    let Some((last, before)) = pdus.split_last() else {
        return;
    };
    let mut state: StateMap<Arc<Pdu>> = StateMap::new();
    for p in before {
        if let Some(k) = p.state_key() {
            state.insert(
                (StateEventType::from(p.kind_str()), k.to_owned()),
                Arc::new(p.clone()),
            );
        }
    }
    let _ = auth::check_against_state(version, last, &state);
    let events = Events::new(before.iter().cloned());
    let _ = auth::check_against_auth_events(version, last, events.fetch());
    let _ = auth::select_auth_events(
        version,
        &last.kind_str(),
        last.sender(),
        last.state_key(),
        &last.content_value(),
        &Events::state_of(before),
    );
}

/// The versions the targets cycle through: one of each family of rules.
pub const VERSIONS: [RoomVersion; 13] = RoomVersion::ALL;
