//! The events weft creates check out under an independent implementation of the spec's
//! algorithms: canonical JSON, redaction (room versions 10, 11 and 12), the content hash, the
//! reference hash (event ID; for v12 also the room ID) and the ed25519 signature over the
//! redacted event, with the key weft publishes at `/_matrix/key/v2/server`.
//!
//! "Independent" means none of weft-protocol or ruma: everything below is written here from
//! the specification with serde_json, sha2, ed25519-dalek and base64. The events are read as
//! stored (the PDU JSON in the `events` table), because the client API serves client events,
//! which carry no hashes or signatures.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::both_backends;
use crate::client::enc;
use crate::harness::{Backend, Server};

// ---------------------------------------------------------------------------------------
// The spec's algorithms, written from the text.

/// Canonical JSON: object keys sorted by code point, no insignificant whitespace, integers
/// only, strings in UTF-8 with only the escapes JSON requires (short forms where they exist).
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            assert!(
                n.is_i64() || n.is_u64(),
                "canonical JSON allows integers only, found {n}"
            );
            let i = n.as_i64().expect("integer in the signed 64-bit range");
            assert!(
                i.unsigned_abs() < (1u64 << 53),
                "integer {i} outside the canonical range"
            );
            out.push_str(&i.to_string());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            // Rust orders strings by their UTF-8 bytes, which is code point order.
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The redaction algorithm of room versions 10 (`v11_rules == false`) and 11/12.
pub fn redact(event: &Value, v11_rules: bool) -> Value {
    let obj = event.as_object().expect("an event is an object");
    let mut top: Vec<&str> = vec![
        "event_id",
        "type",
        "room_id",
        "sender",
        "state_key",
        "content",
        "hashes",
        "signatures",
        "depth",
        "prev_events",
        "auth_events",
        "origin_server_ts",
    ];
    if !v11_rules {
        top.extend(["origin", "membership", "prev_state"]);
    }
    let mut out = Map::new();
    for k in top {
        if let Some(v) = obj.get(k) {
            out.insert(k.to_owned(), v.clone());
        }
    }
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
    let content = obj
        .get("content")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let keep = |keys: &[&str]| -> Map<String, Value> {
        keys.iter()
            .filter_map(|k| content.get(*k).map(|v| ((*k).to_owned(), v.clone())))
            .collect()
    };
    let new_content = match kind {
        "m.room.member" => {
            let mut c = keep(&["membership", "join_authorised_via_users_server"]);
            if v11_rules
                && let Some(signed) = content
                    .get("third_party_invite")
                    .and_then(|t| t.get("signed"))
            {
                c.insert("third_party_invite".into(), json!({"signed": signed}));
            }
            c
        }
        "m.room.create" if v11_rules => content.clone(),
        "m.room.create" => keep(&["creator"]),
        "m.room.join_rules" => keep(&["join_rule", "allow"]),
        "m.room.power_levels" if v11_rules => keep(&[
            "ban",
            "events",
            "events_default",
            "invite",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        ]),
        "m.room.power_levels" => keep(&[
            "ban",
            "events",
            "events_default",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        ]),
        "m.room.history_visibility" => keep(&["history_visibility"]),
        "m.room.redaction" if v11_rules => keep(&["redacts"]),
        _ => Map::new(),
    };
    out.insert("content".into(), Value::Object(new_content));
    Value::Object(out)
}

