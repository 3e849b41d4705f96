//! Making Linearized Matrix events: the three ways an event comes to exist.
//!
//! * [`hub_event`] — a user of the hub sends: the hub builds a plain PDU (no `hub_server`, no
//!   `hashes.lpdu`, no `depth`), with one `prev_events` entry (none for the create event), and
//!   signs it once (§3.3, §9.2).
//! * [`lpdu`] — a user of a participant sends: the participant builds the partial event
//!   (`hub_server`, `hashes.lpdu`, no `auth_events`/`prev_events`/`hashes.sha256`) and signs
//!   the redacted LPDU (§3.2).
//! * [`complete`] — the hub turns a participant's LPDU into a PDU: it adds `auth_events`,
//!   `prev_events` and `hashes.sha256` and its own signature; every field the participant
//!   wrote stays byte-identical, so the participant's hash and signature still verify (§9.1).
//!
//! The tests rebuild the reference implementation's events from their seeds and compare bytes.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId};

use super::{lpdu_hash, pdu_hash, signing_bytes};
use crate::builder::{BuildError, EventDraft};
use crate::canonical;
use crate::keys::ServerSigningKey;
use crate::pdu::Pdu;
use crate::room_version::RoomVersion;

fn string(s: &str) -> CanonicalJsonValue {
    CanonicalJsonValue::String(s.to_owned())
}

fn ids(list: &[OwnedEventId]) -> CanonicalJsonValue {
    CanonicalJsonValue::Array(list.iter().map(|id| string(id.as_str())).collect())
}

/// The fields every LM event has: room, type, state key, sender, timestamp, content (with
/// `redacts` in the content, as from room version 11).
fn base(draft: &EventDraft, room_id: &RoomId) -> Result<CanonicalJsonObject, BuildError> {
    let mut content = match canonical::value_to_canonical(draft.content.clone()) {
        Ok(CanonicalJsonValue::Object(map)) => map,
        Ok(_) => return Err(BuildError::ContentNotObject),
        Err(e) => return Err(BuildError::NotCanonical(e.to_string())),
    };
    if let Some(redacts) = &draft.redacts {
        content.insert("redacts".into(), string(redacts.as_str()));
    }
    let mut obj = CanonicalJsonObject::new();
    obj.insert("room_id".into(), string(room_id.as_str()));
    obj.insert("type".into(), string(&draft.kind));
    if let Some(k) = &draft.state_key {
        obj.insert("state_key".into(), string(k));
    }
    obj.insert("sender".into(), string(draft.sender.as_str()));
    obj.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(
            ruma::Int::try_from(draft.origin_server_ts)
                .map_err(|_| BuildError::Invalid("origin_server_ts out of range".into()))?,
        ),
    );
    obj.insert("content".into(), CanonicalJsonValue::Object(content));
    Ok(obj)
}

/// Adds `server`'s signature over the event's LM signing bytes (the redacted event without
/// `signatures`). Other servers' signatures are kept; signatures never change the event ID.
pub fn sign(event: &mut CanonicalJsonObject, server: &str, key: &ServerSigningKey) {
    let sig = key.sign_b64(signing_bytes(event).as_bytes());
    let sigs = event
        .entry("signatures".to_owned())
        .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
    if !matches!(sigs, CanonicalJsonValue::Object(_)) {
        *sigs = CanonicalJsonValue::Object(CanonicalJsonObject::new());
    }
    if let CanonicalJsonValue::Object(sigs) = sigs {
        let mine = sigs
            .entry(server.to_owned())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        if !matches!(mine, CanonicalJsonValue::Object(_)) {
            *mine = CanonicalJsonValue::Object(CanonicalJsonObject::new());
        }
        if let CanonicalJsonValue::Object(mine) = mine {
            mine.insert(key.key_id().to_owned(), CanonicalJsonValue::String(sig));
        }
    }
}

