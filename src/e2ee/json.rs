//! Helpers over the signed key JSON clients upload: what a signature covers, checking an
//! ed25519 signature, reading a cross-signing key's public key, and merging stored
//! signatures into a key when it is handed out. No I/O.

use serde_json::{Map, Value, json};
use weft_protocol::keys;

use crate::storage::e2ee::SignatureRow;

/// The bytes a signature over a key object covers: its canonical JSON without
/// `signatures` and `unsigned`. `None` if the object is not canonical JSON (floats, huge
/// integers) or not an object.
pub fn signing_bytes(object: &Value) -> Option<String> {
    let mut obj = object.as_object()?.clone();
    obj.remove("signatures");
    obj.remove("unsigned");
    let canonical = weft_protocol::canonical::value_to_object(Value::Object(obj)).ok()?;
    Some(weft_protocol::canonical::to_string(&canonical))
}

/// The signature `signer` made with `key_id` (e.g. `ed25519:DEVICE`) on an object.
pub fn signature_of<'a>(object: &'a Value, signer: &str, key_id: &str) -> Option<&'a str> {
    object.get("signatures")?.get(signer)?.get(key_id)?.as_str()
}

/// Whether `signer`'s signature with `key_id` on `object` verifies with `public_key`
/// (unpadded base64 ed25519).
pub fn verify(object: &Value, signer: &str, key_id: &str, public_key: &str) -> bool {
    let Some(sig) = signature_of(object, signer, key_id) else {
        return false;
    };
    let Some(bytes) = signing_bytes(object) else {
        return false;
    };
    let Ok(key) = keys::parse_verify_key(public_key) else {
        return false;
    };
    keys::verify_b64(&key, bytes.as_bytes(), sig)
}

/// The public key of a cross-signing key object: its one `ed25519:<key>` entry in `keys`.
pub fn cross_signing_public_key(object: &Value) -> Option<String> {
    let keys = object.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, value) = keys.iter().next()?;
    let public = id.strip_prefix("ed25519:")?;
    (value.as_str() == Some(public) && !public.is_empty()).then(|| public.to_owned())
}

/// A device's ed25519 identity key from its device-keys object.
pub fn device_ed25519_key(object: &Value, device_id: &str) -> Option<String> {
    object
        .get("keys")?
        .get(format!("ed25519:{device_id}"))?
        .as_str()
        .map(str::to_owned)
}

/// The object without `signatures` and `unsigned`: what must match for a re-upload or an
/// uploaded signature to be about the same key.
pub fn signed_part(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("signatures");
        o.remove("unsigned");
    }
    v
}

/// Adds stored signatures to a key object, keeping those whose signer `visible` accepts.
pub fn merge_signatures(object: &mut Value, rows: &[SignatureRow], visible: impl Fn(&str) -> bool) {
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    for row in rows.iter().filter(|r| visible(&r.signer_user_id)) {
        let sigs = obj
            .entry("signatures")
            .or_insert_with(|| Value::Object(Map::new()));
        if !sigs.is_object() {
            *sigs = Value::Object(Map::new());
        }
        if let Some(sigs) = sigs.as_object_mut() {
            let by_signer = sigs
                .entry(row.signer_user_id.clone())
                .or_insert_with(|| json!({}));
            if let Some(by_signer) = by_signer.as_object_mut() {
                by_signer.insert(row.signer_key_id.clone(), json!(row.signature));
            }
        }
    }
}

/// Keeps only the signatures of signers `visible` accepts (for keys whose stored JSON may
/// carry signatures not everyone may see).
pub fn retain_signatures(object: &mut Value, visible: impl Fn(&str) -> bool) {
    if let Some(sigs) = object.get_mut("signatures").and_then(|s| s.as_object_mut()) {
        sigs.retain(|signer, _| visible(signer));
    }
}