fn without(event: &Value, keys: &[&str]) -> Value {
    let mut v = event.clone();
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// The content hash: SHA-256 of the canonical event without `unsigned`, `signatures` and
/// `hashes`, unpadded standard base64.
pub fn content_hash(event: &Value) -> String {
    let stripped = without(event, &["unsigned", "signatures", "hashes"]);
    STANDARD_NO_PAD.encode(sha256(canonical(&stripped).as_bytes()))
}

/// The reference hash (room versions 4+): SHA-256 of the canonical redacted event without
/// `signatures` and `unsigned`, unpadded URL-safe base64.
pub fn reference_hash(event: &Value, v11_rules: bool) -> String {
    let redacted = without(&redact(event, v11_rules), &["signatures", "unsigned"]);
    URL_SAFE_NO_PAD.encode(sha256(canonical(&redacted).as_bytes()))
}

/// The bytes a server signs for an event: the canonical redacted event without
/// `signatures` and `unsigned`.
pub fn signed_bytes(event: &Value, v11_rules: bool) -> Vec<u8> {
    canonical(&without(
        &redact(event, v11_rules),
        &["signatures", "unsigned"],
    ))
    .into_bytes()
}

fn decode_b64(s: &str) -> Vec<u8> {
    STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .unwrap_or_else(|e| panic!("bad base64 {s:?}: {e}"))
}

/// Verifies `signatures[server][key_id]` over `bytes`.
pub fn verify(key: &VerifyingKey, signature_b64: &str, bytes: &[u8]) -> bool {
    let sig = decode_b64(signature_b64);
    let Ok(sig) = <[u8; 64]>::try_from(sig.as_slice()) else {
        return false;
    };
    key.verify_strict(bytes, &Signature::from_bytes(&sig))
        .is_ok()
}

/// The server's published keys, after checking the response's own signature.
fn server_keys(srv: &Server) -> HashMap<String, VerifyingKey> {
    let r = srv.anonymous().get("/_matrix/key/v2/server").ok();
    assert_eq!(r["server_name"], srv.server_name.as_str());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        r["valid_until_ts"].as_i64().unwrap() > now_ms,
        "key response already expired: {r}"
    );
    let mut keys = HashMap::new();
    for (id, k) in r["verify_keys"].as_object().expect("verify_keys") {
        assert!(id.starts_with("ed25519:"), "key id {id}");
        let bytes = decode_b64(k["key"].as_str().expect("key"));
        let bytes: [u8; 32] = bytes.as_slice().try_into().expect("32-byte key");
        keys.insert(
            id.clone(),
            VerifyingKey::from_bytes(&bytes).expect("valid point"),
        );
    }
    assert!(!keys.is_empty(), "no verify_keys: {r}");
    // The key response is signed by the key it publishes.
    let sigs = r["signatures"][&srv.server_name]
        .as_object()
        .expect("self-signature");
    let bytes = canonical(&without(&r, &["signatures", "unsigned"])).into_bytes();
    let mut checked = 0;
    for (id, sig) in sigs {
        if let Some(k) = keys.get(id) {
            assert!(
                verify(k, sig.as_str().unwrap(), &bytes),
                "key response signature {id} does not verify"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "key response not signed by a published key");
    keys
}

/// Checks one stored event; returns its recomputed event ID.
fn check_event(
    stored_id: &str,
    ev: &Value,
    v11_rules: bool,
    server: &str,
    keys: &HashMap<String, VerifyingKey>,
) -> String {
    let what = format!("{} {stored_id}", ev["type"]);
    assert!(
        ev.get("event_id").is_none(),
        "{what}: v3+ PDUs carry no event_id"
    );
    // Content hash over the full event.
    let hash = ev["hashes"]["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no hashes.sha256"));
    assert_eq!(content_hash(ev), hash, "{what}: content hash");
    // Event ID = reference hash.
    let id = format!("${}", reference_hash(ev, v11_rules));
    assert_eq!(id, stored_id, "{what}: event ID is not the reference hash");
    // Signature of the origin over the redacted event.
    let sigs = ev["signatures"][server]
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not signed by {server}"));
    let bytes = signed_bytes(ev, v11_rules);
    let mut verified = 0;
    for (key_id, sig) in sigs {
        let key = keys
            .get(key_id)
            .unwrap_or_else(|| panic!("{what}: signed with unpublished key {key_id}"));
        assert!(
            verify(key, sig.as_str().unwrap_or(""), &bytes),
            "{what}: signature {key_id} does not verify"
        );
        verified += 1;
    }
    assert!(verified > 0, "{what}: no signature");
    id
}

// ---------------------------------------------------------------------------------------

both_backends!(events_verify_independently);

fn events_verify_independently(backend: Backend) {
    let srv = Server::start(backend);
    let keys = server_keys(&srv);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    for version in ["10", "11", "12"] {
        check_room_version(&srv, &keys, &alice, &bob, version);
    }
    srv.assert_no_panics();
}

fn check_room_version(
    srv: &Server,
    keys: &HashMap<String, VerifyingKey>,
    alice: &crate::client::Client,
    bob: &crate::client::Client,
    version: &str,
) {
    let v11_rules = version != "10";
    let room = alice.create_room(&json!({
        "room_version": version,
        "name": format!("room v{version}"),
        "topic": "escapes: \"quoted\" \\ tab\t newline\n \u{1} é 😀",
        "room_alias_name": format!("sig-v{version}"),
        "preset": "private_chat",
    }));
    alice.invite(&room, &bob.user_id).ok();
    bob.join(&room).ok();
    let m1 = alice.send_text(&room, "first");
    bob.send(
        &room,
        "m.room.message",
        &json!({"msgtype": "m.text", "body": "nested", "x": {"b": [1, -2, {"z": null, "a": true}], "a": ""}}),
    );
    alice
        .put_state(
            &room,
            "org.example.custom",
            "key",
            &json!({"n": 9007199254740991i64}),
        )
        .ok();
    // Power levels change (v10 redacts `invite` away, v11 keeps it).
    let pl_path = format!("/rooms/{}/state/m.room.power_levels/", enc(&room));
    let mut pl = alice.get(&pl_path).ok();
    pl["invite"] = json!(25);
    pl["users"][&bob.user_id] = json!(10);
    alice.put(&pl_path, &pl).ok();
    alice
        .put(
            &format!("/rooms/{}/redact/{}/r1", enc(&room), enc(&m1)),
            &json!({"reason": "test"}),
        )
        .ok();
    bob.leave(&room).ok();

    let stored = srv.stored_events(&room);
    assert!(
        stored.len() >= 12,
        "v{version}: only {} events stored",
        stored.len()
    );
    let events: Vec<(String, Value)> = stored
        .iter()
        .map(|(id, j)| {
            let v: Value = serde_json::from_str(j).expect("stored JSON parses");
            // The stored text is itself canonical JSON.
            assert_eq!(
                &canonical(&v),
                j,
                "v{version} {id}: stored JSON is not canonical"
            );
            (id.clone(), v)
        })
        .collect();

    let mut ids = HashSet::new();
    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    for (stored_id, ev) in &events {
        let id = check_event(stored_id, ev, v11_rules, &srv.server_name, keys);
        *by_type
            .entry(ev["type"].as_str().unwrap().to_owned())
            .or_default() += 1;
        // Structure: every referenced event is one we already checked.
        for field in ["prev_events", "auth_events"] {
            for r in ev[field].as_array().expect(field) {
                let r = r.as_str().expect("event IDs are strings");
                assert!(
                    ids.contains(r),
                    "v{version} {id}: {field} names unknown {r}"
                );
            }
        }
        ids.insert(id);
    }
    for t in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
        "m.room.topic",
        "m.room.canonical_alias",
        "m.room.message",
        "m.room.redaction",
        "org.example.custom",
    ] {
        assert!(by_type.contains_key(t), "v{version}: no {t} event checked");
    }

    // Version-specific shape.
    let (create_id, create) = &events[0];
    assert_eq!(create["type"], "m.room.create");
    assert_eq!(create["content"]["room_version"], version);
    let redaction = &events
        .iter()
        .find(|(_, e)| e["type"] == "m.room.redaction")
        .unwrap()
        .1;
    match version {
        "10" => {
            assert_eq!(create["content"]["creator"], alice.user_id.as_str());
            assert_eq!(create["room_id"], room.as_str());
            assert_eq!(
                redaction["redacts"],
                m1.as_str(),
                "v10: redacts at top level"
            );
        }
        "11" => {
            assert!(create["content"].get("creator").is_none());
            assert_eq!(create["room_id"], room.as_str());
            assert_eq!(redaction["content"]["redacts"], m1.as_str());
        }
        _ => {
            // v12: the room ID is the create event's reference hash, and the create event
            // names no room and is not cited in auth_events.
            assert!(create.get("room_id").is_none(), "v12 create has a room_id");
            assert_eq!(room, format!("!{}", &create_id[1..]));
            assert_eq!(redaction["content"]["redacts"], m1.as_str());
            for (id, ev) in &events[1..] {
                assert!(
                    !ev["auth_events"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|a| a == create_id.as_str()),
                    "v12 {id} cites the create event in auth_events"
                );
            }
        }
    }
    for (id, ev) in &events[1..] {
        assert_eq!(ev["room_id"], room.as_str(), "v{version} {id}: room_id");
    }

    // The client API hands out the same event IDs.
    let served: Vec<String> = alice
        .all_messages(&room, 50, 10)
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let stored_ids: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(served, stored_ids, "v{version}: /messages vs stored events");

    // The checks can fail: a changed message body breaks only the content hash (message
    // content is redacted away before signing); a changed timestamp breaks the event ID and
    // the signature.
    let (mid, msg) = events
        .iter()
        .find(|(id, _)| *id == m1)
        .expect("the first message is stored");
    let mut tampered = msg.clone();
    tampered["content"]["body"] = json!("forged");
    assert_ne!(
        content_hash(&tampered),
        msg["hashes"]["sha256"].as_str().unwrap()
    );
    assert_eq!(format!("${}", reference_hash(&tampered, v11_rules)), *mid);
    let (key_id, sig) = msg["signatures"][&srv.server_name]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert!(verify(
        &keys[key_id],
        sig.as_str().unwrap(),
        &signed_bytes(&tampered, v11_rules)
    ));
    let mut tampered = msg.clone();
    tampered["origin_server_ts"] = json!(msg["origin_server_ts"].as_i64().unwrap() + 1);
    assert_ne!(format!("${}", reference_hash(&tampered, v11_rules)), *mid);
    assert!(!verify(
        &keys[key_id],
        sig.as_str().unwrap(),
        &signed_bytes(&tampered, v11_rules)
    ));
}

