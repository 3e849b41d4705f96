//! Checking the signatures and content hash of a received PDU (steps 2 and 3 of the spec's
//! checks on receipt of a PDU).
//!
//! The canonical forms come from ruma (redaction, canonical JSON, content hash). The
//! ed25519 check itself is `verify_strict`, which rejects exactly what libsodium (and so
//! Synapse) rejects. Keys are supplied by the caller, who fetched them beforehand: this module
//! never does I/O. Key validity (room version 5+) is enforced: a key only verifies events whose
//! `origin_server_ts` is not after the key's `valid_until_ts`.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
use ruma::{CanonicalJsonObject, CanonicalJsonValue};

use crate::keys;
use crate::room_version::RoomVersion;

/// A public key with the time until which it may be used.
#[derive(Clone, Debug)]
pub struct KnownKey {
    pub key: VerifyingKey,
    /// Milliseconds since the epoch; `u64::MAX` when unbounded.
    pub valid_until_ts: u64,
}

/// Why a PDU's signatures do not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("event is malformed: {0}")]
    Malformed(String),
    #[error("no signature from {0}")]
    Missing(String),
    #[error("no known, valid key of {0} signed this event")]
    UnknownKey(String),
    #[error("bad signature from {server} with {key_id}")]
    Invalid { server: String, key_id: String },
}

/// The outcome of a successful signature check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashCheck {
    /// Signatures and content hash are good.
    Valid,
    /// Signatures are good but the content hash is wrong: the event must be redacted before
    /// it is used any further.
    ContentMismatch,
}

/// The field of a restricted join naming the user whose server authorised it.
const AUTHORISING_USER: &str = "join_authorised_via_users_server";

/// Whether the event is an `m.room.member` event with membership `join`.
fn is_join(json: &CanonicalJsonObject) -> bool {
    let is_member = matches!(
        json.get("type"),
        Some(CanonicalJsonValue::String(t)) if t == "m.room.member"
    );
    let joins = match json.get("content") {
        Some(CanonicalJsonValue::Object(c)) => matches!(
            c.get("membership"),
            Some(CanonicalJsonValue::String(m)) if m == "join"
        ),
        _ => false,
    };
    is_member && joins
}

/// The servers whose signatures a PDU needs (the sender's server; for restricted joins also
/// the authorising server).
///
/// The authorising server signs only joins: ruma adds the server of
/// `content.join_authorised_via_users_server` for any event that has the field, so for any other
/// event the field is hidden from it. Otherwise an invite, a leave or even a message carrying the
/// field would be refused here while Synapse (and the spec) accept it.
pub fn required_servers(
    json: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<BTreeSet<String>, SignatureError> {
    if version.is_linearized() {
        return crate::lm::required_servers(json).map_err(SignatureError::Malformed);
    }
    let has_authoriser = matches!(
        json.get("content"),
        Some(CanonicalJsonValue::Object(c)) if c.contains_key(AUTHORISING_USER)
    );
    let without_authoriser;
    let json = if has_authoriser && !is_join(json) {
        let mut copy = json.clone();
        if let Some(CanonicalJsonValue::Object(c)) = copy.get_mut("content") {
            c.remove(AUTHORISING_USER);
        }
        without_authoriser = copy;
        &without_authoriser
    } else {
        json
    };
    ruma::signatures::required_server_signatures_to_verify_event(json, &version.rules().signatures)
        .map(|set| set.into_iter().map(|s| s.to_string()).collect())
        .map_err(|e| SignatureError::Malformed(e.to_string()))
}

/// The bytes a server signs for an event: the redacted event without `signatures`/`unsigned`.
/// Written in one pass over the event by ruma's redacting serializer (no copy of the event is
/// redacted); the same bytes are what the event's reference hash hashes.
pub fn signing_bytes(
    json: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<String, SignatureError> {
    if version.is_linearized() {
        return Ok(crate::lm::signing_bytes(json));
    }
    ruma::canonical_json::RedactingSerializer::new()
        .rules(&version.rules().redaction)
        .custom_redacted_root_fields(SIGNED_ROOT_FIELDS_LEFT_OUT)
        .serialize(json)
        .map_err(|e| SignatureError::Malformed(e.to_string()))
}

/// Top-level fields that are not part of what a server signs.
const SIGNED_ROOT_FIELDS_LEFT_OUT: &[&str] = &["signatures", "unsigned"];

fn origin_ts(json: &CanonicalJsonObject) -> u64 {
    match json.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(i)) => u64::try_from(i64::from(*i)).unwrap_or(0),
        _ => 0,
    }
}

