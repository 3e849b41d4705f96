//! The PDU: a room event as servers exchange it.
//!
//! A `Pdu` keeps the signed JSON exactly as created or received (the source of truth, what is
//! stored and served) next to the fields the rules need, parsed once. The JSON is kept as its
//! canonical text, not as a tree: room actors hold every state event of every active room,
//! and a `CanonicalJsonObject` tree (a B-tree node of eleven slots for every object, however
//! small) took about 7 KB per event against the text's 0.5-1 KB. [`Pdu::json`] parses the
//! text again for the few callers that walk the object (signature and hash checks, redaction,
//! reference hashes); what is stored and sent is the text itself. It implements ruma's
//! `state_res::Event` so ruma's authorization rules and state resolution run directly on it.
//!
//! The event formats of the room versions differ only here, behind one API:
//!
//! * Versions 1 and 2 carry the event ID in the event (`event_id`, `$local:server`, chosen by the
//!   sender) and cite other events as `[event_id, {"sha256": reference hash}]` pairs. Nothing
//!   checks those hashes (Synapse sends an empty object for some), so parsing asks only for an
//!   object of strings; weft sends the reference hashes the spec describes.
//! * Version 3 and later derive the event ID from the event's reference hash (standard base64 in
//!   v3, URL-safe from v4) and cite bare event IDs.
//!
//! Accessors (`event_id`, `prev_events`, `auth_events`) return IDs in every version.

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
    /// Where `content` is in `json` (byte offsets): the content is not kept twice.
    content_at: (u32, u32),
    state_key: Option<String>,
    prev_events: Vec<OwnedEventId>,
    auth_events: Vec<OwnedEventId>,
    depth: u64,
    redacts: Option<OwnedEventId>,
    rejected: bool,
    /// The canonical JSON text of the event (see the module comment).
    json: Box<str>,
}

/// A PDU just parsed from a peer, with what the checks of its signatures and content hash
/// need kept from the parse ([`Pdu::parse_received`]): its JSON object and the bytes its
/// servers signed. Nothing keeps it past those checks; rooms hold only the [`Pdu`].
#[derive(Clone, Debug)]
pub struct Received {
    pdu: Pdu,
    json: CanonicalJsonObject,
    signing: String,
    version: RoomVersion,
}

impl Received {
    /// The same for a PDU already parsed (one loaded, or built before it is checked): its
    /// text is parsed again.
    pub fn from_pdu(pdu: Pdu, version: RoomVersion) -> Result<Self, PduError> {
        let json = pdu.json();
        let signing = crate::signatures::signing_bytes(&json, version)
            .map_err(|e| PduError::Hash(e.to_string()))?;
        Ok(Self {
            pdu,
            json,
            signing,
            version,
        })
    }
    pub fn pdu(&self) -> &Pdu {
        &self.pdu
    }
    pub fn into_pdu(self) -> Pdu {
        self.pdu
    }
    pub fn version(&self) -> RoomVersion {
        self.version
    }
    /// The event's JSON object (`unsigned` removed).
    pub fn json(&self) -> &CanonicalJsonObject {
        &self.json
    }
    /// The redacted event without `signatures` and `unsigned`: what its servers signed.
    pub fn signing_bytes(&self) -> &str {
        &self.signing
    }
    /// Checks the signatures of every required server and the content hash
    /// ([`crate::signatures::verify_pdu`] without writing the signed bytes again).
    pub fn verify(
        &self,
        lookup: impl Fn(&str, &str) -> Option<crate::signatures::KnownKey>,
    ) -> Result<crate::signatures::HashCheck, crate::signatures::SignatureError> {
        crate::signatures::verify_pdu_with_bytes(&self.json, self.version, &self.signing, lookup)
    }
}

fn get_str<'a>(obj: &'a CanonicalJsonObject, key: &'static str) -> Result<&'a str, PduError> {
    match obj.get(key) {
        Some(CanonicalJsonValue::String(s)) => Ok(s),
        _ => Err(PduError::Field(key)),
    }
}