// ---------------------------------------------------------------------------------------
// The algorithms above against the specification's worked examples, so a mistake here
// cannot hide a mistake in weft.

#[test]
fn canonical_json_matches_the_spec_examples() {
    let cases = [
        (r#"{}"#, r#"{}"#),
        (r#"{"one": 1, "two": "Two"}"#, r#"{"one":1,"two":"Two"}"#),
        (r#"{"b": "2", "a": "1"}"#, r#"{"a":"1","b":"2"}"#),
        (
            r#"{"auth":{"success":true,"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"medium":"email","address":"john.doe@example.org"},{"medium":"msisdn","address":"123456789"}]}}}"#,
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
        ),
        (r#"{"a": "日本語"}"#, r#"{"a":"日本語"}"#),
        (r#"{"本": 2, "日": 1}"#, r#"{"日":1,"本":2}"#),
        (r#"{"a": "\u65E5"}"#, r#"{"a":"日"}"#),
        (r#"{"a": null}"#, r#"{"a":null}"#),
        (
            r#"{"a": "\u0000\u001f\b\""}"#,
            r#"{"a":"\u0000\u001f\b\""}"#,
        ),
    ];
    for (input, want) in cases {
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(canonical(&v), want, "{input}");
    }
}

#[test]
fn signing_matches_the_spec_example() {
    // The appendix's signing key (seed "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1" in
    // unpadded base64) signing `{}` and a small object, with key ID ed25519:1.
    use ed25519_dalek::{Signer, SigningKey};
    // The seed's last character carries non-zero padding bits, which strict decoders refuse.
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let seed: [u8; 32] = lenient
        .decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
        .unwrap()
        .try_into()
        .unwrap();
    let sk = SigningKey::from_bytes(&seed);
    let sig = STANDARD_NO_PAD.encode(sk.sign(canonical(&json!({})).as_bytes()).to_bytes());
    assert_eq!(
        sig,
        "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
    );
    let v = json!({"one": 1, "two": "Two"});
    let sig = STANDARD_NO_PAD.encode(sk.sign(canonical(&v).as_bytes()).to_bytes());
    assert_eq!(
        sig,
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
    );
    assert!(verify(&sk.verifying_key(), &sig, canonical(&v).as_bytes()));
}

#[test]
fn redaction_keeps_what_each_version_keeps() {
    let ev = json!({
        "type": "m.room.power_levels", "room_id": "!r:x", "sender": "@a:x", "state_key": "",
        "origin": "x", "membership": "join", "prev_state": [], "unsigned": {"age": 1},
        "depth": 3, "hashes": {"sha256": "h"}, "signatures": {}, "prev_events": [],
        "auth_events": [], "origin_server_ts": 5, "extra": true,
        "content": {"ban": 50, "invite": 0, "notifications": {"room": 50}, "users": {}},
    });
    let v10 = redact(&ev, false);
    assert_eq!(v10["content"], json!({"ban": 50, "users": {}}));
    assert_eq!(v10["origin"], "x");
    assert!(v10.get("extra").is_none() && v10.get("unsigned").is_none());
    let v11 = redact(&ev, true);
    assert_eq!(v11["content"], json!({"ban": 50, "invite": 0, "users": {}}));
    assert!(v11.get("origin").is_none() && v11.get("membership").is_none());
    let create = json!({"type": "m.room.create", "content": {"creator": "@a:x", "room_version": "11", "m.federate": true}});
    assert_eq!(
        redact(&create, false)["content"],
        json!({"creator": "@a:x"})
    );
    assert_eq!(redact(&create, true)["content"], create["content"]);
    let member = json!({"type": "m.room.member", "content": {"membership": "invite", "displayname": "A",
        "third_party_invite": {"display_name": "d", "signed": {"mxid": "@a:x", "token": "t", "signatures": {}}}}});
    assert_eq!(
        redact(&member, true)["content"],
        json!({"membership": "invite", "third_party_invite": {"signed": {"mxid": "@a:x", "token": "t", "signatures": {}}}})
    );
    assert_eq!(
        redact(&member, false)["content"],
        json!({"membership": "invite"})
    );
    let redaction = json!({"type": "m.room.redaction", "redacts": "$e", "content": {"redacts": "$e", "reason": "r"}});
    assert_eq!(
        redact(&redaction, true)["content"],
        json!({"redacts": "$e"})
    );
    assert_eq!(redact(&redaction, false)["content"], json!({}));
    assert!(redact(&redaction, false).get("redacts").is_none());
}
