//! The Linearized Matrix room version (`org.matrix.i-d.ralston-mimi-linearized-matrix.02`):
//! redaction, the two-layer hashes and the two-layer signatures.
//!
//! A participant server sends an *LPDU* (no `prev_events`, `auth_events` or PDU hash) signed by
//! itself; the hub completes it into a PDU and signs that. Both the participant's LPDU hash and
//! signature must survive byte-for-byte inside the hub's PDU, which is why these functions are
//! written here on ruma's canonical JSON instead of going through ruma's `verify_event`
//! (whose redaction and content hash cannot keep `hub_server` or `hashes.lpdu`).
//!
//! Every rule here is checked against events produced by the reference implementation
//! (`testdata/linearized-matrix-vectors.json`).
//!
//! * this module: redaction, the LPDU/PDU/reference hashes, signing bytes, verification;
//! * [`build`]: making events — a hub-local event, a participant's signed LPDU, and the hub
//!   completing an LPDU into a PDU;
//! * [`auth`]: the auth-event selection and the authorization rules of the LM room version.

pub mod auth;
pub mod build;

use std::collections::BTreeSet;

use ruma::{CanonicalJsonObject, CanonicalJsonValue};
use sha2::{Digest, Sha256};

use crate::canonical;
use crate::keys::{b64_encode, b64_encode_url};
use crate::signatures::{HashCheck, KnownKey, SignatureError, verify_server_signature};

/// Top-level keys kept by redaction (note: `hub_server`, and no `depth`).
const KEPT_KEYS: &[&str] = &[
    "type",
    "room_id",
    "sender",
    "state_key",
    "content",
    "origin_server_ts",
    "hashes",
    "signatures",
    "prev_events",
    "auth_events",
    "hub_server",
];

fn kept_content_keys(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "m.room.member" => &["membership"],
        "m.room.join_rules" => &["join_rule", "allow"],
        "m.room.power_levels" => &[
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
            "invite",
        ],
        "m.room.history_visibility" => &["history_visibility"],
        _ => return None,
    })
}

fn str_field<'a>(obj: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match obj.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// The server part of a user ID (everything after the first `:`).
pub fn domain_of(id: &str) -> Option<&str> {
    id.split_once(':').map(|(_, d)| d)
}

