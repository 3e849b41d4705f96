//! The PDU: a room event as servers exchange it.
//!
//! A `Pdu` keeps the signed JSON exactly as created or received (the source of truth, what is
//! stored and served) next to the fields the rules need, parsed once. It implements ruma's
//! `state_res::Event` so ruma's authorization rules and state resolution run directly on it.

use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::value::RawValue;

use crate::room_version::RoomVersion;

/// Why a JSON object is not a well-formed PDU.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    #[error("missing or invalid field `{0}`")]
    Field(&'static str),
    #[error("event is too large ({0} bytes)")]
    TooLarge(usize),
    #[error("could not compute the event ID: {0}")]
    Hash(String),
    #[error("event format: {0}")]
    Format(String),
}

/// A room event in federation format.
#[derive(Clone, Debug)]
pub struct Pdu {
    event_id: OwnedEventId,
    /// The room the event belongs to (for v12 create events, derived from the event ID).
    room_id: OwnedRoomId,
    /// Whether the JSON carries `room_id` (v12 create events do not).
    room_id_in_json: bool,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    kind: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    depth: u64,
    redacts: Option<OwnedEventId>,
    rejected: bool,
    json: CanonicalJsonObject,
}

fn get_str<'a>(obj: &'a CanonicalJsonObject, key: &'static str) -> Result<&'a str, PduError> {
    match obj.get(key) {
        Some(CanonicalJsonValue::String(s)) => Ok(s),
        _ => Err(PduError::Field(key)),
    }
}

fn get_event_ids(
    obj: &CanonicalJsonObject,
    key: &'static str,
) -> Result<Vec<OwnedEventId>, PduError> {
    match obj.get(key) {
        Some(CanonicalJsonValue::Array(items)) => items
            .iter()
            .map(|v| match v {
                CanonicalJsonValue::String(s) => {
                    OwnedEventId::try_from(s.as_str()).map_err(|_| PduError::Field(key))
                }
                _ => Err(PduError::Field(key)),
            })
            .collect(),
        _ => Err(PduError::Field(key)),
    }
}

/// Computes the event ID (reference hash) of a PDU in a room of the given version.
pub fn compute_event_id(
    json: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<OwnedEventId, PduError> {
    let hash = if version.is_linearized() {
        crate::lm::reference_hash(json).map_err(PduError::Hash)?
    } else {
        ruma::signatures::reference_hash(json, version.rules())
            .map_err(|e| PduError::Hash(e.to_string()))?
    };
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| PduError::Hash(e.to_string()))
}

impl Pdu {
    /// Parses a PDU received from elsewhere (or built locally), computing its event ID.
    ///
    /// `room_id_hint` is the room the caller expects the event in; it is needed for v12 create
    /// events (which have no `room_id`) only to cross-check.
    pub fn from_json(json: CanonicalJsonObject, version: RoomVersion) -> Result<Self, PduError> {
        let size = crate::canonical::write_object(&json).len();
        if size > crate::MAX_PDU_BYTES {
            return Err(PduError::TooLarge(size));
        }
        let event_id = compute_event_id(&json, version)?;
        Self::from_json_with_id(event_id, json, version)
    }