/// Parses one cited event: a bare ID (v3+), or an `[id, {"sha256": hash}]` pair (v1, v2).
fn cited_event_id(
    v: &CanonicalJsonValue,
    key: &'static str,
    version: RoomVersion,
) -> Result<OwnedEventId, PduError> {
    let id = if version.cites_event_hashes() {
        match v {
            CanonicalJsonValue::Array(pair) => match pair.as_slice() {
                // Nobody checks the hashes (Synapse sends `{}` for some), only their shape.
                [
                    CanonicalJsonValue::String(id),
                    CanonicalJsonValue::Object(hashes),
                ] if hashes
                    .values()
                    .all(|h| matches!(h, CanonicalJsonValue::String(_))) =>
                {
                    id
                }
                _ => return Err(PduError::Field(key)),
            },
            _ => return Err(PduError::Field(key)),
        }
    } else {
        match v {
            CanonicalJsonValue::String(s) => s,
            _ => return Err(PduError::Field(key)),
        }
    };
    parse_event_id(id, version).map_err(|_| PduError::Field(key))
}

/// Parses an event ID in the format of the version: `$local:server` in v1 and v2.
fn parse_event_id(id: &str, version: RoomVersion) -> Result<OwnedEventId, ()> {
    let id = OwnedEventId::try_from(id).map_err(|_| ())?;
    if version.event_id_in_event() && id.server_name().is_none() {
        return Err(());
    }
    Ok(id)
}

fn get_event_ids(
    obj: &CanonicalJsonObject,
    key: &'static str,
    version: RoomVersion,
) -> Result<Vec<OwnedEventId>, PduError> {
    match obj.get(key) {
        Some(CanonicalJsonValue::Array(items)) => items
            .iter()
            .map(|v| cited_event_id(v, key, version))
            .collect(),
        _ => Err(PduError::Field(key)),
    }
}

/// The reference hash of a PDU (unpadded base64, the alphabet of the version): the event ID
/// without its `$` from v3, and the `sha256` that v1/v2 events cite next to the ID.
pub fn reference_hash(
    json: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<String, PduError> {
    if version.is_linearized() {
        return crate::lm::reference_hash(json).map_err(PduError::Hash);
    }
    ruma::signatures::reference_hash(json, version.rules())
        .map_err(|e| PduError::Hash(e.to_string()))
}

/// Computes the event ID of a PDU in a room of the given version: its reference hash from v3,
/// and in v1/v2 the `event_id` the event carries.
pub fn compute_event_id(
    json: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<OwnedEventId, PduError> {
    if version.event_id_in_event() {
        let id = get_str(json, "event_id")?;
        return parse_event_id(id, version).map_err(|_| PduError::Field("event_id"));
    }
    let hash = if version.is_linearized() {
        crate::lm::reference_hash(json).map_err(PduError::Hash)?
    } else {
        ruma::signatures::reference_hash(json, version.rules())
            .map_err(|e| PduError::Hash(e.to_string()))?
    };
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| PduError::Hash(e.to_string()))
}

/// The canonical text of a PDU, refused when over the spec's size limit.
fn sized_text(json: &CanonicalJsonObject) -> Result<Box<str>, PduError> {
    let text = crate::canonical::write_object(json);
    if text.len() > crate::MAX_PDU_BYTES {
        return Err(PduError::TooLarge(text.len()));
    }
    Ok(text.into_boxed_str())
}

/// The event ID from the bytes a PDU's servers sign, in room versions whose event ID is the
/// reference hash (v3 on, not Linearized): the reference hash covers exactly those bytes.
fn event_id_from_signing_bytes(
    signing: &str,
    version: RoomVersion,
) -> Result<OwnedEventId, PduError> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(signing.as_bytes());
    let hash = match version.rules().event_id_format {
        ruma::room_version_rules::EventIdFormatVersion::V1
        | ruma::room_version_rules::EventIdFormatVersion::V2 => {
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        }
        _ => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest),
    };
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| PduError::Hash(e.to_string()))
}

/// Where the `content` object is in a PDU's JSON text (byte offsets).
fn content_range(text: &str) -> Option<(u32, u32)> {
    #[derive(serde::Deserialize)]
    struct Content<'a> {
        #[serde(borrow)]
        content: &'a RawValue,
    }
    let c: Content<'_> = serde_json::from_str(text).ok()?;
    let start = (c.content.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start + c.content.get().len();
    (text.get(start..end) == Some(c.content.get()))
        .then(|| Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?)))
        .flatten()
}