/// Verifies that `server` signed `bytes` in `json.signatures` with at least one key that
/// `lookup` knows and that was valid at `ts` (when `enforce_validity`).
pub fn verify_server_signature(
    json: &CanonicalJsonObject,
    server: &str,
    bytes: &[u8],
    ts: u64,
    enforce_validity: bool,
    lookup: &impl Fn(&str, &str) -> Option<KnownKey>,
) -> Result<(), SignatureError> {
    let sigs = match json.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s,
        _ => return Err(SignatureError::Missing(server.to_owned())),
    };
    let server_sigs = match sigs.get(server) {
        Some(CanonicalJsonValue::Object(s)) => s,
        _ => return Err(SignatureError::Missing(server.to_owned())),
    };
    let mut last_err = SignatureError::UnknownKey(server.to_owned());
    for (key_id, sig) in server_sigs {
        if !key_id.starts_with("ed25519:") {
            continue;
        }
        let CanonicalJsonValue::String(sig) = sig else {
            continue;
        };
        let Some(known) = lookup(server, key_id) else {
            continue;
        };
        if enforce_validity && known.valid_until_ts < ts {
            continue;
        }
        if keys::verify_b64(&known.key, bytes, sig) {
            return Ok(());
        }
        last_err = SignatureError::Invalid {
            server: server.to_owned(),
            key_id: key_id.clone(),
        };
    }
    Err(last_err)
}

/// The content hash the event should carry (`hashes.sha256`).
pub fn content_hash(json: &CanonicalJsonObject) -> Result<String, SignatureError> {
    ruma::signatures::content_hash(json)
        .map(|h| h.encode())
        .map_err(|e| SignatureError::Malformed(e.to_string()))
}

/// Verifies the signatures of every required server and the content hash of a PDU.
pub fn verify_pdu(
    json: &CanonicalJsonObject,
    version: RoomVersion,
    lookup: impl Fn(&str, &str) -> Option<KnownKey>,
) -> Result<HashCheck, SignatureError> {
    if version.is_linearized() {
        return crate::lm::verify_pdu(json, &lookup);
    }
    let bytes = signing_bytes(json, version)?;
    verify_pdu_with_bytes(json, version, &bytes, lookup)
}