    /// Builds a PDU from JSON whose event ID is already known (e.g. loaded from storage).
    pub fn from_json_with_id(
        event_id: OwnedEventId,
        json: CanonicalJsonObject,
        version: RoomVersion,
    ) -> Result<Self, PduError> {
        let kind = TimelineEventType::from(get_str(&json, "type")?);
        let sender = OwnedUserId::try_from(get_str(&json, "sender")?)
            .map_err(|_| PduError::Field("sender"))?;
        let (room_id, room_id_in_json) = match json.get("room_id") {
            Some(CanonicalJsonValue::String(s)) => (
                OwnedRoomId::try_from(s.as_str()).map_err(|_| PduError::Field("room_id"))?,
                true,
            ),
            None if kind == TimelineEventType::RoomCreate
                && version.room_id_from_create_event() =>
            {
                let id = format!("!{}", &event_id.as_str()[1..]);
                (
                    OwnedRoomId::try_from(id).map_err(|_| PduError::Field("room_id"))?,
                    false,
                )
            }
            _ => return Err(PduError::Field("room_id")),
        };
        let origin_server_ts = match json.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(i)) => {
                let v = UInt::try_from(i64::from(*i))
                    .map_err(|_| PduError::Field("origin_server_ts"))?;
                MilliSecondsSinceUnixEpoch(v)
            }
            _ => return Err(PduError::Field("origin_server_ts")),
        };
        let content_value = match json.get("content") {
            Some(v @ CanonicalJsonValue::Object(_)) => v,
            _ => return Err(PduError::Field("content")),
        };
        let content = serde_json::value::to_raw_value(content_value)
            .map_err(|_| PduError::Field("content"))?;
        let state_key = match json.get("state_key") {
            None => None,
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            Some(_) => return Err(PduError::Field("state_key")),
        };
        let prev_events = get_event_ids(&json, "prev_events")?;
        let auth_events = get_event_ids(&json, "auth_events")?;
        let depth = match json.get("depth") {
            Some(CanonicalJsonValue::Integer(i)) => {
                u64::try_from(i64::from(*i)).map_err(|_| PduError::Field("depth"))?
            }
            // Linearized Matrix has no depth.
            None if version.is_linearized() => 0,
            _ => return Err(PduError::Field("depth")),
        };
        let redacts = if kind == TimelineEventType::RoomRedaction {
            let from_content = match json.get("content") {
                Some(CanonicalJsonValue::Object(c)) => match c.get("redacts") {
                    Some(CanonicalJsonValue::String(s)) => Some(s.as_str()),
                    _ => None,
                },
                _ => None,
            };
            let top = match json.get("redacts") {
                Some(CanonicalJsonValue::String(s)) => Some(s.as_str()),
                _ => None,
            };
            let chosen = if version.redacts_in_content() {
                from_content.or(top)
            } else {
                top
            };
            chosen.and_then(|s| OwnedEventId::try_from(s).ok())
        } else {
            None
        };
        Ok(Self {
            event_id,
            room_id,
            room_id_in_json,
            sender,
            origin_server_ts,
            kind,
            content,
            state_key,
            prev_events,
            auth_events,
            depth,
            redacts,
            rejected: false,
            json,
        })
    }

    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }
    pub fn owned_event_id(&self) -> OwnedEventId {
        self.event_id.clone()
    }
    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }
    pub fn sender(&self) -> &UserId {
        &self.sender
    }
    pub fn kind(&self) -> &TimelineEventType {
        &self.kind
    }
    pub fn kind_str(&self) -> String {
        self.kind.to_string()
    }
    pub fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }
    pub fn content(&self) -> &RawValue {
        &self.content
    }
    /// The content as a JSON value (for inspection by the server).
    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content.get()).unwrap_or(serde_json::Value::Null)
    }
    /// A string field of the content, if present.
    pub fn content_str(&self, field: &str) -> Option<String> {
        match self.json.get("content") {
            Some(CanonicalJsonValue::Object(c)) => match c.get(field) {
                Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        }
    }
    /// `content.membership` of an `m.room.member` event.
    pub fn membership(&self) -> Option<String> {
        if self.kind == TimelineEventType::RoomMember {
            self.content_str("membership")
        } else {
            None
        }
    }
    pub fn origin_server_ts(&self) -> u64 {
        self.origin_server_ts.get().into()
    }
    pub fn prev_events(&self) -> &[OwnedEventId] {
        &self.prev_events
    }
    pub fn auth_events(&self) -> &[OwnedEventId] {
        &self.auth_events
    }
    pub fn depth(&self) -> u64 {
        self.depth
    }
    pub fn redacts(&self) -> Option<&EventId> {
        self.redacts.as_deref()
    }
    pub fn json(&self) -> &CanonicalJsonObject {
        &self.json
    }
    pub fn into_json(self) -> CanonicalJsonObject {
        self.json
    }
    /// The canonical JSON text of the PDU (what is stored and sent).
    pub fn to_canonical_string(&self) -> String {
        crate::canonical::write_object(&self.json)
    }
    pub fn is_rejected(&self) -> bool {
        self.rejected
    }
    pub fn set_rejected(&mut self, rejected: bool) {
        self.rejected = rejected;
    }
    /// The server that created the event (the sender's server name).
    pub fn origin(&self) -> &ruma::ServerName {
        self.sender.server_name()
    }
    /// Whether the JSON has a `room_id` field.
    pub fn has_room_id_field(&self) -> bool {
        self.room_id_in_json
    }
    /// The PDU as it travels over federation: the stored JSON (no `event_id` in v3+ rooms).
    pub fn to_federation_value(&self) -> serde_json::Value {
        crate::canonical::to_value(&self.json)
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_in_json.then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
