//! `/send` transaction bodies: the envelope weft deserializes, then every PDU as `/send` parses
//! and checks it (format, event ID, signatures, content hash, redaction).
//!
//! Input: byte 0 picks the room version of the PDUs' room (any of the 13), the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use weft_fuzz::{VERSIONS, received};

/// The shape `PUT /_matrix/federation/v1/send/{txnId}` accepts.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Transaction {
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    origin_server_ts: Option<Value>,
    #[serde(default)]
    pdus: Vec<Value>,
    #[serde(default)]
    edus: Vec<Value>,
}

fuzz_target!(|data: &[u8]| {
    let [pick, body @ ..] = data else {
        return;
    };
    let version = VERSIONS[*pick as usize % VERSIONS.len()];
    let Ok(txn) = serde_json::from_slice::<Transaction>(body) else {
        return;
    };
    for raw in txn.pdus.iter().take(50) {
        let _ = raw.get("room_id").and_then(Value::as_str);
        let _ = received(raw, version);
    }
    for edu in txn.edus.iter().take(100) {
        let _ = edu.get("edu_type").and_then(Value::as_str);
        let _ = edu.get("content").and_then(Value::as_object);
    }
});