/// Splits `algorithm:key_id`.
pub fn split_key_name(name: &str) -> Option<(&str, &str)> {
    let (alg, id) = name.split_once(':')?;
    (!alg.is_empty() && !id.is_empty()).then_some((alg, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_protocol::keys::ServerSigningKey;

    fn signer() -> ServerSigningKey {
        ServerSigningKey::from_seed([7u8; 32], "DEV").unwrap()
    }

    fn signed(mut v: Value, user: &str, key: &ServerSigningKey, key_id: &str) -> Value {
        let bytes = signing_bytes(&v).unwrap();
        let sig = key.sign_b64(bytes.as_bytes());
        v["signatures"] = json!({user: {key_id: sig}});
        v
    }

    #[test]
    fn verifies_signatures_over_the_signed_part() {
        let key = signer();
        let pk = key.public_key_b64();
        let obj =
            json!({"user_id": "@a:x", "usage": ["master"], "keys": {format!("ed25519:{pk}"): pk}});
        let mut s = signed(obj, "@a:x", &key, "ed25519:DEV");
        assert!(verify(&s, "@a:x", "ed25519:DEV", &pk));
        // unsigned data does not matter
        s["unsigned"] = json!({"device_display_name": "phone"});
        assert!(verify(&s, "@a:x", "ed25519:DEV", &pk));
        // another signer, another key id, or changed content fail
        assert!(!verify(&s, "@b:x", "ed25519:DEV", &pk));
        assert!(!verify(&s, "@a:x", "ed25519:OTHER", &pk));
        s["usage"] = json!(["self_signing"]);
        assert!(!verify(&s, "@a:x", "ed25519:DEV", &pk));
        // garbage does not panic
        assert!(!verify(&json!("x"), "@a:x", "ed25519:DEV", &pk));
        assert!(!verify(&s, "@a:x", "ed25519:DEV", "not base64!"));
        assert_eq!(signing_bytes(&json!({"f": 1.5})), None);
    }

    #[test]
    fn cross_signing_public_keys() {
        assert_eq!(
            cross_signing_public_key(&json!({"keys": {"ed25519:abc": "abc"}})),
            Some("abc".into())
        );
        for bad in [
            json!({"keys": {"ed25519:abc": "abd"}}),
            json!({"keys": {"curve25519:abc": "abc"}}),
            json!({"keys": {"ed25519:a": "a", "ed25519:b": "b"}}),
            json!({"keys": {}}),
            json!({}),
        ] {
            assert_eq!(cross_signing_public_key(&bad), None, "{bad}");
        }
    }

    #[test]
    fn merges_only_visible_signatures() {
        let mut key = json!({"keys": {}, "signatures": {"@a:x": {"ed25519:DEV": "s0"}}});
        let rows = vec![
            SignatureRow {
                target_user_id: "@a:x".into(),
                target_key_id: "MK".into(),
                signer_user_id: "@a:x".into(),
                signer_key_id: "ed25519:DEV2".into(),
                signature: "s1".into(),
            },
            SignatureRow {
                target_user_id: "@a:x".into(),
                target_key_id: "MK".into(),
                signer_user_id: "@b:x".into(),
                signer_key_id: "ed25519:USK".into(),
                signature: "s2".into(),
            },
        ];
        merge_signatures(&mut key, &rows, |s| s == "@a:x");
        assert_eq!(
            key["signatures"],
            json!({"@a:x": {"ed25519:DEV": "s0", "ed25519:DEV2": "s1"}})
        );
        merge_signatures(&mut key, &rows, |_| true);
        assert_eq!(key["signatures"]["@b:x"], json!({"ed25519:USK": "s2"}));
        retain_signatures(&mut key, |s| s == "@b:x");
        assert_eq!(key["signatures"], json!({"@b:x": {"ed25519:USK": "s2"}}));
    }

    #[test]
    fn key_names() {
        assert_eq!(
            split_key_name("signed_curve25519:AAAAHg"),
            Some(("signed_curve25519", "AAAAHg"))
        );
        assert_eq!(split_key_name("a:b:c"), Some(("a", "b:c")));
        assert_eq!(split_key_name("nocolon"), None);
        assert_eq!(split_key_name(":x"), None);
        assert_eq!(split_key_name("x:"), None);
    }
}
