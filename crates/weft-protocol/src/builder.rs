//! Building a local event: from a draft (what a client asked for) and the room's position
//! (prev events, auth events, depth) to a hashed, signed PDU with its event ID.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedUserId, RoomId};

use crate::canonical;
use crate::keys::ServerSigningKey;
use crate::pdu::{Pdu, PduError};
use crate::room_version::RoomVersion;

/// What a client (or the server on its behalf) wants to send.
#[derive(Clone, Debug)]
pub struct EventDraft {
    pub kind: String,
    pub state_key: Option<String>,
    pub sender: OwnedUserId,
    pub content: serde_json::Value,
    /// For `m.room.redaction`: the event being redacted.
    pub redacts: Option<OwnedEventId>,
    pub origin_server_ts: u64,
}

impl EventDraft {
    pub fn new(kind: impl Into<String>, sender: OwnedUserId, content: serde_json::Value) -> Self {
        Self {
            kind: kind.into(),
            state_key: None,
            sender,
            content,
            redacts: None,
            origin_server_ts: 0,
        }
    }

    pub fn state(
        kind: impl Into<String>,
        state_key: impl Into<String>,
        sender: OwnedUserId,
        content: serde_json::Value,
    ) -> Self {
        Self {
            state_key: Some(state_key.into()),
            ..Self::new(kind, sender, content)
        }
    }
}

/// Where in the room the new event goes.
#[derive(Clone, Debug)]
pub struct Position<'a> {
    pub version: RoomVersion,
    /// `None` only for the create event of a v12 room (its ID is derived from the event).
    pub room_id: Option<&'a RoomId>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
}

/// Why an event could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("content is not a JSON object")]
    ContentNotObject,
    #[error("content is not canonical JSON: {0}")]
    NotCanonical(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Pdu(#[from] PduError),
}

fn ids(list: &[OwnedEventId]) -> CanonicalJsonValue {
    CanonicalJsonValue::Array(
        list.iter()
            .map(|id| CanonicalJsonValue::String(id.to_string()))
            .collect(),
    )
}

/// The unsigned, unhashed PDU JSON for a draft at a position.
pub fn pdu_template(
    draft: &EventDraft,
    position: &Position<'_>,
) -> Result<CanonicalJsonObject, BuildError> {
    if position.version.is_linearized() {
        let room_id = position
            .room_id
            .ok_or_else(|| BuildError::Invalid("an LM event names its room".into()))?;
        return crate::lm::build::template(
            draft,
            room_id,
            lm_prev(position)?,
            &position.auth_events,
        );
    }
    let mut content = match canonical::value_to_canonical(draft.content.clone()) {
        Ok(CanonicalJsonValue::Object(map)) => map,
        Ok(_) => return Err(BuildError::ContentNotObject),
        Err(e) => return Err(BuildError::NotCanonical(e.to_string())),
    };
    let mut obj = CanonicalJsonObject::new();
    if let Some(redacts) = &draft.redacts {
        if position.version.redacts_in_content() {
            content.insert(
                "redacts".into(),
                CanonicalJsonValue::String(redacts.to_string()),
            );
        } else {
            obj.insert(
                "redacts".into(),
                CanonicalJsonValue::String(redacts.to_string()),
            );
        }
    }
    obj.insert("auth_events".into(), ids(&position.auth_events));
    obj.insert("prev_events".into(), ids(&position.prev_events));
    obj.insert("content".into(), CanonicalJsonValue::Object(content));
    obj.insert(
        "depth".into(),
        CanonicalJsonValue::Integer(ruma::Int::try_from(position.depth).unwrap_or(ruma::Int::MAX)),
    );
    obj.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(
            ruma::Int::try_from(draft.origin_server_ts).unwrap_or(ruma::Int::MAX),
        ),
    );
    if let Some(room_id) = position.room_id {
        obj.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room_id.to_string()),
        );
    }
    obj.insert(
        "sender".into(),
        CanonicalJsonValue::String(draft.sender.to_string()),
    );
    if let Some(state_key) = &draft.state_key {
        obj.insert(
            "state_key".into(),
            CanonicalJsonValue::String(state_key.clone()),
        );
    }
    obj.insert(
        "type".into(),
        CanonicalJsonValue::String(draft.kind.clone()),
    );
    Ok(obj)
}

