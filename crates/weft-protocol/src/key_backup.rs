//! Server-side key backup (`/room_keys`): which of two backed-up copies of a Megolm session
//! the server keeps, and the shape of an uploaded `KeyBackupData`.
//!
//! The server never reads `session_data` (it is encrypted for the backup's key); it only
//! compares the three public fields. The spec's rule: a new copy replaces the stored one
//! when it is verified and the stored one is not; or, with equal verification, when it
//! starts at an earlier message index; or, with both equal, when it was forwarded fewer
//! times. Anything else keeps the stored copy.

use serde_json::Value;

/// The public fields of one backed-up session key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMeta {
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
}

/// Whether `new` should replace `stored`.
pub fn replaces(stored: &KeyMeta, new: &KeyMeta) -> bool {
    if new.is_verified != stored.is_verified {
        return new.is_verified;
    }
    if new.first_message_index != stored.first_message_index {
        return new.first_message_index < stored.first_message_index;
    }
    new.forwarded_count < stored.forwarded_count
}

/// Checks an uploaded `KeyBackupData` object and returns its public fields; the error says
/// which field is wrong.
pub fn parse_key_data(v: &Value) -> Result<KeyMeta, String> {
    let obj = v.as_object().ok_or("key backup data must be an object")?;
    let int = |name: &str| -> Result<i64, String> {
        obj.get(name)
            .and_then(Value::as_i64)
            .filter(|n| *n >= 0)
            .ok_or_else(|| format!("{name} must be a non-negative integer"))
    };
    let first_message_index = int("first_message_index")?;
    let forwarded_count = int("forwarded_count")?;
    let is_verified = obj
        .get("is_verified")
        .and_then(Value::as_bool)
        .ok_or("is_verified must be a boolean")?;
    if !obj.get("session_data").is_some_and(Value::is_object) {
        return Err("session_data must be an object".into());
    }
    Ok(KeyMeta {
        first_message_index,
        forwarded_count,
        is_verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k(first: i64, fwd: i64, verified: bool) -> KeyMeta {
        KeyMeta {
            first_message_index: first,
            forwarded_count: fwd,
            is_verified: verified,
        }
    }

    #[test]
    fn replacement_rule() {
        // (stored, new, replaces?)
        let cases = [
            (k(5, 1, false), k(9, 9, true), true), // verified beats unverified
            (k(0, 0, true), k(0, 0, false), false), // unverified never beats verified
            (k(5, 0, false), k(3, 9, false), true), // earlier index wins
            (k(3, 0, true), k(5, 0, true), false), // later index loses
            (k(3, 2, true), k(3, 1, true), true),  // fewer forwards wins
            (k(3, 1, true), k(3, 2, true), false), // more forwards loses
            (k(3, 1, true), k(3, 1, true), false), // identical: keep the stored copy
        ];
        for (stored, new, want) in cases {
            assert_eq!(replaces(&stored, &new), want, "{stored:?} vs {new:?}");
        }
    }

    #[test]
    fn key_data_shape() {
        let good = json!({"first_message_index": 1, "forwarded_count": 0,
                          "is_verified": true, "session_data": {"ciphertext": "x"}});
        assert_eq!(parse_key_data(&good), Ok(k(1, 0, true)));
        let bad = [
            json!([]),
            json!({"forwarded_count": 0, "is_verified": true, "session_data": {}}),
            json!({"first_message_index": -1, "forwarded_count": 0, "is_verified": true, "session_data": {}}),
            json!({"first_message_index": 1, "forwarded_count": "0", "is_verified": true, "session_data": {}}),
            json!({"first_message_index": 1, "forwarded_count": 0, "is_verified": 1, "session_data": {}}),
            json!({"first_message_index": 1, "forwarded_count": 0, "is_verified": true, "session_data": "x"}),
            json!({"first_message_index": 1, "forwarded_count": 0, "is_verified": true}),
        ];
        for b in bad {
            assert!(parse_key_data(&b).is_err(), "{b}");
        }
    }
}
