//! Canonical JSON: parsing untrusted bytes into ruma's `CanonicalJsonObject` (which rejects
//! floats and integers outside ±(2^53−1)) and printing the canonical form.

use ruma::{CanonicalJsonObject, CanonicalJsonValue};

/// Why a JSON document is not acceptable canonical JSON.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not an object")]
    NotObject,
    #[error("not canonical JSON: {0}")]
    NotCanonical(String),
}

/// Parses bytes into a canonical JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<CanonicalJsonObject, CanonicalError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| CanonicalError::NotJson(e.to_string()))?;
    value_to_object(value)
}

/// Converts a serde_json value into a canonical JSON object.
pub fn value_to_object(value: serde_json::Value) -> Result<CanonicalJsonObject, CanonicalError> {
    match value {
        serde_json::Value::Object(map) => ruma::canonical_json::try_from_json_map(map)
            .map_err(|e| CanonicalError::NotCanonical(e.to_string())),
        _ => Err(CanonicalError::NotObject),
    }
}

/// Converts a serde_json value into a canonical JSON value.
pub fn value_to_canonical(value: serde_json::Value) -> Result<CanonicalJsonValue, CanonicalError> {
    CanonicalJsonValue::try_from(value).map_err(|e| CanonicalError::NotCanonical(e.to_string()))
}

/// The canonical encoding (sorted keys, no whitespace).
pub fn to_string(object: &CanonicalJsonObject) -> String {
    // `CanonicalJsonValue`'s Display is the canonical encoding.
    CanonicalJsonValue::Object(object.clone()).to_string()
}

/// The canonical encoding of a borrowed object without cloning it.
pub fn write_object(object: &CanonicalJsonObject) -> String {
    // serde_json serializes BTreeMap keys in order and emits no whitespace; the canonical
    // value types serialize exactly like their JSON counterparts.
    serde_json::to_string(object).unwrap_or_else(|_| to_string(object))
}

/// Converts a canonical object into a serde_json value.
pub fn to_value(object: &CanonicalJsonObject) -> serde_json::Value {
    serde_json::to_value(object).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_and_strips() {
        let obj = parse_object(br#"{ "b": 1, "a": {"d": [1, 2], "c": "\u00e9"} }"#).unwrap();
        assert_eq!(write_object(&obj), r#"{"a":{"c":"é","d":[1,2]},"b":1}"#);
        assert_eq!(to_string(&obj), write_object(&obj));
    }

    #[test]
    fn rejects_non_canonical_inputs() {
        assert!(matches!(
            parse_object(b"{"),
            Err(CanonicalError::NotJson(_))
        ));
        assert!(matches!(
            parse_object(b"[1]"),
            Err(CanonicalError::NotObject)
        ));
        assert!(matches!(
            parse_object(br#"{"a": 1.5}"#),
            Err(CanonicalError::NotCanonical(_))
        ));
        assert!(matches!(
            parse_object(br#"{"a": 9007199254740992}"#),
            Err(CanonicalError::NotCanonical(_))
        ));
        assert!(parse_object(br#"{"a": 9007199254740991}"#).is_ok());
    }
}