/// `text` (a content object's JSON, a slice of a PDU's text) as a raw JSON value; the
/// check is a scan of the slice, which is valid JSON by construction.
fn raw_content(text: &str) -> &RawValue {
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => raw,
        Err(_) => {
            static EMPTY: std::sync::OnceLock<Box<RawValue>> = std::sync::OnceLock::new();
            EMPTY.get_or_init(|| RawValue::from_string("{}".to_owned()).expect("`{}` is JSON"))
        }
    }
}

impl Pdu {
    /// Parses a PDU received from elsewhere (or built locally), computing its event ID.
    ///
    /// `room_id_hint` is the room the caller expects the event in; it is needed for v12 create
    /// events (which have no `room_id`) only to cross-check.
    pub fn from_json(json: CanonicalJsonObject, version: RoomVersion) -> Result<Self, PduError> {
        let text = sized_text(&json)?;
        let event_id = compute_event_id(&json, version)?;
        Self::assemble(event_id, &json, text, version)
    }

    /// Parses a PDU as received over federation (`/send`, `send_join`, `/event`, ...): any JSON
    /// value, checked for the version's event format. Fields peers add outside the signed form
    /// are dropped first: `unsigned`, and `event_id` from v3 (in v1/v2 it is part of the event).
    pub fn from_received(raw: serde_json::Value, version: RoomVersion) -> Result<Self, PduError> {
        Self::parse_received(raw, version).map(Received::into_pdu)
    }

    /// [`Pdu::from_received`], keeping what the signature and hash checks need: the JSON
    /// object and the bytes the servers signed. Those bytes are also what the event ID hashes
    /// (the redacted event without `signatures` and `unsigned`), so they are written once for
    /// both.
    pub fn parse_received(
        raw: serde_json::Value,
        version: RoomVersion,
    ) -> Result<Received, PduError> {
        let mut obj =
            crate::canonical::value_to_object(raw).map_err(|e| PduError::Format(e.to_string()))?;
        if !version.event_id_in_event() {
            obj.remove("event_id");
        }
        obj.remove("unsigned");
        let text = sized_text(&obj)?;
        let signing = crate::signatures::signing_bytes(&obj, version)
            .map_err(|e| PduError::Hash(e.to_string()))?;
        let event_id = if version.event_id_in_event() || version.is_linearized() {
            compute_event_id(&obj, version)?
        } else {
            event_id_from_signing_bytes(&signing, version)?
        };
        let pdu = Self::assemble(event_id, &obj, text, version)?;
        if !version.is_linearized() {
            crate::auth::check_format(version, &pdu).map_err(|e| PduError::Format(e.0))?;
        }
        Ok(Received {
            pdu,
            json: obj,
            signing,
            version,
        })
    }

    /// Builds a PDU from JSON whose event ID is already known (e.g. loaded from storage).
    pub fn from_json_with_id(
        event_id: OwnedEventId,
        json: CanonicalJsonObject,
        version: RoomVersion,
    ) -> Result<Self, PduError> {
        if version.event_id_in_event() && compute_event_id(&json, version)? != event_id {
            return Err(PduError::Format(format!(
                "the event says it is not {event_id}"
            )));
        }
        let text = crate::canonical::write_object(&json).into_boxed_str();
        Self::assemble(event_id, &json, text, version)
    }

