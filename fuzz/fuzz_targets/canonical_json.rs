//! Canonical JSON: parsing untrusted bytes, and the canonical form as a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_protocol::canonical;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = canonical::value_to_canonical(value);
    }
    let Ok(obj) = canonical::parse_object(data) else {
        return;
    };
    let text = canonical::write_object(&obj);
    assert_eq!(text, canonical::to_string(&obj), "the two encoders agree");
    let again = canonical::parse_object(text.as_bytes()).expect("canonical JSON re-parses");
    assert_eq!(again, obj, "re-parsing gives the same object");
    assert_eq!(
        canonical::write_object(&again),
        text,
        "the canonical form is a fixed point"
    );
    let _ = canonical::to_value(&obj);
});