/// Builds, hashes and signs a local event. `origin` is this server's name.
pub fn build_pdu(
    draft: &EventDraft,
    position: &Position<'_>,
    origin: &str,
    key: &ServerSigningKey,
) -> Result<Pdu, BuildError> {
    if position.version.is_linearized() {
        // Built locally = built by the hub (participants send LPDUs: `lm::build::lpdu`).
        let room_id = position
            .room_id
            .ok_or_else(|| BuildError::Invalid("an LM event names its room".into()))?;
        return crate::lm::build::hub_event(
            draft,
            room_id,
            lm_prev(position)?,
            &position.auth_events,
            origin,
            key,
        );
    }
    let mut obj = pdu_template(draft, position)?;
    ruma::signatures::hash_and_sign_event(
        origin,
        key,
        &mut obj,
        &position.version.rules().redaction,
    )
    .map_err(|e| match e {
        // Over the spec's PDU size limit: callers answer M_TOO_LARGE, not a signing failure.
        ruma::signatures::JsonError::PduTooLarge => BuildError::Pdu(PduError::TooLarge(
            crate::canonical::write_object(&obj).len(),
        )),
        e => BuildError::Signing(e.to_string()),
    })?;
    Ok(Pdu::from_json(obj, position.version)?)
}

/// The one previous event of an LM event (none for the create event); `depth` is unused.
fn lm_prev<'a>(position: &'a Position<'_>) -> Result<Option<&'a ruma::EventId>, BuildError> {
    match position.prev_events.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(BuildError::Invalid(
            "an LM event cites exactly one previous event".into(),
        )),
    }
}

/// Signs an existing PDU's JSON with our key (e.g. the invitee's server counter-signing an
/// invite). Signatures do not change the event ID.
pub fn add_signature(
    obj: &mut CanonicalJsonObject,
    version: RoomVersion,
    origin: &str,
    key: &ServerSigningKey,
) -> Result<(), BuildError> {
    if version.is_linearized() {
        crate::lm::build::sign(obj, origin, key);
        return Ok(());
    }
    ruma::signatures::sign_event(origin, key, obj, &version.rules().redaction)
        .map_err(|e| BuildError::Signing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> ServerSigningKey {
        ServerSigningKey::from_seed([3u8; 32], "t").unwrap()
    }

    #[test]
    fn v12_create_event_has_no_room_id_and_derives_it() {
        let alice = OwnedUserId::try_from("@alice:example.org").unwrap();
        let mut draft =
            EventDraft::state("m.room.create", "", alice, json!({"room_version": "12"}));
        draft.origin_server_ts = 1;
        let pos = Position {
            version: RoomVersion::V12,
            room_id: None,
            prev_events: vec![],
            auth_events: vec![],
            depth: 1,
        };
        let pdu = build_pdu(&draft, &pos, "example.org", &key()).unwrap();
        assert!(!pdu.json().contains_key("room_id"));
        assert_eq!(&pdu.room_id().as_str()[1..], &pdu.event_id().as_str()[1..]);
    }

    #[test]
    fn redacts_goes_where_the_version_puts_it() {
        let alice = OwnedUserId::try_from("@alice:example.org").unwrap();
        let room = ruma::OwnedRoomId::try_from("!r:example.org").unwrap();
        let target = OwnedEventId::try_from("$abc").unwrap();
        for (version, in_content) in [(RoomVersion::V10, false), (RoomVersion::V11, true)] {
            let mut draft = EventDraft::new("m.room.redaction", alice.clone(), json!({}));
            draft.redacts = Some(target.clone());
            let pos = Position {
                version,
                room_id: Some(&room),
                prev_events: vec![target.clone()],
                auth_events: vec![],
                depth: 5,
            };
            let pdu = build_pdu(&draft, &pos, "example.org", &key()).unwrap();
            assert_eq!(pdu.redacts(), Some(&*target));
            assert_eq!(pdu.json().contains_key("redacts"), !in_content);
            assert_eq!(pdu.content_str("redacts").is_some(), in_content);
        }
    }

    #[test]
    fn content_must_be_a_canonical_object() {
        let alice = OwnedUserId::try_from("@alice:example.org").unwrap();
        let room = ruma::OwnedRoomId::try_from("!r:example.org").unwrap();
        let pos = Position {
            version: RoomVersion::V11,
            room_id: Some(&room),
            prev_events: vec![],
            auth_events: vec![],
            depth: 1,
        };
        let not_object = EventDraft::new("m.x", alice.clone(), json!([1]));
        assert!(matches!(
            build_pdu(&not_object, &pos, "example.org", &key()),
            Err(BuildError::ContentNotObject)
        ));
        let float = EventDraft::new("m.x", alice, json!({"a": 1.5}));
        assert!(matches!(
            build_pdu(&float, &pos, "example.org", &key()),
            Err(BuildError::NotCanonical(_))
        ));
    }
}