    /// The fields the rules need, read from `json`, beside its canonical `text`.
    fn assemble(
        event_id: OwnedEventId,
        json: &CanonicalJsonObject,
        text: Box<str>,
        version: RoomVersion,
    ) -> Result<Self, PduError> {
        let kind = TimelineEventType::from(get_str(json, "type")?);
        let sender = OwnedUserId::try_from(get_str(json, "sender")?)
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
        if !matches!(json.get("content"), Some(CanonicalJsonValue::Object(_))) {
            return Err(PduError::Field("content"));
        }
        let state_key = match json.get("state_key") {
            None => None,
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            Some(_) => return Err(PduError::Field("state_key")),
        };
        let prev_events = get_event_ids(json, "prev_events", version)?;
        let auth_events = get_event_ids(json, "auth_events", version)?;
        // Only possible where senders choose event IDs (v1/v2); state resolution must never
        // meet such a loop.
        if prev_events.contains(&event_id) || auth_events.contains(&event_id) {
            return Err(PduError::Format(format!("{event_id} cites itself")));
        }
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
            // From v11 only `content.redacts` counts: a top-level `redacts` redacts nothing
            // there (as in Synapse), so honouring it would hide events only on weft.
            let chosen = if version.redacts_in_content() {
                from_content
            } else {
                top
            };
            chosen.and_then(|s| parse_event_id(s, version).ok())
        } else {
            None
        };
        let content_at = content_range(&text).ok_or(PduError::Field("content"))?;
        Ok(Self {
            event_id,
            room_id,
            room_id_in_json,
            sender,
            origin_server_ts,
            kind,
            content_at,
            state_key,
            prev_events,
            auth_events,
            depth,
            redacts,
            rejected: false,
            json: text,
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
        raw_content(self.content_text())
    }
    /// The content's JSON text (a slice of the canonical text).
    pub fn content_text(&self) -> &str {
        let (start, end) = self.content_at;
        self.json.get(start as usize..end as usize).unwrap_or("{}")
    }
    /// The content as a JSON value (for inspection by the server).
    pub fn content_value(&self) -> serde_json::Value {
        serde_json::from_str(self.content_text()).unwrap_or(serde_json::Value::Null)
    }
    /// A string field of the content, if present.
    pub fn content_str(&self, field: &str) -> Option<String> {
        let fields: std::collections::BTreeMap<String, &RawValue> =
            serde_json::from_str(self.content_text()).ok()?;
        serde_json::from_str::<String>(fields.get(field)?.get()).ok()
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
    /// The event's JSON object, parsed from the kept text (see the module comment).
    pub fn json(&self) -> CanonicalJsonObject {
        // The text was written from a `CanonicalJsonObject` by `from_json_with_id`, so it
        // parses back; an empty object would fail every check that reads it.
        serde_json::from_str(&self.json).unwrap_or_default()
    }
    pub fn into_json(self) -> CanonicalJsonObject {
        self.json()
    }
    /// The canonical JSON text of the PDU (what is stored and sent).
    pub fn canonical_str(&self) -> &str {
        &self.json
    }
    /// The canonical JSON text of the PDU (what is stored and sent).
    pub fn to_canonical_string(&self) -> String {
        self.json.to_string()
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
        serde_json::from_str(&self.json).unwrap_or(serde_json::Value::Null)
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
        raw_content(self.content_text())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn object(value: Value) -> CanonicalJsonObject {
        crate::canonical::value_to_object(value).unwrap()
    }

    fn event(kind: &str, extra: Value) -> Value {
        let mut ev = json!({
            "type": kind,
            "room_id": "!r:a.test",
            "sender": "@u:a.test",
            "content": {},
            "origin_server_ts": 1,
            "depth": 2,
            "prev_events": ["$p"],
            "auth_events": ["$a"],
            "hashes": {"sha256": "h"},
            "signatures": {},
        });
        if let (Value::Object(e), Value::Object(x)) = (&mut ev, extra) {
            for (k, v) in x {
                if v.is_null() {
                    e.remove(&k);
                } else {
                    e.insert(k, v);
                }
            }
        }
        ev
    }

    #[test]
    fn redacts_is_read_where_the_version_puts_it() {
        // (version, top-level redacts, content.redacts, what the event redacts)
        type Case = (
            RoomVersion,
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (RoomVersion::V10, Some("$top"), None, Some("$top")),
            (RoomVersion::V10, None, Some("$content"), None),
            (
                RoomVersion::V10,
                Some("$top"),
                Some("$content"),
                Some("$top"),
            ),
            (RoomVersion::V11, None, Some("$content"), Some("$content")),
            (
                RoomVersion::V11,
                Some("$top"),
                Some("$content"),
                Some("$content"),
            ),
            // From v11 a top-level `redacts` means nothing (as in Synapse).
            (RoomVersion::V11, Some("$top"), None, None),
            (RoomVersion::V12, Some("$top"), None, None),
            (RoomVersion::V12, None, Some("$content"), Some("$content")),
            (RoomVersion::V11, None, None, None),
        ];
        for (version, top, content, want) in cases {
            let mut c = json!({});
            if let Some(r) = content {
                c["redacts"] = json!(r);
            }
            let ev = event(
                "m.room.redaction",
                json!({"content": c, "redacts": top.map_or(Value::Null, |t| json!(t))}),
            );
            let pdu = Pdu::from_json(object(ev), *version).unwrap();
            assert_eq!(
                pdu.redacts().map(|r| r.as_str()),
                *want,
                "v{version} top {top:?} content {content:?}"
            );
        }
        // Only redaction events redact.
        let msg = event("m.room.message", json!({"redacts": "$top"}));
        assert_eq!(
            Pdu::from_json(object(msg), RoomVersion::V10)
                .unwrap()
                .redacts(),
            None
        );
    }

    #[test]
    fn content_is_read_from_the_canonical_text() {
        // Contents whose text is tricky to find inside the event's text: escapes, nesting,
        // a `content` key inside the content, unicode, an empty object.
        let contents = [
            json!({}),
            json!({"body": "a \"quoted\" }, brace", "msgtype": "m.text"}),
            json!({"content": {"content": 1}, "n": [1, {"x": null}]}),
            json!({"body": "h\u{e9}llo \u{1f600} \n\t", "z": true}),
            json!({"membership": "join", "displayname": "A"}),
        ];
        for c in contents {
            let pdu = Pdu::from_json(
                object(event("m.room.message", json!({"content": c.clone()}))),
                RoomVersion::V11,
            )
            .unwrap();
            assert_eq!(pdu.content_value(), c);
            let raw: Value = serde_json::from_str(pdu.content().get()).unwrap();
            assert_eq!(raw, c);
            assert_eq!(
                ruma::state_res::Event::content(&pdu).get(),
                pdu.content_text()
            );
            // The slice is the content object of the text, not some other object.
            let whole: Value = serde_json::from_str(pdu.canonical_str()).unwrap();
            assert_eq!(whole["content"], c);
        }
        let member = Pdu::from_json(
            object(event(
                "m.room.member",
                json!({"state_key": "@u:a.test", "content": {"membership": "invite"}}),
            )),
            RoomVersion::V11,
        )
        .unwrap();
        assert_eq!(member.membership().as_deref(), Some("invite"));
        assert_eq!(member.content_str("membership").as_deref(), Some("invite"));
        assert_eq!(member.content_str("missing"), None);
    }

    #[test]
    fn malformed_pdus_are_refused() {
        // (what is wrong, change to a good event, expected error)
        let cases: Vec<(&str, Value, PduError)> = vec![
            ("no type", json!({"type": null}), PduError::Field("type")),
            (
                "type not a string",
                json!({"type": 1}),
                PduError::Field("type"),
            ),
            (
                "no sender",
                json!({"sender": null}),
                PduError::Field("sender"),
            ),
            (
                "bad sender",
                json!({"sender": "u"}),
                PduError::Field("sender"),
            ),
            (
                "no room_id",
                json!({"room_id": null}),
                PduError::Field("room_id"),
            ),
            (
                "bad room_id",
                json!({"room_id": "r"}),
                PduError::Field("room_id"),
            ),
            (
                "no content",
                json!({"content": null}),
                PduError::Field("content"),
            ),
            (
                "content not an object",
                json!({"content": []}),
                PduError::Field("content"),
            ),
            (
                "state_key not a string",
                json!({"state_key": 1}),
                PduError::Field("state_key"),
            ),
            (
                "negative origin_server_ts",
                json!({"origin_server_ts": -1}),
                PduError::Field("origin_server_ts"),
            ),
            ("no depth", json!({"depth": null}), PduError::Field("depth")),
            (
                "negative depth",
                json!({"depth": -1}),
                PduError::Field("depth"),
            ),
            (
                "prev_events not a list",
                json!({"prev_events": "$p"}),
                PduError::Field("prev_events"),
            ),
            (
                "auth_events holding a non-ID",
                json!({"auth_events": ["a"]}),
                PduError::Field("auth_events"),
            ),
        ];
        for version in [RoomVersion::V10, RoomVersion::V11, RoomVersion::V12] {
            assert!(Pdu::from_json(object(event("m.room.message", json!({}))), version).is_ok());
            for (name, change, want) in &cases {
                let json = object(event("m.room.message", change.clone()));
                let id = OwnedEventId::try_from("$known").unwrap();
                let got = Pdu::from_json_with_id(id, json.clone(), version);
                assert_eq!(got.err().as_ref(), Some(want), "v{version} {name}");
                // Computing the event ID first may fail earlier, but it fails.
                assert!(Pdu::from_json(json, version).is_err(), "v{version} {name}");
            }
        }
        let big = event(
            "m.room.message",
            json!({"content": {"body": "x".repeat(70_000)}}),
        );
        assert!(matches!(
            Pdu::from_json(object(big), RoomVersion::V11),
            Err(PduError::TooLarge(_))
        ));
    }

    #[test]
    fn create_event_room_id_per_version() {
        let create = |room_id: Option<&str>| {
            object(event(
                "m.room.create",
                json!({
                    "state_key": "",
                    "prev_events": [],
                    "auth_events": [],
                    "room_id": room_id.map_or(Value::Null, |r| json!(r)),
                }),
            ))
        };
        for version in [RoomVersion::V10, RoomVersion::V11] {
            assert_eq!(
                Pdu::from_json(create(None), version).err(),
                Some(PduError::Field("room_id")),
                "v{version}"
            );
            let pdu = Pdu::from_json(create(Some("!r:a.test")), version).unwrap();
            assert_eq!(pdu.room_id().as_str(), "!r:a.test");
            assert!(pdu.has_room_id_field());
        }
        // v12: the room ID is the create event's reference hash with a `!`.
        let pdu = Pdu::from_json(create(None), RoomVersion::V12).unwrap();
        assert!(!pdu.has_room_id_field());
        assert_eq!(
            pdu.room_id().as_str().strip_prefix('!'),
            pdu.event_id().as_str().strip_prefix('$')
        );
        assert_eq!(ruma::state_res::Event::room_id(&pdu), None);
        // A v12 create event that does carry a room ID keeps it (and the rules reject it).
        let pdu = Pdu::from_json(create(Some("!r:a.test")), RoomVersion::V12).unwrap();
        assert!(pdu.has_room_id_field());
        // Only the create event may omit it in v12.
        let msg = object(event("m.room.message", json!({"room_id": null})));
        assert_eq!(
            Pdu::from_json(msg, RoomVersion::V12).err(),
            Some(PduError::Field("room_id"))
        );
    }
}

#[cfg(test)]
mod received_tests {
    use super::*;
    use crate::builder::{EventDraft, Position, build_pdu};
    use crate::keys::ServerSigningKey;
    use crate::signatures::{HashCheck, KnownKey, SignatureError, verify_pdu};
    use serde_json::json;

    fn signed(version: RoomVersion, kind: &str, content: serde_json::Value) -> serde_json::Value {
        let key = ServerSigningKey::from_seed([3u8; 32], "k").unwrap();
        let room = OwnedRoomId::try_from("!r:a.example").unwrap();
        let sender = OwnedUserId::try_from("@u:a.example").unwrap();
        let mut draft = EventDraft::new(kind, sender, content);
        if kind == "m.room.member" {
            draft = EventDraft::state(kind, "@u:a.example", draft.sender.clone(), draft.content);
        }
        draft.origin_server_ts = 5;
        let pos = Position {
            version,
            room_id: Some(&room),
            prev_events: vec![OwnedEventId::try_from("$prev:a.example").unwrap()],
            auth_events: vec![OwnedEventId::try_from("$auth:a.example").unwrap()],
            depth: 3,
        };
        let pdu = build_pdu(&draft, &pos, "a.example", &key).unwrap();
        let mut v = crate::canonical::to_value(&pdu.into_json());
        v["unsigned"] = json!({"age": 12});
        v
    }

    fn lookup(s: &str, k: &str) -> Option<KnownKey> {
        let key = ServerSigningKey::from_seed([3u8; 32], "k").unwrap();
        (s == "a.example" && k == key.key_id()).then(|| KnownKey {
            key: key.verifying_key(),
            valid_until_ts: u64::MAX,
        })
    }

    /// The old way to the signed bytes: redact a copy, then serialize it for signing.
    fn signing_bytes_by_copy(json: &CanonicalJsonObject, version: RoomVersion) -> String {
        let redacted =
            ruma::canonical_json::redact(json.clone(), &version.rules().redaction, None).unwrap();
        ruma::signatures::to_canonical_json_string_for_signing(&redacted).unwrap()
    }

    #[test]
    fn one_pass_agrees_with_the_event_id_and_the_signatures_of_every_version() {
        let contents = [
            ("m.room.message", json!({"body": "hi", "msgtype": "m.text"})),
            (
                "m.room.member",
                json!({"membership": "join", "displayname": "U",
                       "join_authorised_via_users_server": "@x:b.example"}),
            ),
        ];
        // Versions 1 and 2 carry their event IDs (read, not hashed), as before.
        let hashed = RoomVersion::ALL
            .iter()
            .copied()
            .filter(|v| !v.is_linearized() && !v.event_id_in_event());
        for version in hashed {
            for (kind, content) in &contents {
                let raw = signed(version, kind, content.clone());
                let whole = Pdu::from_received(raw.clone(), version).unwrap();
                let got = Pdu::parse_received(raw, version).unwrap();
                let what = format!("v{version} {kind}");
                assert_eq!(got.pdu().event_id(), whole.event_id(), "{what}");
                assert_eq!(
                    got.pdu().event_id(),
                    &compute_event_id(got.json(), version).unwrap(),
                    "{what}"
                );
                assert_eq!(
                    got.signing_bytes(),
                    signing_bytes_by_copy(got.json(), version),
                    "{what}"
                );
                assert_eq!(got.pdu().canonical_str(), whole.canonical_str(), "{what}");
                assert!(!got.json().contains_key("unsigned"), "{what}");
                // A restricted join (v8 on) needs the authorising server's signature too.
                let want = if *kind == "m.room.member"
                    && version.rules().authorization.restricted_join_rule
                {
                    Err(SignatureError::Missing("b.example".into()))
                } else {
                    Ok(HashCheck::Valid)
                };
                assert_eq!(got.verify(lookup), want, "{what}");
                assert_eq!(
                    got.verify(lookup),
                    verify_pdu(got.json(), version, lookup),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn tampered_events_fail_the_same_way_by_either_route() {
        let v = RoomVersion::V11;
        let raw = signed(
            v,
            "m.room.message",
            json!({"body": "hi", "msgtype": "m.text"}),
        );
        // (change, expected verdict)
        let mut body = raw.clone();
        body["content"]["body"] = json!("changed");
        let mut sender_field = raw.clone();
        sender_field["origin_server_ts"] = json!(6);
        let mut no_sigs = raw.clone();
        no_sigs["signatures"] = json!({});
        let cases: Vec<(serde_json::Value, Result<HashCheck, SignatureError>)> = vec![
            (body, Ok(HashCheck::ContentMismatch)),
            (
                sender_field,
                Err(SignatureError::Invalid {
                    server: "a.example".into(),
                    key_id: "ed25519:k".into(),
                }),
            ),
            (no_sigs, Err(SignatureError::Missing("a.example".into()))),
        ];
        for (raw, want) in cases {
            let got = Pdu::parse_received(raw, v).unwrap();
            assert_eq!(got.verify(lookup), want);
            assert_eq!(verify_pdu(got.json(), v, lookup), want);
            let again = Received::from_pdu(got.pdu().clone(), v).unwrap();
            assert_eq!(again.verify(lookup), want);
        }
    }

    #[test]
    fn oversized_events_are_refused_before_any_hash() {
        let v = RoomVersion::V11;
        let mut raw = signed(v, "m.room.message", json!({"body": "hi"}));
        raw["content"]["body"] = json!("x".repeat(70_000));
        assert!(matches!(
            Pdu::parse_received(raw, v),
            Err(PduError::TooLarge(_))
        ));
    }
}
