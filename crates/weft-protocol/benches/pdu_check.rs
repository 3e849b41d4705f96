//! `cargo bench -p weft-protocol --bench pdu_check`: what a received PDU costs before any
//! room actor, step by step (format and event ID, the signature check, the content hash),
//! on one core. The PDUs are room-version-11 messages of the size `tools/fedpeer` sends
//! (three auth events, one prev event, a short body), signed by one server.
//!
//! Prints, per step, the median over 7 runs of 2,000 PDUs, in microseconds per PDU:
//! - `from_received`: `Pdu::from_received` from a `serde_json::Value` (what `/send` does
//!   per PDU: canonical object, size, event ID, the stored text);
//! - `parse_received`: the same, keeping what the signature check needs;
//! - `json_reparse`: `Pdu::json()`, the stored text parsed back to an object;
//! - `verify_pdu`: signatures and content hash from the object (`signatures::verify_pdu`);
//! - `verify_received`: the same from what `parse_received` kept;
//! - `signing_copy`: the signed bytes the way weft wrote them before (redact a copy of the
//!   object, then serialize it);
//! - `signing_one_pass`: `signatures::signing_bytes` (ruma's redacting serializer, no copy);
//! - `ed25519`: `verify_strict` alone, the floor under all of it.

use std::time::Instant;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};
use weft_protocol::builder::{EventDraft, Position, build_pdu};
use weft_protocol::keys::ServerSigningKey;
use weft_protocol::signatures::{self, KnownKey};
use weft_protocol::{Pdu, RoomVersion};

const N: usize = 2_000;
const RUNS: usize = 7;

fn sample(key: &ServerSigningKey, i: usize) -> Value {
    let room = OwnedRoomId::try_from("!bench:origin.example").expect("room ID");
    let sender = OwnedUserId::try_from("@sender:origin.example").expect("user ID");
    let mut draft = EventDraft::new(
        "m.room.message",
        sender,
        json!({"body": format!("message {i} of the benchmark"), "msgtype": "m.text"}),
    );
    draft.origin_server_ts = 1_700_000_000_000 + i as u64;
    let auth: Vec<OwnedEventId> = ["$create", "$power_levels", "$member"]
        .iter()
        .map(|s| {
            OwnedEventId::try_from(format!("{s}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"))
                .expect("event ID")
        })
        .collect();
    let pos = Position {
        version: RoomVersion::V11,
        room_id: Some(&room),
        prev_events: vec![OwnedEventId::try_from(format!("$prev{i:039}aaaa")).expect("event ID")],
        auth_events: auth,
        depth: 10 + i as u64,
    };
    let pdu = build_pdu(&draft, &pos, "origin.example", key).expect("a PDU");
    weft_protocol::canonical::to_value(&pdu.into_json())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(label: &str, mut f: impl FnMut() -> T) {
    let mut runs = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        std::hint::black_box(f());
        runs.push(t.elapsed().as_secs_f64() * 1e6 / N as f64);
    }
    println!("{label:<16} {:>7.2} µs per PDU", median(runs));
}

fn main() {
    let key = ServerSigningKey::from_seed([7u8; 32], "bench").expect("key");
    let public = key.verifying_key();
    let key_id = key.key_id().to_owned();
    let lookup = move |s: &str, k: &str| {
        (s == "origin.example" && k == key_id).then_some(KnownKey {
            key: public,
            valid_until_ts: u64::MAX,
        })
    };
    let raws: Vec<Value> = (0..N).map(|i| sample(&key, i)).collect();
    let v = RoomVersion::V11;
    let pdus: Vec<Pdu> = raws
        .iter()
        .map(|r| Pdu::from_received(r.clone(), v).expect("parses"))
        .collect();
    let received: Vec<_> = raws
        .iter()
        .map(|r| Pdu::parse_received(r.clone(), v).expect("parses"))
        .collect();
    let objects: Vec<_> = pdus.iter().map(Pdu::json).collect();
    let signed: Vec<(String, String)> = objects
        .iter()
        .map(|o| {
            let bytes = signatures::signing_bytes(o, v).expect("signing bytes");
            let sig = match o.get("signatures") {
                Some(ruma::CanonicalJsonValue::Object(s)) => match s.get("origin.example") {
                    Some(ruma::CanonicalJsonValue::Object(k)) => match k.values().next() {
                        Some(ruma::CanonicalJsonValue::String(s)) => s.clone(),
                        _ => String::new(),
                    },
                    _ => String::new(),
                },
                _ => String::new(),
            };
            (bytes, sig)
        })
        .collect();
    println!(
        "pdu_check: {N} PDUs of {} bytes, median of {RUNS} runs",
        pdus[0].canonical_str().len()
    );
    time("from_received", || {
        raws.iter()
            .map(|r| Pdu::from_received(r.clone(), v).is_ok())
            .filter(|ok| *ok)
            .count()
    });
    time("parse_received", || {
        raws.iter()
            .map(|r| Pdu::parse_received(r.clone(), v).is_ok())
            .filter(|ok| *ok)
            .count()
    });
    time("json_reparse", || {
        pdus.iter().map(|p| p.json().len()).sum::<usize>()
    });
    time("verify_pdu", || {
        objects
            .iter()
            .filter(|o| signatures::verify_pdu(o, v, &lookup).is_ok())
            .count()
    });
    time("verify_received", || {
        received
            .iter()
            .filter(|r| r.verify(&lookup).is_ok())
            .count()
    });
    time("signing_copy", || {
        objects
            .iter()
            .map(|o| {
                let redacted = ruma::canonical_json::redact(o.clone(), &v.rules().redaction, None)
                    .expect("redacts");
                ruma::signatures::to_canonical_json_string_for_signing(&redacted)
                    .map(|s| s.len())
                    .unwrap_or(0)
            })
            .sum::<usize>()
    });
    time("signing_one_pass", || {
        objects
            .iter()
            .map(|o| {
                signatures::signing_bytes(o, v)
                    .map(|s| s.len())
                    .unwrap_or(0)
            })
            .sum::<usize>()
    });
    time("ed25519", || {
        signed
            .iter()
            .filter(|(bytes, sig)| weft_protocol::keys::verify_b64(&public, bytes.as_bytes(), sig))
            .count()
    });
}
