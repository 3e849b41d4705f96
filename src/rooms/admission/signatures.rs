//! Step 2 of admission: the signatures. Every server the event needs (the sender's; for a
//! restricted join also the authorising server's) must have signed its redacted form with a
//! key we know, valid at the event's `origin_server_ts` (room version 5 on).
//!
//! Split in two so that no network wait happens on a verifying core: [`wanted_keys`] says
//! which keys a batch of PDUs needs (the caller fetches them, async and cached), then
//! [`verify`] is pure CPU over a snapshot of those keys. The ed25519 check is
//! `verify_strict`, one signature at a time: never a batch verification, which would
//! accept forgeries single verification refuses.

use std::collections::{BTreeSet, HashMap};

use ruma::CanonicalJsonObject;
use weft_protocol::Received;
use weft_protocol::signatures::{self, HashCheck, KnownKey, SignatureError};

/// Keys known at verification time: `(server, key ID) → key`.
pub type KeySnapshot = HashMap<(String, String), KnownKey>;

fn key_ids_of(obj: &CanonicalJsonObject, server: &str) -> Vec<String> {
    match obj.get("signatures") {
        Some(ruma::CanonicalJsonValue::Object(s)) => match s.get(server) {
            Some(ruma::CanonicalJsonValue::Object(k)) => k.keys().cloned().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// What a batch needs: per server, the key IDs its signatures name and the newest
/// `origin_server_ts` they must be valid at.
pub type Wanted = HashMap<String, (BTreeSet<String>, u64)>;

/// The keys the PDUs need, and per PDU the servers that must sign it (or why that cannot be
/// known: a malformed event).
pub fn wanted_keys<'a>(
    pdus: impl IntoIterator<Item = &'a Received>,
) -> (Wanted, Vec<Result<BTreeSet<String>, String>>) {
    let mut wanted: Wanted = HashMap::new();
    let mut required = Vec::new();
    for received in pdus {
        let json = received.json();
        let pdu = received.pdu();
        match signatures::required_servers(json, received.version()) {
            Ok(servers) => {
                for s in &servers {
                    let entry = wanted
                        .entry(s.clone())
                        .or_insert_with(|| (BTreeSet::new(), 0));
                    entry.0.extend(key_ids_of(json, s));
                    entry.1 = entry.1.max(pdu.origin_server_ts());
                }
                required.push(Ok(servers));
            }
            Err(e) => required.push(Err(e.to_string())),
        }
    }
    (wanted, required)
}

/// Verifies the signatures of every required server. `Ok` carries what the same pass found
/// about the content hash, for step 3 ([`super::content_hash`]) to act on.
/// The JSON object and the signed bytes come from the parse ([`Received`]): nothing is
/// parsed or serialized again here.
pub fn verify(received: &Received, keys: &KeySnapshot) -> Result<HashCheck, String> {
    let lookup = |s: &str, k: &str| keys.get(&(s.to_owned(), k.to_owned())).cloned();
    received
        .verify(lookup)
        .map_err(|e| format!("signature check failed: {e}"))
}

/// [`verify`] with the keys already in memory (`lookup`), for the common case where every
/// key a PDU names is known: `None` when some server's signature names no key `lookup`
/// knows (or none valid at the event's time), so the caller fetches the keys
/// ([`wanted_keys`]) and runs [`verify`]. Every other verdict is the one [`verify`] would
/// give after that fetch: a fetch adds keys, so it can only change "no known key".
pub fn verify_cached(
    received: &Received,
    lookup: impl Fn(&str, &str) -> Option<KnownKey>,
) -> Option<Result<HashCheck, String>> {
    // The requirement's own error, worded as the fetch-first route words it.
    if let Err(e) = signatures::required_servers(received.json(), received.version()) {
        return Some(Err(e.to_string()));
    }
    match received.verify(lookup) {
        Err(SignatureError::UnknownKey(_)) => None,
        r => Some(r.map_err(|e| format!("signature check failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
    use serde_json::json;
    use weft_protocol::builder::{EventDraft, Position, build_pdu};
    use weft_protocol::keys::ServerSigningKey;
    use weft_protocol::{Pdu, RoomVersion};

    fn key() -> ServerSigningKey {
        ServerSigningKey::from_seed([9u8; 32], "k").expect("test key")
    }

    /// A v11 message from `a.example`, signed by its key, at `origin_server_ts` 1,000.
    fn message(body: &str) -> serde_json::Value {
        let room = OwnedRoomId::try_from("!r:a.example").expect("room");
        let sender = OwnedUserId::try_from("@u:a.example").expect("user");
        let mut draft = EventDraft::new("m.room.message", sender, json!({"body": body}));
        draft.origin_server_ts = 1_000;
        let pos = Position {
            version: RoomVersion::V11,
            room_id: Some(&room),
            prev_events: vec![OwnedEventId::try_from("$p:a.example").expect("id")],
            auth_events: vec![OwnedEventId::try_from("$a:a.example").expect("id")],
            depth: 2,
        };
        let pdu = build_pdu(&draft, &pos, "a.example", &key()).expect("build");
        weft_protocol::canonical::to_value(&pdu.into_json())
    }

    fn received(raw: serde_json::Value) -> Received {
        Pdu::parse_received(raw, RoomVersion::V11).expect("parse")
    }

    /// `a.example`'s key, valid until `until`, under the ID `id`.
    fn ring(until: u64, id: String) -> impl Fn(&str, &str) -> Option<KnownKey> {
        move |s: &str, k: &str| {
            (s == "a.example" && k == id).then(|| KnownKey {
                key: key().verifying_key(),
                valid_until_ts: until,
            })
        }
    }

    #[test]
    fn verify_cached_answers_only_what_a_key_fetch_cannot_change() {
        let good = message("hi");
        let mut forged = good.clone();
        forged["signatures"]["a.example"][key().key_id()] = json!(
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        );
        let mut unsigned = good.clone();
        unsigned["signatures"] = json!({});
        let mut tampered = good.clone();
        tampered["content"]["body"] = json!("changed");
        let id = key().key_id().to_owned();
        // (what, PDU, key valid until, key ID in the ring, expected): `None` = fetch the
        // keys first; `Some(Some(check))` = signatures good, with that content-hash verdict;
        // `Some(None)` = refused, in the fetch-first route's words.
        type Case = (
            &'static str,
            serde_json::Value,
            u64,
            String,
            Option<Option<HashCheck>>,
        );
        let cases: Vec<Case> = vec![
            (
                "known key",
                good.clone(),
                u64::MAX,
                id.clone(),
                Some(Some(HashCheck::Valid)),
            ),
            (
                "no key in memory",
                good.clone(),
                u64::MAX,
                "ed25519:other".into(),
                None,
            ),
            (
                "key expired before the event",
                good.clone(),
                999,
                id.clone(),
                None,
            ),
            (
                "forged signature, known key",
                forged,
                u64::MAX,
                id.clone(),
                Some(None),
            ),
            (
                "no signature at all",
                unsigned,
                u64::MAX,
                id.clone(),
                Some(None),
            ),
            (
                "content changed after signing (outside the signed redacted form)",
                tampered,
                u64::MAX,
                id.clone(),
                Some(Some(HashCheck::ContentMismatch)),
            ),
        ];
        for (what, raw, until, key_id, want) in cases {
            let r = received(raw);
            let got = verify_cached(&r, ring(until, key_id.clone()));
            match (want, got) {
                (None, None) => {}
                (Some(Some(h)), Some(Ok(g))) => assert_eq!(g, h, "{what}"),
                (Some(None), Some(Err(e))) => {
                    // The same words as the fetch-first route's verdict.
                    assert_eq!(
                        Err(e),
                        verify(
                            &r,
                            &KeySnapshot::from([(
                                ("a.example".to_owned(), key_id),
                                KnownKey {
                                    key: key().verifying_key(),
                                    valid_until_ts: until,
                                },
                            )])
                        ),
                        "{what}"
                    );
                }
                (w, g) => panic!("{what}: expected {w:?}, got {g:?}"),
            }
        }
    }
}