/// Redacts an event (PDU or LPDU) by the Linearized Matrix rules.
pub fn redact(event: &CanonicalJsonObject) -> CanonicalJsonObject {
    let kind = str_field(event, "type").unwrap_or_default().to_owned();
    let mut out = CanonicalJsonObject::new();
    for (k, v) in event {
        if KEPT_KEYS.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    if let Some(CanonicalJsonValue::Object(content)) = out.get_mut("content") {
        if kind == "m.room.create" {
            // keep everything
        } else {
            let keep = kept_content_keys(&kind).unwrap_or(&[]);
            content.retain(|k, _| keep.contains(&k.as_str()));
        }
    }
    out
}

fn sha256_b64(obj: &CanonicalJsonObject) -> [u8; 32] {
    Sha256::digest(canonical::write_object(obj).as_bytes()).into()
}

/// The LPDU content hash (`hashes.lpdu.sha256`): the LPDU without `signatures`, `hashes` and
/// `unsigned`.
pub fn lpdu_hash(lpdu: &CanonicalJsonObject) -> String {
    let mut obj = lpdu.clone();
    obj.remove("signatures");
    obj.remove("hashes");
    obj.remove("unsigned");
    // A PDU handed in by mistake: the LPDU never had these.
    obj.remove("auth_events");
    obj.remove("prev_events");
    b64_encode(&sha256_b64(&obj))
}

fn lpdu_hash_field(event: &CanonicalJsonObject) -> Option<CanonicalJsonValue> {
    match event.get("hashes") {
        Some(CanonicalJsonValue::Object(h)) => h.get("lpdu").cloned(),
        _ => None,
    }
}

/// The PDU content hash (`hashes.sha256`): without `signatures`/`unsigned`, with `hashes`
/// replaced by `{"lpdu": ...}` when the event came from an LPDU.
pub fn pdu_hash(pdu: &CanonicalJsonObject) -> String {
    let mut obj = pdu.clone();
    obj.remove("signatures");
    obj.remove("unsigned");
    match lpdu_hash_field(pdu) {
        Some(lpdu) => {
            obj.insert(
                "hashes".into(),
                CanonicalJsonValue::Object([("lpdu".to_owned(), lpdu)].into()),
            );
        }
        None => {
            obj.remove("hashes");
        }
    }
    b64_encode(&sha256_b64(&obj))
}

/// The reference hash (event ID without `$`): redact, drop `signatures`, hash, URL-safe base64.
pub fn reference_hash(event: &CanonicalJsonObject) -> Result<String, String> {
    let mut obj = redact(event);
    obj.remove("signatures");
    obj.remove("unsigned");
    obj.remove("event_id");
    Ok(b64_encode_url(&sha256_b64(&obj)))
}

/// The event ID of an event (PDU or LPDU): `$` + its reference hash.
pub fn event_id(event: &CanonicalJsonObject) -> String {
    let mut obj = redact(event);
    obj.remove("signatures");
    obj.remove("unsigned");
    obj.remove("event_id");
    format!("${}", b64_encode_url(&sha256_b64(&obj)))
}

/// The LPDU event ID of a PDU made from an LPDU (the key of `failed_pdus`, the `txnId` of
/// `send_join`); `None` for hub-local events.
pub fn lpdu_event_id(pdu: &CanonicalJsonObject) -> Option<String> {
    lpdu_of(pdu).map(|l| event_id(&l))
}

/// Reconstructs the LPDU a PDU was made from: drop `auth_events`/`prev_events`, keep only
/// `hashes.lpdu`. `None` for hub-local events (no `hub_server`).
pub fn lpdu_of(pdu: &CanonicalJsonObject) -> Option<CanonicalJsonObject> {
    str_field(pdu, "hub_server")?;
    let mut obj = pdu.clone();
    obj.remove("auth_events");
    obj.remove("prev_events");
    obj.remove("unsigned");
    match lpdu_hash_field(pdu) {
        Some(lpdu) => {
            obj.insert(
                "hashes".into(),
                CanonicalJsonValue::Object([("lpdu".to_owned(), lpdu)].into()),
            );
        }
        None => {
            obj.remove("hashes");
        }
    }
    Some(obj)
}

/// The bytes signed for an event: redacted, without `signatures`/`unsigned`.
pub fn signing_bytes(event: &CanonicalJsonObject) -> String {
    let mut obj = redact(event);
    obj.remove("signatures");
    obj.remove("unsigned");
    canonical::write_object(&obj)
}

/// Servers whose signatures an LM event needs: the sender's server, and the hub if
/// `hub_server` is present.
pub fn required_servers(event: &CanonicalJsonObject) -> Result<BTreeSet<String>, String> {
    let sender = str_field(event, "sender").ok_or("missing sender")?;
    let domain = domain_of(sender).ok_or("sender has no server name")?;
    let mut out = BTreeSet::from([domain.to_owned()]);
    if let Some(hub) = str_field(event, "hub_server") {
        out.insert(hub.to_owned());
    }
    Ok(out)
}

fn ts(event: &CanonicalJsonObject) -> u64 {
    match event.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
        _ => 0,
    }
}

fn claimed(event: &CanonicalJsonObject, path: &[&str]) -> Option<String> {
    let mut cur = event;
    for (i, p) in path.iter().enumerate() {
        match cur.get(*p) {
            Some(CanonicalJsonValue::Object(o)) if i + 1 < path.len() => cur = o,
            Some(CanonicalJsonValue::String(s)) if i + 1 == path.len() => {
                return Some(s.trim_end_matches('=').to_owned());
            }
            _ => return None,
        }
    }
    None
}

