//! Bad input on purpose: damaged signatures, tampered events, forged senders and X-Matrix
//! headers that must not verify. Each function changes exactly one thing, so a test can
//! say which check it exercises.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId};
use serde_json::Value;
use sha2::{Digest, Sha256};
use weft_protocol::keys::ServerSigningKey;
use weft_protocol::xmatrix::{self, XMatrix};
use weft_protocol::{RoomVersion, canonical, pdu, signatures};

use crate::{Error, Result};

/// The event ID a server computes for this JSON in a room of `version`.
pub fn event_id(obj: &CanonicalJsonObject, version: RoomVersion) -> Result<OwnedEventId> {
    pdu::compute_event_id(obj, version).map_err(|e| Error(e.to_string()))
}

/// The object as JSON (what goes into a transaction).
pub fn to_value(obj: &CanonicalJsonObject) -> Value {
    canonical::to_value(obj)
}

fn signatures_mut(obj: &mut CanonicalJsonObject) -> Option<&mut CanonicalJsonObject> {
    match obj.get_mut("signatures") {
        Some(CanonicalJsonValue::Object(s)) => Some(s),
        _ => None,
    }
}

/// Flips one base64 character of every signature (still valid base64, wrong bytes).
pub fn corrupt_signatures(obj: &mut CanonicalJsonObject) {
    let Some(sigs) = signatures_mut(obj) else {
        return;
    };
    for server in sigs.values_mut() {
        if let CanonicalJsonValue::Object(keys) = server {
            for sig in keys.values_mut() {
                if let CanonicalJsonValue::String(s) = sig {
                    *s = flip_first_char(s);
                }
            }
        }
    }
}

fn flip_first_char(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    if let Some(c) = chars.first_mut() {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}

/// Renames the key ID under which `server` signed (the signature bytes stay).
pub fn rename_signing_key(obj: &mut CanonicalJsonObject, server: &str, new_key_id: &str) {
    let Some(sigs) = signatures_mut(obj) else {
        return;
    };
    if let Some(CanonicalJsonValue::Object(keys)) = sigs.get_mut(server) {
        let values: Vec<CanonicalJsonValue> = std::mem::take(keys).into_values().collect();
        for v in values {
            keys.insert(new_key_id.to_owned(), v);
        }
    }
}

/// Removes every signature.
pub fn strip_signatures(obj: &mut CanonicalJsonObject) {
    obj.remove("signatures");
}

/// Sets a top-level field (after signing, to tamper; before signing, to forge).
pub fn set(obj: &mut CanonicalJsonObject, field: &str, value: Value) -> Result<()> {
    let v = canonical::value_to_canonical(value).map_err(|e| Error(e.to_string()))?;
    obj.insert(field.to_owned(), v);
    Ok(())
}

/// The content hash (`hashes.sha256`) of an event, of any size: SHA-256 over the
/// canonical JSON without `signatures`, `unsigned` and `hashes`, unpadded base64.
pub fn content_hash(obj: &CanonicalJsonObject) -> String {
    let mut copy = obj.clone();
    copy.remove("signatures");
    copy.remove("unsigned");
    copy.remove("hashes");
    let digest = Sha256::digest(canonical::write_object(&copy).as_bytes());
    weft_protocol::keys::b64_encode(&digest)
}

/// Hashes and signs as `origin` with `key` (for example a server name that is not the
/// key's owner). Done step by step rather than with ruma's `hash_and_sign_event`, which
/// refuses events over the size limit — and such events are what some tests need.
pub fn sign_as(
    mut obj: CanonicalJsonObject,
    version: RoomVersion,
    origin: &str,
    key: &ServerSigningKey,
) -> Result<CanonicalJsonObject> {
    obj.remove("signatures");
    obj.remove("unsigned");
    let hash = content_hash(&obj);
    let mut hashes = CanonicalJsonObject::new();
    hashes.insert("sha256".into(), CanonicalJsonValue::String(hash));
    obj.insert("hashes".into(), CanonicalJsonValue::Object(hashes));
    let bytes = signatures::signing_bytes(&obj, version).map_err(|e| Error(e.to_string()))?;
    let mut by_key = CanonicalJsonObject::new();
    by_key.insert(
        key.key_id().to_owned(),
        CanonicalJsonValue::String(key.sign_b64(bytes.as_bytes())),
    );
    let mut sigs = CanonicalJsonObject::new();
    sigs.insert(origin.to_owned(), CanonicalJsonValue::Object(by_key));
    obj.insert("signatures".into(), CanonicalJsonValue::Object(sigs));
    Ok(obj)
}

/// What an X-Matrix header claims and what its signature covers; each field can be made
/// to disagree with the request it is sent on.
#[derive(Debug, Clone)]
pub struct HeaderSpec<'a> {
    /// The key that signs.
    pub key: &'a ServerSigningKey,
    /// The key ID written in the header (normally `key.key_id()`).
    pub key_id: String,
    pub origin: String,
    /// Written in the header (`None`: omitted).
    pub destination: Option<String>,
    /// What the signature covers.
    pub signed_destination: String,
    pub signed_method: String,
    pub signed_uri: String,
    pub signed_content: Option<Value>,
}