/// The template a hub hands out with `make_join`/`make_leave`/`make_knock`: the event as the
/// hub would complete it now, without hashes or signatures (the joiner keeps only `type`,
/// `state_key`, `sender` and `content`).
pub fn template(
    draft: &EventDraft,
    room_id: &RoomId,
    prev: Option<&EventId>,
    auth_events: &[OwnedEventId],
) -> Result<CanonicalJsonObject, BuildError> {
    let mut obj = base(draft, room_id)?;
    obj.insert("auth_events".into(), ids(auth_events));
    obj.insert(
        "prev_events".into(),
        CanonicalJsonValue::Array(prev.map(|p| string(p.as_str())).into_iter().collect()),
    );
    Ok(obj)
}

/// Builds and signs an event of a user of the hub (§3.3): `prev` is the last event of the
/// line (`None` only for the create event).
pub fn hub_event(
    draft: &EventDraft,
    room_id: &RoomId,
    prev: Option<&EventId>,
    auth_events: &[OwnedEventId],
    hub: &str,
    key: &ServerSigningKey,
) -> Result<Pdu, BuildError> {
    if draft.sender.server_name().as_str() != hub {
        return Err(BuildError::Invalid(format!(
            "{} is not a user of the hub {hub}: its events are LPDUs",
            draft.sender
        )));
    }
    let mut obj = template(draft, room_id, prev, auth_events)?;
    let hash = pdu_hash(&obj);
    obj.insert(
        "hashes".into(),
        CanonicalJsonValue::Object(
            [("sha256".to_owned(), CanonicalJsonValue::String(hash))].into(),
        ),
    );
    sign(&mut obj, hub, key);
    Ok(Pdu::from_json(obj, RoomVersion::Linearized)?)
}

/// Builds and signs a participant's LPDU (§3.2). `origin` is the participant (the sender's
/// server), `hub` the room's hub.
pub fn lpdu(
    draft: &EventDraft,
    room_id: &RoomId,
    hub: &str,
    origin: &str,
    key: &ServerSigningKey,
) -> Result<CanonicalJsonObject, BuildError> {
    if draft.sender.server_name().as_str() != origin {
        return Err(BuildError::Invalid(format!(
            "{} is not a user of {origin}",
            draft.sender
        )));
    }
    if hub == origin {
        return Err(BuildError::Invalid(
            "the hub's own users send PDUs, not LPDUs".into(),
        ));
    }
    let mut obj = base(draft, room_id)?;
    obj.insert("hub_server".into(), string(hub));
    let hash = lpdu_hash(&obj);
    obj.insert(
        "hashes".into(),
        CanonicalJsonValue::Object(
            [(
                "lpdu".to_owned(),
                CanonicalJsonValue::Object(
                    [("sha256".to_owned(), CanonicalJsonValue::String(hash))].into(),
                ),
            )]
            .into(),
        ),
    );
    sign(&mut obj, origin, key);
    Ok(obj)
}