/// [`verify_pdu`] with the signed bytes already written ([`signing_bytes`] of `json`).
pub fn verify_pdu_with_bytes(
    json: &CanonicalJsonObject,
    version: RoomVersion,
    bytes: &str,
    lookup: impl Fn(&str, &str) -> Option<KnownKey>,
) -> Result<HashCheck, SignatureError> {
    if version.is_linearized() {
        return crate::lm::verify_pdu(json, &lookup);
    }
    let servers = required_servers(json, version)?;
    let ts = origin_ts(json);
    let enforce = version.rules().enforce_key_validity;
    for server in &servers {
        verify_server_signature(json, server, bytes.as_bytes(), ts, enforce, &lookup)?;
    }
    let claimed = match json.get("hashes") {
        Some(CanonicalJsonValue::Object(h)) => match h.get("sha256") {
            Some(CanonicalJsonValue::String(s)) => s.trim_end_matches('=').to_owned(),
            _ => return Ok(HashCheck::ContentMismatch),
        },
        _ => return Ok(HashCheck::ContentMismatch),
    };
    if content_hash(json)? == claimed {
        Ok(HashCheck::Valid)
    } else {
        Ok(HashCheck::ContentMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{EventDraft, Position, build_pdu};
    use crate::keys::ServerSigningKey;
    use serde_json::json;

    fn lookup_for(
        key: &ServerSigningKey,
        server: &'static str,
    ) -> impl Fn(&str, &str) -> Option<KnownKey> {
        let public = key.verifying_key();
        let key_id = key.key_id().to_owned();
        move |s, k| {
            (s == server && k == key_id).then_some(KnownKey {
                key: public,
                valid_until_ts: u64::MAX,
            })
        }
    }

    fn sample(version: RoomVersion) -> (ServerSigningKey, CanonicalJsonObject) {
        let key = ServerSigningKey::from_seed([9u8; 32], "k1").unwrap();
        let room = ruma::OwnedRoomId::try_from("!r:a.example").unwrap();
        let sender = ruma::OwnedUserId::try_from("@u:a.example").unwrap();
        let mut draft = EventDraft::new(
            "m.room.message",
            sender,
            json!({"body": "hi", "msgtype": "m.text"}),
        );
        draft.origin_server_ts = 1000;
        let pos = Position {
            version,
            room_id: Some(&room),
            prev_events: vec![ruma::OwnedEventId::try_from("$prev").unwrap()],
            auth_events: vec![],
            depth: 2,
        };
        let pdu = build_pdu(&draft, &pos, "a.example", &key).unwrap();
        (key, pdu.into_json())
    }

    #[test]
    fn good_event_verifies() {
        for v in [RoomVersion::V10, RoomVersion::V11, RoomVersion::V12] {
            let (key, json) = sample(v);
            assert_eq!(
                verify_pdu(&json, v, lookup_for(&key, "a.example")),
                Ok(HashCheck::Valid)
            );
        }
    }

    #[test]
    fn tampered_content_is_a_hash_mismatch_not_a_signature_failure() {
        let (key, mut json) = sample(RoomVersion::V11);
        json.insert(
            "content".into(),
            CanonicalJsonValue::Object(
                [("body".to_owned(), CanonicalJsonValue::String("evil".into()))].into(),
            ),
        );
        assert_eq!(
            verify_pdu(&json, RoomVersion::V11, lookup_for(&key, "a.example")),
            Ok(HashCheck::ContentMismatch)
        );
    }

    #[test]
    fn tampered_signed_field_fails() {
        let (key, mut json) = sample(RoomVersion::V11);
        json.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::from(5u32)),
        );
        assert!(matches!(
            verify_pdu(&json, RoomVersion::V11, lookup_for(&key, "a.example")),
            Err(SignatureError::Invalid { .. })
        ));
    }

    #[test]
    fn unknown_key_and_missing_signature() {
        let (_key, json) = sample(RoomVersion::V11);
        let other = ServerSigningKey::from_seed([8u8; 32], "k1").unwrap();
        assert!(matches!(
            verify_pdu(&json, RoomVersion::V11, lookup_for(&other, "a.example")),
            Err(SignatureError::Invalid { .. })
        ));
        assert!(matches!(
            verify_pdu(&json, RoomVersion::V11, |_, _| None),
            Err(SignatureError::UnknownKey(_))
        ));
        let mut unsigned = json.clone();
        unsigned.remove("signatures");
        assert!(matches!(
            verify_pdu(&unsigned, RoomVersion::V11, |_, _| None),
            Err(SignatureError::Missing(_))
        ));
    }

    #[test]
    fn expired_key_does_not_verify_later_events() {
        let (key, json) = sample(RoomVersion::V11);
        let public = key.verifying_key();
        let lookup = move |_: &str, _: &str| {
            Some(KnownKey {
                key: public,
                valid_until_ts: 999,
            })
        };
        assert!(verify_pdu(&json, RoomVersion::V11, lookup).is_err());
    }

    // ---- Tables over every DAG room version, with events from the builder. ----

    use crate::testing::{ALICE, DAG_VERSIONS, member_with, message, server_key, state_draft};
    use ruma::OwnedEventId;

    /// Builds and signs `draft` as its sender's server would, in a room of `version`.
    fn signed(version: RoomVersion, draft: &EventDraft) -> CanonicalJsonObject {
        let room = ruma::OwnedRoomId::try_from("!r:a.test").unwrap();
        let mut draft = draft.clone();
        draft.origin_server_ts = 1_000;
        let pos = Position {
            version,
            room_id: Some(&room),
            prev_events: vec![OwnedEventId::try_from("$prev").unwrap()],
            auth_events: vec![OwnedEventId::try_from("$auth").unwrap()],
            depth: 7,
        };
        let server = draft.sender.server_name().to_string();
        build_pdu(&draft, &pos, &server, &server_key(&server))
            .unwrap()
            .into_json()
    }

    /// Knows the fixed test key (`ed25519:1`) of each of `servers`, valid until `until`.
    fn keys_of(servers: &[&str], until: u64) -> impl Fn(&str, &str) -> Option<KnownKey> {
        let known: Vec<(String, VerifyingKey)> = servers
            .iter()
            .map(|s| (s.to_string(), server_key(s).verifying_key()))
            .collect();
        move |server, key_id| {
            known
                .iter()
                .find(|(s, _)| s == server && key_id == "ed25519:1")
                .map(|(_, key)| KnownKey {
                    key: *key,
                    valid_until_ts: until,
                })
        }
    }

    fn set(json: &mut CanonicalJsonObject, key: &str, value: serde_json::Value) {
        json.insert(key.into(), CanonicalJsonValue::try_from(value).unwrap());
    }

    fn object_mut<'a>(json: &'a mut CanonicalJsonObject, key: &str) -> &'a mut CanonicalJsonObject {
        match json.get_mut(key) {
            Some(CanonicalJsonValue::Object(o)) => o,
            _ => panic!("no object {key}"),
        }
    }

    #[derive(Debug, PartialEq)]
    enum Want {
        Valid,
        Mismatch,
        Invalid,
        UnknownKey,
        Missing(&'static str),
    }

    fn outcome(got: &Result<HashCheck, SignatureError>) -> Want {
        match got {
            Ok(HashCheck::Valid) => Want::Valid,
            Ok(HashCheck::ContentMismatch) => Want::Mismatch,
            Err(SignatureError::Invalid { .. }) => Want::Invalid,
            Err(SignatureError::UnknownKey(_)) => Want::UnknownKey,
            Err(SignatureError::Missing(s)) if s == "a.test" => Want::Missing("a.test"),
            Err(SignatureError::Missing(s)) if s == "b.test" => Want::Missing("b.test"),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }

    #[test]
    fn tampering_table() {
        type Tamper = fn(&mut CanonicalJsonObject);
        for v in DAG_VERSIONS {
            // `origin` is kept by redaction (so covered by the signature) only before v11.
            let origin_change = if v.redacts_in_content() {
                Want::Mismatch
            } else {
                Want::Invalid
            };
            let cases: Vec<(&str, Tamper, Want)> = vec![
                ("untouched", |_| {}, Want::Valid),
                (
                    "content changed",
                    |j| set(j, "content", json!({"msgtype": "m.text", "body": "evil"})),
                    Want::Mismatch,
                ),
                (
                    "content field removed",
                    |j| {
                        object_mut(j, "content").remove("body");
                    },
                    Want::Mismatch,
                ),
                (
                    "unknown top-level field added",
                    |j| set(j, "extra", json!(1)),
                    Want::Mismatch,
                ),
                (
                    "unsigned added",
                    |j| set(j, "unsigned", json!({"age": 5})),
                    Want::Valid,
                ),
                (
                    "origin_server_ts changed",
                    |j| set(j, "origin_server_ts", json!(1_001)),
                    Want::Invalid,
                ),
                (
                    "depth changed",
                    |j| set(j, "depth", json!(8)),
                    Want::Invalid,
                ),
                (
                    "prev_events changed",
                    |j| set(j, "prev_events", json!(["$other"])),
                    Want::Invalid,
                ),
                (
                    "auth_events changed",
                    |j| set(j, "auth_events", json!([])),
                    Want::Invalid,
                ),
                (
                    "room_id changed",
                    |j| set(j, "room_id", json!("!other:a.test")),
                    Want::Invalid,
                ),
                (
                    "state_key added",
                    |j| set(j, "state_key", json!("")),
                    Want::Invalid,
                ),
                (
                    "sender changed within the server",
                    |j| set(j, "sender", json!("@mallory:a.test")),
                    Want::Invalid,
                ),
                (
                    "sender moved to another server",
                    |j| set(j, "sender", json!("@mallory:b.test")),
                    Want::Missing("b.test"),
                ),
                (
                    "content hash replaced",
                    |j| {
                        let fake = content_hash(&CanonicalJsonObject::new()).unwrap();
                        set(j, "hashes", json!({"sha256": fake}));
                    },
                    Want::Invalid,
                ),
                (
                    "hashes removed",
                    |j| {
                        j.remove("hashes");
                    },
                    Want::Invalid,
                ),
                (
                    "signatures removed",
                    |j| {
                        j.remove("signatures");
                    },
                    Want::Missing("a.test"),
                ),
                (
                    "signature garbled",
                    |j| set(j, "signatures", json!({"a.test": {"ed25519:1": "AAAA"}})),
                    Want::Invalid,
                ),
                (
                    "signature not a string",
                    |j| set(j, "signatures", json!({"a.test": {"ed25519:1": 5}})),
                    Want::UnknownKey,
                ),
                (
                    "signature moved to an unknown key ID",
                    |j| {
                        let sigs = object_mut(object_mut(j, "signatures"), "a.test");
                        let sig = sigs.remove("ed25519:1").unwrap();
                        sigs.insert("ed25519:2".into(), sig);
                    },
                    Want::UnknownKey,
                ),
                (
                    "signature under another algorithm",
                    |j| {
                        let sigs = object_mut(object_mut(j, "signatures"), "a.test");
                        let sig = sigs.remove("ed25519:1").unwrap();
                        sigs.insert("curve25519:1".into(), sig);
                    },
                    Want::UnknownKey,
                ),
            ];
            for (name, tamper, want) in cases {
                let mut json = signed(v, &message(ALICE, "hi"));
                tamper(&mut json);
                let got = verify_pdu(&json, v, keys_of(&["a.test", "b.test"], u64::MAX));
                assert_eq!(outcome(&got), want, "v{v} {name}: {got:?}");
            }

            // A signed `origin` field (as older servers still send).
            let mut json = signed(v, &message(ALICE, "hi"));
            set(&mut json, "origin", json!("a.test"));
            json.remove("signatures");
            json.remove("hashes");
            ruma::signatures::hash_and_sign_event(
                "a.test",
                &server_key("a.test"),
                &mut json,
                &v.rules().redaction,
            )
            .unwrap();
            let lookup = keys_of(&["a.test"], u64::MAX);
            assert_eq!(outcome(&verify_pdu(&json, v, &lookup)), Want::Valid, "v{v}");
            set(&mut json, "origin", json!("b.test"));
            assert_eq!(
                outcome(&verify_pdu(&json, v, &lookup)),
                origin_change,
                "v{v} origin changed"
            );
        }
    }

    #[test]
    fn redacted_events_keep_valid_signatures() {
        // (draft, content hash still matches after redaction: per version v10, v11, v12)
        let member = |content: serde_json::Value| member_with(ALICE, ALICE, content);
        let cases: Vec<(&str, EventDraft, [bool; 3])> = vec![
            ("message", message(ALICE, "hi"), [false; 3]),
            (
                "bare join",
                member(json!({"membership": "join"})),
                [true; 3],
            ),
            (
                "join with a display name",
                member(json!({"membership": "join", "displayname": "A"})),
                [false; 3],
            ),
            (
                "join authorised via a user",
                member(json!({"membership": "join", "join_authorised_via_users_server": ALICE})),
                [true; 3],
            ),
            (
                "power levels with invite",
                state_draft(
                    "m.room.power_levels",
                    "",
                    ALICE,
                    json!({"users": {ALICE: 100}, "invite": 0}),
                ),
                [false, true, true],
            ),
            (
                "create with extra content",
                state_draft(
                    "m.room.create",
                    "",
                    ALICE,
                    json!({"creator": ALICE, "room_version": "10", "m.federate": true}),
                ),
                [false, true, true],
            ),
        ];
        for (name, draft, still_matches) in cases {
            for (i, v) in DAG_VERSIONS.into_iter().enumerate() {
                let json = signed(v, &draft);
                let redacted = crate::redaction::redact(&json, v).unwrap();
                let want = if still_matches[i] {
                    Want::Valid
                } else {
                    Want::Mismatch
                };
                let got = verify_pdu(&redacted, v, keys_of(&["a.test"], u64::MAX));
                assert_eq!(outcome(&got), want, "v{v} redacted {name}: {got:?}");
                // Redaction never changes the event ID.
                assert_eq!(
                    crate::pdu::compute_event_id(&json, v).unwrap(),
                    crate::pdu::compute_event_id(&redacted, v).unwrap(),
                    "v{v} {name}"
                );
            }
        }
    }

    #[test]
    fn key_validity_table() {
        // The event is at origin_server_ts 1000. Every DAG version enforces key validity.
        let cases: &[(u64, Want)] = &[
            (u64::MAX, Want::Valid),
            (1_000, Want::Valid),
            (999, Want::UnknownKey),
            (0, Want::UnknownKey),
        ];
        for v in DAG_VERSIONS {
            assert!(v.rules().enforce_key_validity, "v{v}");
            let json = signed(v, &message(ALICE, "hi"));
            for (until, want) in cases {
                let got = verify_pdu(&json, v, keys_of(&["a.test"], *until));
                assert_eq!(&outcome(&got), want, "v{v} valid until {until}");
            }
        }
    }

    #[test]
    fn several_keys_of_one_server() {
        let old = server_key("a.test");
        let new = ServerSigningKey::from_seed([42u8; 32], "2").unwrap();
        let wrong = ServerSigningKey::from_seed([43u8; 32], "1").unwrap();
        for v in DAG_VERSIONS {
            let mut json = signed(v, &message(ALICE, "hi"));
            crate::builder::add_signature(&mut json, v, "a.test", &new).unwrap();
            let id_before = crate::pdu::compute_event_id(&signed(v, &message(ALICE, "hi")), v);
            assert_eq!(
                crate::pdu::compute_event_id(&json, v),
                id_before,
                "v{v}: signatures are not part of the event ID"
            );
            // (key "1" as known and its valid until; key "2"'s valid until; outcome)
            type KeyOne<'a> = Option<(&'a ServerSigningKey, u64)>;
            let cases: Vec<(KeyOne, Option<u64>, Want)> = vec![
                (Some((&old, u64::MAX)), None, Want::Valid),
                (None, Some(u64::MAX), Want::Valid),
                (Some((&old, 0)), Some(u64::MAX), Want::Valid),
                (Some((&old, 0)), Some(0), Want::UnknownKey),
                (Some((&wrong, u64::MAX)), Some(u64::MAX), Want::Valid),
                (Some((&wrong, u64::MAX)), None, Want::Invalid),
                (None, None, Want::UnknownKey),
            ];
            for (k1, k2, want) in cases {
                let lookup = |server: &str, key_id: &str| -> Option<KnownKey> {
                    if server != "a.test" {
                        return None;
                    }
                    match key_id {
                        "ed25519:1" => k1.map(|(k, until)| KnownKey {
                            key: k.verifying_key(),
                            valid_until_ts: until,
                        }),
                        "ed25519:2" => k2.map(|until| KnownKey {
                            key: new.verifying_key(),
                            valid_until_ts: until,
                        }),
                        _ => None,
                    }
                };
                let got = verify_pdu(&json, v, lookup);
                assert_eq!(
                    outcome(&got),
                    want,
                    "v{v} k1 {:?} k2 {k2:?}",
                    k1.map(|(k, u)| (k.public_key_b64(), u))
                );
            }
        }
    }

    #[test]
    fn required_servers_table() {
        let join_via = |sender: &str, via: &str| {
            member_with(
                sender,
                sender,
                json!({"membership": "join", "join_authorised_via_users_server": via}),
            )
        };
        let mut msg_with_field = message("@ella:e.test", "hi");
        msg_with_field.content["join_authorised_via_users_server"] = json!(ALICE);
        let third_party = member_with(
            "@bob:b.test",
            "@ella:e.test",
            json!({
                "membership": "invite",
                "third_party_invite": {
                    "display_name": "e",
                    "signed": {"mxid": "@ella:e.test", "token": "t", "signatures": {}},
                },
            }),
        );
        let cases: Vec<(&str, EventDraft, &[&str])> = vec![
            ("message", message(ALICE, "hi"), &["a.test"]),
            (
                "restricted join authorised by another server's user",
                join_via("@ella:e.test", ALICE),
                &["a.test", "e.test"],
            ),
            (
                "restricted join authorised by a user of the joining server",
                join_via("@ella:e.test", "@other:e.test"),
                &["e.test"],
            ),
            (
                "invite carrying the authoriser field",
                member_with(
                    "@bob:b.test",
                    "@ella:e.test",
                    json!({"membership": "invite", "join_authorised_via_users_server": ALICE}),
                ),
                &["b.test"],
            ),
            (
                "leave carrying the authoriser field",
                member_with(
                    "@ella:e.test",
                    "@ella:e.test",
                    json!({"membership": "leave", "join_authorised_via_users_server": ALICE}),
                ),
                &["e.test"],
            ),
            (
                "message carrying the authoriser field",
                msg_with_field,
                &["e.test"],
            ),
            ("invite from a third-party invite", third_party, &[]),
        ];
        for v in DAG_VERSIONS {
            for (name, draft, want) in &cases {
                let json = signed(v, draft);
                let got = required_servers(&json, v).unwrap();
                let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
                assert_eq!(got, want, "v{v} {name}");
            }
        }
    }

    #[test]
    fn restricted_join_needs_the_authorising_server() {
        for v in DAG_VERSIONS {
            let draft = member_with(
                "@ella:e.test",
                "@ella:e.test",
                json!({"membership": "join", "join_authorised_via_users_server": ALICE}),
            );
            let mut json = signed(v, &draft);
            let lookup = keys_of(&["a.test", "e.test"], u64::MAX);
            assert_eq!(
                outcome(&verify_pdu(&json, v, &lookup)),
                Want::Missing("a.test"),
                "v{v}"
            );
            let id = crate::pdu::compute_event_id(&json, v).unwrap();
            crate::builder::add_signature(&mut json, v, "a.test", &server_key("a.test")).unwrap();
            assert_eq!(outcome(&verify_pdu(&json, v, &lookup)), Want::Valid, "v{v}");
            assert_eq!(crate::pdu::compute_event_id(&json, v).unwrap(), id, "v{v}");
            // Signed by a key the verifier does not have for that server.
            let only_sender = keys_of(&["e.test"], u64::MAX);
            assert_eq!(
                outcome(&verify_pdu(&json, v, &only_sender)),
                Want::UnknownKey,
                "v{v}"
            );
        }
    }

    #[test]
    fn event_id_covers_the_redacted_form_only() {
        type Change = fn(&mut CanonicalJsonObject);
        // (change, event ID changes)
        let cases: Vec<(&str, Change, bool)> = vec![
            (
                "unsigned added",
                |j| set(j, "unsigned", json!({"age": 1})),
                false,
            ),
            (
                "signature added",
                |j| {
                    object_mut(j, "signatures").insert(
                        "b.test".into(),
                        CanonicalJsonValue::Object(Default::default()),
                    );
                },
                false,
            ),
            (
                "message content changed (redacted away; the content hash catches it)",
                |j| set(j, "content", json!({"body": "other"})),
                false,
            ),
            ("depth changed", |j| set(j, "depth", json!(9)), true),
            (
                "content hash changed",
                |j| set(j, "hashes", json!({"sha256": "AAAA"})),
                true,
            ),
        ];
        for v in DAG_VERSIONS {
            let json = signed(v, &message(ALICE, "hi"));
            let id = crate::pdu::compute_event_id(&json, v).unwrap();
            for (name, change, changes) in &cases {
                let mut other = json.clone();
                change(&mut other);
                let other_id = crate::pdu::compute_event_id(&other, v).unwrap();
                assert_eq!(other_id != id, *changes, "v{v} {name}");
            }
        }
    }
}