impl HeaderSpec<'_> {
    /// The header value.
    pub fn header(&self) -> Result<String> {
        let content = self
            .signed_content
            .clone()
            .map(canonical::value_to_canonical)
            .transpose()
            .map_err(|e| Error(e.to_string()))?;
        let signed = xmatrix::sign_request(
            self.key,
            &self.signed_method,
            &self.signed_uri,
            &self.origin,
            &self.signed_destination,
            content.as_ref(),
        );
        let sig = XMatrix::parse(&signed)
            .map_err(|e| Error(e.to_string()))?
            .sig;
        Ok(XMatrix {
            origin: self.origin.clone(),
            destination: self.destination.clone(),
            key: self.key_id.clone(),
            sig,
        }
        .to_header())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_protocol::signatures::KnownKey;

    fn key() -> ServerSigningKey {
        ServerSigningKey::from_seed([9u8; 32], "k").unwrap()
    }

    fn signed() -> CanonicalJsonObject {
        let obj = canonical::value_to_object(json!({
            "auth_events": [], "prev_events": [], "depth": 3, "origin_server_ts": 1,
            "room_id": "!r:localhost:1", "sender": "@a:localhost:1", "type": "m.room.message",
            "content": {"body": "x"},
        }))
        .unwrap();
        sign_as(obj, RoomVersion::V12, "localhost:1", &key()).unwrap()
    }

    fn check(obj: &CanonicalJsonObject) -> std::result::Result<signatures::HashCheck, String> {
        let k = KnownKey {
            key: key().verifying_key(),
            valid_until_ts: u64::MAX,
        };
        signatures::verify_pdu(obj, RoomVersion::V12, |s, id| {
            (s == "localhost:1" && id == "ed25519:k").then(|| k.clone())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn each_damage_breaks_exactly_its_check() {
        assert_eq!(check(&signed()), Ok(signatures::HashCheck::Valid));
        let mut a = signed();
        corrupt_signatures(&mut a);
        assert!(check(&a).is_err());
        let mut b = signed();
        rename_signing_key(&mut b, "localhost:1", "ed25519:other");
        assert!(check(&b).is_err());
        let mut c = signed();
        strip_signatures(&mut c);
        assert!(check(&c).is_err());
        let mut d = signed();
        set(&mut d, "content", json!({"body": "changed"})).unwrap();
        assert_eq!(check(&d), Ok(signatures::HashCheck::ContentMismatch));
        assert_eq!(
            event_id(&d, RoomVersion::V12).unwrap(),
            event_id(&signed(), RoomVersion::V12).unwrap()
        );
        let mut e = signed();
        set(&mut e, "origin_server_ts", json!(2)).unwrap();
        assert!(check(&e).is_err());
    }

    #[test]
    fn sign_as_matches_the_builder_and_handles_oversized_events() {
        let obj = signed();
        let mut unsigned = obj.clone();
        unsigned.remove("signatures");
        unsigned.remove("hashes");
        let mut via_ruma = unsigned.clone();
        ruma::signatures::hash_and_sign_event(
            "localhost:1",
            &key(),
            &mut via_ruma,
            &RoomVersion::V12.rules().redaction,
        )
        .unwrap();
        assert_eq!(obj, via_ruma);
        let mut big = unsigned;
        set(&mut big, "content", json!({"body": "y".repeat(70_000)})).unwrap();
        let big = sign_as(big, RoomVersion::V12, "localhost:1", &key()).unwrap();
        assert!(canonical::write_object(&big).len() > weft_protocol::MAX_PDU_BYTES);
        // ruma refuses to hash an event this size, so compare with a small one: the same
        // function agrees with ruma's hash there.
        assert_eq!(content_hash(&obj), signatures::content_hash(&obj).unwrap());
        let k = KnownKey {
            key: key().verifying_key(),
            valid_until_ts: u64::MAX,
        };
        let bytes = signatures::signing_bytes(&big, RoomVersion::V12).unwrap();
        signatures::verify_server_signature(
            &big,
            "localhost:1",
            bytes.as_bytes(),
            0,
            false,
            &|_: &str, _: &str| Some(k.clone()),
        )
        .unwrap();
    }

    #[test]
    fn header_spec_signs_what_it_says() {
        let k = key();
        let spec = HeaderSpec {
            key: &k,
            key_id: k.key_id().to_owned(),
            origin: "localhost:1".into(),
            destination: Some("localhost:2".into()),
            signed_destination: "localhost:2".into(),
            signed_method: "PUT".into(),
            signed_uri: "/x".into(),
            signed_content: Some(json!({"a": 1})),
        };
        let h = XMatrix::parse(&spec.header().unwrap()).unwrap();
        let content = canonical::value_to_canonical(json!({"a": 1})).unwrap();
        let pk = k.verifying_key();
        assert!(xmatrix::verify_request(
            &h,
            &pk,
            "PUT",
            "/x",
            "localhost:2",
            Some(&content)
        ));
        assert!(!xmatrix::verify_request(
            &h,
            &pk,
            "PUT",
            "/y",
            "localhost:2",
            Some(&content)
        ));
    }
}