/// Completes a participant's (already verified) LPDU into a PDU as the hub (§9.1): adds
/// `auth_events`, `prev_events = [prev]`, `hashes.sha256` and the hub's signature. Refuses
/// anything that is not an LPDU for this hub.
pub fn complete(
    lpdu: &CanonicalJsonObject,
    prev: &EventId,
    auth_events: &[OwnedEventId],
    hub: &str,
    key: &ServerSigningKey,
) -> Result<Pdu, BuildError> {
    match lpdu.get("hub_server") {
        Some(CanonicalJsonValue::String(h)) if h == hub => {}
        Some(CanonicalJsonValue::String(h)) => {
            return Err(BuildError::Invalid(format!(
                "the LPDU names {h} as its hub, not {hub}"
            )));
        }
        _ => {
            return Err(BuildError::Invalid(
                "an LPDU must name its hub_server".into(),
            ));
        }
    }
    if lpdu.contains_key("auth_events") || lpdu.contains_key("prev_events") {
        return Err(BuildError::Invalid(
            "an LPDU carries no auth_events or prev_events".into(),
        ));
    }
    let lpdu_only = match lpdu.get("hashes") {
        Some(CanonicalJsonValue::Object(h)) => h.len() == 1 && h.contains_key("lpdu"),
        _ => false,
    };
    if !lpdu_only {
        return Err(BuildError::Invalid(
            "an LPDU's hashes hold exactly its lpdu hash".into(),
        ));
    }
    let mut obj = lpdu.clone();
    obj.insert("auth_events".into(), ids(auth_events));
    obj.insert(
        "prev_events".into(),
        CanonicalJsonValue::Array(vec![string(prev.as_str())]),
    );
    let hash = pdu_hash(&obj);
    if let Some(CanonicalJsonValue::Object(h)) = obj.get_mut("hashes") {
        h.insert("sha256".into(), CanonicalJsonValue::String(hash));
    }
    sign(&mut obj, hub, key);
    Ok(Pdu::from_json(obj, RoomVersion::Linearized)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::b64_decode;
    use crate::lm::{event_id, lpdu_event_id, lpdu_of};
    use ruma::{OwnedRoomId, OwnedUserId};
    use serde_json::Value;

    const VECTORS: &str = include_str!("../../testdata/linearized-matrix-vectors.json");

    fn vectors() -> Value {
        serde_json::from_str(VECTORS).unwrap()
    }

    fn key_of(v: &Value, server: &str) -> ServerSigningKey {
        let seed = b64_decode(v["servers"][server]["seed_unpadded_b64"].as_str().unwrap()).unwrap();
        ServerSigningKey::from_seed(seed.try_into().unwrap(), "1").unwrap()
    }

    fn obj(v: &Value) -> CanonicalJsonObject {
        let mut o = canonical::value_to_object(v.clone()).unwrap();
        o.remove("event_id");
        o
    }

    fn draft_of(raw: &Value) -> EventDraft {
        let sender = OwnedUserId::try_from(raw["sender"].as_str().unwrap()).unwrap();
        let mut d = EventDraft::new(
            raw["type"].as_str().unwrap(),
            sender,
            raw["content"].clone(),
        );
        d.state_key = raw["state_key"].as_str().map(str::to_owned);
        d.origin_server_ts = raw["origin_server_ts"].as_u64().unwrap();
        d
    }

    fn id_list(raw: &Value, key: &str) -> Vec<OwnedEventId> {
        raw[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| OwnedEventId::try_from(e.as_str().unwrap()).unwrap())
            .collect()
    }

    fn room(raw: &Value) -> OwnedRoomId {
        OwnedRoomId::try_from(raw["room_id"].as_str().unwrap()).unwrap()
    }

    /// Drops the signatures of every server but `keep` (the invitee's countersignature).
    fn only_signature_of(mut o: CanonicalJsonObject, keep: &str) -> CanonicalJsonObject {
        if let Some(CanonicalJsonValue::Object(s)) = o.get_mut("signatures") {
            s.retain(|k, _| k == keep);
        }
        o
    }

    #[test]
    fn hub_local_events_are_rebuilt_byte_for_byte() {
        let v = vectors();
        let hub = "localhost:3000";
        let key = key_of(&v, hub);
        let mut seen = 0;
        for raw in v["hub_timeline_oldest_first"].as_array().unwrap() {
            if raw.get("hub_server").is_some() {
                continue;
            }
            seen += 1;
            let prev = id_list(raw, "prev_events");
            let built = hub_event(
                &draft_of(raw),
                &room(raw),
                prev.first().map(|p| &**p),
                &id_list(raw, "auth_events"),
                hub,
                &key,
            )
            .unwrap();
            let want = only_signature_of(obj(raw), hub);
            assert_eq!(
                built.to_canonical_string(),
                canonical::write_object(&want),
                "{}",
                raw["event_id"]
            );
            assert_eq!(built.event_id().as_str(), raw["event_id"].as_str().unwrap());
        }
        assert_eq!(
            seen, 7,
            "create, join, power levels, join rules, visibility, invite, message"
        );
    }

    #[test]
    fn participant_lpdus_are_rebuilt_byte_for_byte() {
        let v = vectors();
        for name in ["lpdu_join_sent_to_send_join", "lpdu_message_sent_to_send"] {
            let case = &v[name];
            let raw = &case["lpdu"];
            let built = lpdu(
                &draft_of(raw),
                &room(raw),
                "localhost:3000",
                "localhost:3001",
                &key_of(&v, "localhost:3001"),
            )
            .unwrap();
            assert_eq!(
                canonical::write_object(&built),
                canonical::write_object(&obj(raw)),
                "{name}"
            );
            assert_eq!(event_id(&built), case["lpdu_event_id"].as_str().unwrap());
        }
    }

    #[test]
    fn completing_the_vector_lpdus_gives_the_hub_pdus() {
        let v = vectors();
        let hub = "localhost:3000";
        let key = key_of(&v, hub);
        let timeline = v["hub_timeline_oldest_first"].as_array().unwrap();
        let mut seen = 0;
        for raw in timeline.iter().filter(|r| r.get("hub_server").is_some()) {
            seen += 1;
            let pdu = obj(raw);
            let lpdu = lpdu_of(&pdu).unwrap();
            let prev = id_list(raw, "prev_events");
            let completed =
                complete(&lpdu, &prev[0], &id_list(raw, "auth_events"), hub, &key).unwrap();
            assert_eq!(
                completed.to_canonical_string(),
                canonical::write_object(&pdu),
                "{}",
                raw["event_id"]
            );
            assert_eq!(
                completed.event_id().as_str(),
                raw["event_id"].as_str().unwrap()
            );
        }
        assert_eq!(seen, 2);
        // The LPDUs as the participant sent them complete into the same PDUs, and the LPDU
        // event ID is recoverable from the PDU.
        let msg = &v["lpdu_message_sent_to_send"];
        let final_pdu = timeline
            .iter()
            .find(|r| r["event_id"] == msg["resulting_pdu_event_id"])
            .unwrap();
        let completed = complete(
            &obj(&msg["lpdu"]),
            &id_list(final_pdu, "prev_events")[0],
            &id_list(final_pdu, "auth_events"),
            hub,
            &key,
        )
        .unwrap();
        assert_eq!(
            completed.event_id().as_str(),
            msg["resulting_pdu_event_id"].as_str().unwrap()
        );
        assert_eq!(
            lpdu_event_id(&completed.json()).unwrap(),
            msg["lpdu_event_id"].as_str().unwrap()
        );
    }

    #[test]
    fn refusals() {
        let v = vectors();
        let hub_key = key_of(&v, "localhost:3000");
        let case = &v["lpdu_message_sent_to_send"]["lpdu"];
        let l = obj(case);
        let prev = OwnedEventId::try_from("$prev").unwrap();
        // (what is wrong, the LPDU, the hub completing it)
        let mut with_auth = l.clone();
        with_auth.insert("auth_events".into(), CanonicalJsonValue::Array(vec![]));
        let mut with_sha = l.clone();
        if let Some(CanonicalJsonValue::Object(h)) = with_sha.get_mut("hashes") {
            h.insert("sha256".into(), string("x"));
        }
        let mut no_hub = l.clone();
        no_hub.remove("hub_server");
        let cases: Vec<(&str, CanonicalJsonObject, &str)> = vec![
            ("another hub", l.clone(), "localhost:3002"),
            ("carries auth_events", with_auth, "localhost:3000"),
            ("carries a PDU hash", with_sha, "localhost:3000"),
            ("names no hub", no_hub, "localhost:3000"),
        ];
        for (name, lpdu, hub) in cases {
            assert!(
                matches!(
                    complete(&lpdu, &prev, &[], hub, &hub_key),
                    Err(BuildError::Invalid(_))
                ),
                "{name}"
            );
        }
        // A hub user's event is never an LPDU, and a participant's never a hub event.
        let alice = draft_of(&v["hub_timeline_oldest_first"][8]);
        let r = room(case);
        assert!(lpdu(&alice, &r, "localhost:3000", "localhost:3000", &hub_key).is_err());
        let bob = draft_of(case);
        assert!(hub_event(&bob, &r, Some(&prev), &[], "localhost:3000", &hub_key).is_err());
        assert!(lpdu(&bob, &r, "localhost:3000", "localhost:3002", &hub_key).is_err());
    }
}
