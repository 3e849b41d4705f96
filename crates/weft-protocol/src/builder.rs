//! Building a local event: from a draft (what a client asked for) and the room's position
//! (prev events, auth events, depth) to a hashed, signed PDU with its event ID.
//!
//! Room versions 1 and 2 need two things the later versions do not: the event carries its own
//! ID, and every cited event comes with its reference hash. The ID is `$H:origin` where `H` is
//! the URL-safe SHA-256 of the unsigned event (unique per event, and no randomness needed, so
//! building stays a pure function); the hashes come from the caller (`*_citing` functions),
//! who holds the cited events.

use base64::Engine;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedUserId, RoomId};
use sha2::Digest;

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

/// The reference hash of a cited event by ID (`None`: not known), for v1/v2 rooms.
pub type HashLookup<'a> = &'a dyn Fn(&EventId) -> Option<String>;

/// For callers in rooms of v3 and later, which cite bare IDs.
fn no_hashes(_: &EventId) -> Option<String> {
    None
}

fn refs(
    list: &[OwnedEventId],
    version: RoomVersion,
    hashes: HashLookup<'_>,
) -> Result<CanonicalJsonValue, BuildError> {
    let items = list
        .iter()
        .map(|id| {
            if !version.cites_event_hashes() {
                return Ok(CanonicalJsonValue::String(id.to_string()));
            }
            let hash = hashes(id).ok_or_else(|| {
                BuildError::Invalid(format!("no reference hash for the cited event {id}"))
            })?;
            let mut h = CanonicalJsonObject::new();
            h.insert("sha256".into(), CanonicalJsonValue::String(hash));
            Ok(CanonicalJsonValue::Array(vec![
                CanonicalJsonValue::String(id.to_string()),
                CanonicalJsonValue::Object(h),
            ]))
        })
        .collect::<Result<Vec<_>, BuildError>>()?;
    Ok(CanonicalJsonValue::Array(items))
}

/// The event ID a v1/v2 event built by `origin` gets: `$` + URL-safe SHA-256 of the event
/// without `event_id`, hashes, signatures and `unsigned`, + `:origin`.
pub fn v1_event_id(obj: &CanonicalJsonObject, origin: &str) -> Result<OwnedEventId, BuildError> {
    let mut copy = obj.clone();
    for k in ["event_id", "hashes", "signatures", "unsigned"] {
        copy.remove(k);
    }
    let digest = sha2::Sha256::digest(canonical::write_object(&copy).as_bytes());
    let local = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    OwnedEventId::try_from(format!("${local}:{origin}"))
        .map_err(|e| BuildError::Invalid(format!("event ID for {origin}: {e}")))
}

/// The unsigned, unhashed PDU JSON for a draft at a position (rooms of v3 and later; in v1/v2
/// rooms use [`pdu_template_citing`]).
pub fn pdu_template(
    draft: &EventDraft,
    position: &Position<'_>,
) -> Result<CanonicalJsonObject, BuildError> {
    pdu_template_citing(draft, position, &no_hashes)
}

/// The unsigned, unhashed PDU JSON for a draft at a position; `hashes` gives the reference
/// hashes of the cited events (needed in v1/v2 only). In v1/v2 the template carries an
/// `event_id` on the sender's server.
pub fn pdu_template_citing(
    draft: &EventDraft,
    position: &Position<'_>,
    hashes: HashLookup<'_>,
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
    obj.insert(
        "auth_events".into(),
        refs(&position.auth_events, position.version, hashes)?,
    );
    obj.insert(
        "prev_events".into(),
        refs(&position.prev_events, position.version, hashes)?,
    );
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
    if position.version.event_id_in_event() {
        let id = v1_event_id(&obj, draft.sender.server_name().as_str())?;
        obj.insert(
            "event_id".into(),
            CanonicalJsonValue::String(id.to_string()),
        );
    }
    Ok(obj)
}

/// Builds, hashes and signs a local event. `origin` is this server's name. (Rooms of v3 and
/// later; in v1/v2 rooms use [`build_pdu_citing`].)
pub fn build_pdu(
    draft: &EventDraft,
    position: &Position<'_>,
    origin: &str,
    key: &ServerSigningKey,
) -> Result<Pdu, BuildError> {
    build_pdu_citing(draft, position, &no_hashes, origin, key)
}

/// Builds, hashes and signs a local event; `hashes` gives the reference hashes of the cited
/// events (needed in v1/v2 only).
pub fn build_pdu_citing(
    draft: &EventDraft,
    position: &Position<'_>,
    hashes: HashLookup<'_>,
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
    let obj = pdu_template_citing(draft, position, hashes)?;
    finish_event(obj, position.version, origin, key)
}

/// Hashes and signs a complete event (a template of ours, or one a resident server handed
/// out with `make_join` and the like) and parses it. In v1/v2 rooms the event gets a fresh ID
/// on `origin` (a template's `event_id`, minted by the resident server, is replaced).
pub fn finish_event(
    mut obj: CanonicalJsonObject,
    version: RoomVersion,
    origin: &str,
    key: &ServerSigningKey,
) -> Result<Pdu, BuildError> {
    if version.is_linearized() {
        return Err(BuildError::Invalid(
            "LM events are finished by lm::build".into(),
        ));
    }
    for k in ["event_id", "hashes", "signatures", "unsigned"] {
        obj.remove(k);
    }
    if version.event_id_in_event() {
        let id = v1_event_id(&obj, origin)?;
        obj.insert(
            "event_id".into(),
            CanonicalJsonValue::String(id.to_string()),
        );
    }
    ruma::signatures::hash_and_sign_event(origin, key, &mut obj, &version.rules().redaction)
        .map_err(|e| match e {
            // Over the spec's PDU size limit: callers answer M_TOO_LARGE, not a signing failure.
            ruma::signatures::JsonError::PduTooLarge => BuildError::Pdu(PduError::TooLarge(
                crate::canonical::write_object(&obj).len(),
            )),
            e => BuildError::Signing(e.to_string()),
        })?;
    Ok(Pdu::from_json(obj, version)?)
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