/// Verifies both layers of a received LM PDU: the hub's signature over the PDU and the
/// sender's server's signature over the reconstructed LPDU (or, for hub-local events, the
/// sender's signature over the PDU); then the LPDU hash and the PDU hash.
pub fn verify_pdu(
    pdu: &CanonicalJsonObject,
    lookup: &impl Fn(&str, &str) -> Option<KnownKey>,
) -> Result<HashCheck, SignatureError> {
    let sender = str_field(pdu, "sender")
        .ok_or_else(|| SignatureError::Malformed("missing sender".into()))?;
    let sender_server = domain_of(sender)
        .ok_or_else(|| SignatureError::Malformed("sender has no server".into()))?;
    let t = ts(pdu);
    let pdu_bytes = signing_bytes(pdu);
    match (str_field(pdu, "hub_server"), lpdu_of(pdu)) {
        (Some(hub), Some(lpdu)) => {
            verify_server_signature(pdu, hub, pdu_bytes.as_bytes(), t, true, lookup)?;
            let lpdu_bytes = signing_bytes(&lpdu);
            verify_server_signature(pdu, sender_server, lpdu_bytes.as_bytes(), t, true, lookup)?;
            if claimed(pdu, &["hashes", "lpdu", "sha256"]) != Some(lpdu_hash(&lpdu)) {
                return Ok(HashCheck::ContentMismatch);
            }
        }
        _ => {
            verify_server_signature(pdu, sender_server, pdu_bytes.as_bytes(), t, true, lookup)?;
        }
    }
    if claimed(pdu, &["hashes", "sha256"]) != Some(pdu_hash(pdu)) {
        return Ok(HashCheck::ContentMismatch);
    }
    Ok(HashCheck::Valid)
}

