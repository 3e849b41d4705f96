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

/// The servers whose signatures a PDU needs (the sender's server; for restricted joins also
/// the authorising server).
pub fn required_servers(
    json: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<BTreeSet<String>, SignatureError> {
    if version.is_linearized() {
        return crate::lm::required_servers(json).map_err(SignatureError::Malformed);
    }
    ruma::signatures::required_server_signatures_to_verify_event(json, &version.rules().signatures)
        .map(|set| set.into_iter().map(|s| s.to_string()).collect())
        .map_err(|e| SignatureError::Malformed(e.to_string()))
}

/// The bytes a server signs for an event: the redacted event without `signatures`/`unsigned`.
pub fn signing_bytes(
    json: &CanonicalJsonObject,
    version: RoomVersion,
) -> Result<String, SignatureError> {
    let redacted = ruma::canonical_json::redact(json.clone(), &version.rules().redaction, None)
        .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    ruma::signatures::to_canonical_json_string_for_signing(&redacted)
        .map_err(|e| SignatureError::Malformed(e.to_string()))
}

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
    let servers = required_servers(json, version)?;
    let bytes = signing_bytes(json, version)?;
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
}