/// Verifies an LPDU as the hub receives it: the participant's signature and the LPDU hash.
pub fn verify_lpdu(
    lpdu: &CanonicalJsonObject,
    lookup: &impl Fn(&str, &str) -> Option<KnownKey>,
) -> Result<HashCheck, SignatureError> {
    let sender = str_field(lpdu, "sender")
        .ok_or_else(|| SignatureError::Malformed("missing sender".into()))?;
    let sender_server = domain_of(sender)
        .ok_or_else(|| SignatureError::Malformed("sender has no server".into()))?;
    let bytes = signing_bytes(lpdu);
    verify_server_signature(
        lpdu,
        sender_server,
        bytes.as_bytes(),
        ts(lpdu),
        true,
        lookup,
    )?;
    if claimed(lpdu, &["hashes", "lpdu", "sha256"]) != Some(lpdu_hash(lpdu)) {
        return Ok(HashCheck::ContentMismatch);
    }
    Ok(HashCheck::Valid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{ServerSigningKey, b64_decode, parse_verify_key};

    const VECTORS: &str = include_str!("../../testdata/linearized-matrix-vectors.json");

    fn vectors() -> serde_json::Value {
        serde_json::from_str(VECTORS).unwrap()
    }

    fn obj(v: &serde_json::Value) -> CanonicalJsonObject {
        let mut o = canonical::value_to_object(v.clone()).unwrap();
        o.remove("event_id");
        o
    }

    fn lookup(v: &serde_json::Value) -> impl Fn(&str, &str) -> Option<KnownKey> {
        let servers = v["servers"].as_object().unwrap().clone();
        move |server, key_id| {
            let s = servers.get(server)?;
            (s["key_id"] == key_id).then(|| KnownKey {
                key: parse_verify_key(s["public_key_unpadded_b64"].as_str().unwrap()).unwrap(),
                valid_until_ts: u64::MAX,
            })
        }
    }

    #[test]
    fn timeline_ids_hashes_and_signatures_match_the_reference() {
        let v = vectors();
        let lookup = lookup(&v);
        let timeline = v["hub_timeline_oldest_first"].as_array().unwrap();
        assert!(timeline.len() >= 5);
        for raw in timeline {
            let pdu = obj(raw);
            let want_id = raw["event_id"].as_str().unwrap();
            assert_eq!(format!("${}", reference_hash(&pdu).unwrap()), want_id);
            assert_eq!(
                claimed(&pdu, &["hashes", "sha256"]).unwrap(),
                pdu_hash(&pdu),
                "{want_id}"
            );
            if let Some(lpdu) = lpdu_of(&pdu) {
                assert_eq!(
                    claimed(&pdu, &["hashes", "lpdu", "sha256"]).unwrap(),
                    lpdu_hash(&lpdu)
                );
            }
            assert_eq!(verify_pdu(&pdu, &lookup), Ok(HashCheck::Valid), "{want_id}");
        }
    }

    #[test]
    fn signatures_are_reproduced_from_the_seeds() {
        let v = vectors();
        for raw in v["hub_timeline_oldest_first"].as_array().unwrap() {
            let pdu = obj(raw);
            let sigs = raw["signatures"].as_object().unwrap();
            for (server, keys) in sigs {
                let seed = b64_decode(v["servers"][server]["seed_unpadded_b64"].as_str().unwrap())
                    .unwrap();
                let key = ServerSigningKey::from_seed(seed.try_into().unwrap(), "1").unwrap();
                let is_hub =
                    raw.get("hub_server").and_then(|h| h.as_str()) == Some(server.as_str());
                let bytes = if raw.get("hub_server").is_some() && !is_hub {
                    signing_bytes(&lpdu_of(&pdu).unwrap())
                } else {
                    signing_bytes(&pdu)
                };
                assert_eq!(
                    key.sign_b64(bytes.as_bytes()),
                    keys["ed25519:1"].as_str().unwrap(),
                    "{server} on {}",
                    raw["event_id"]
                );
            }
        }
    }

    #[test]
    fn lpdus_match_the_reference() {
        let v = vectors();
        let lookup = lookup(&v);
        for name in ["lpdu_join_sent_to_send_join", "lpdu_message_sent_to_send"] {
            let case = &v[name];
            let lpdu = obj(&case["lpdu"]);
            assert_eq!(
                lpdu_hash(&lpdu),
                case["lpdu_content_hash"].as_str().unwrap()
            );
            assert_eq!(
                format!("${}", reference_hash(&lpdu).unwrap()),
                case["lpdu_event_id"].as_str().unwrap()
            );
            assert_eq!(verify_lpdu(&lpdu, &lookup), Ok(HashCheck::Valid));
        }
    }

    #[test]
    fn forged_lpdus_fail() {
        let v = vectors();
        let lookup = lookup(&v);
        let lpdu = obj(&v["lpdu_message_sent_to_send"]["lpdu"]);
        // Changed body: signature still covers only the redacted form, so the hash catches it.
        let mut changed = lpdu.clone();
        changed.insert(
            "content".into(),
            CanonicalJsonValue::Object(
                [("body".to_owned(), CanonicalJsonValue::String("evil".into()))].into(),
            ),
        );
        assert_eq!(
            verify_lpdu(&changed, &lookup),
            Ok(HashCheck::ContentMismatch)
        );
        // Claimed sender on another server: that server's signature is missing.
        let mut forged = lpdu.clone();
        forged.insert(
            "sender".into(),
            CanonicalJsonValue::String("@mallory:localhost:3002".into()),
        );
        assert!(verify_lpdu(&forged, &lookup).is_err());
    }

    #[test]
    fn redaction_keeps_hub_server_and_drops_depth() {
        let mut o = CanonicalJsonObject::new();
        o.insert(
            "type".into(),
            CanonicalJsonValue::String("m.room.join_rules".into()),
        );
        o.insert("hub_server".into(), CanonicalJsonValue::String("h".into()));
        o.insert("depth".into(), CanonicalJsonValue::Integer(3u32.into()));
        o.insert(
            "content".into(),
            CanonicalJsonValue::Object(
                [
                    (
                        "join_rule".to_owned(),
                        CanonicalJsonValue::String("public".into()),
                    ),
                    ("allow".to_owned(), CanonicalJsonValue::Array(vec![])),
                    ("other".to_owned(), CanonicalJsonValue::Bool(true)),
                ]
                .into(),
            ),
        );
        let r = redact(&o);
        assert!(r.contains_key("hub_server"));
        assert!(!r.contains_key("depth"));
        let CanonicalJsonValue::Object(c) = &r["content"] else {
            panic!()
        };
        assert_eq!(c.len(), 2);
    }
}
