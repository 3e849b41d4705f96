//! Server-side key backup (`/room_keys`): versions (create, get, update, delete; etag and
//! count), keys at the three levels (all rooms, one room, one session), the spec's rule for
//! which copy of a session key is kept, and bad input.

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::enc;
use crate::harness::{Backend, Server};

both_backends!(key_backup_round_trip, key_backup_bad_input);

const ALG: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

fn key(first: i64, fwd: i64, verified: bool, tag: &str) -> Value {
    json!({"first_message_index": first, "forwarded_count": fwd, "is_verified": verified,
           "session_data": {"ephemeral": "e", "ciphertext": tag, "mac": "m"}})
}

fn key_backup_round_trip(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    // No backup yet.
    alice
        .get("/room_keys/version")
        .expect_err(404, "M_NOT_FOUND");

    let v1 = alice
        .post(
            "/room_keys/version",
            &json!({"algorithm": ALG, "auth_data": {"public_key": "pk1"}}),
        )
        .ok()["version"]
        .as_str()
        .expect("version")
        .to_owned();
    let cur = alice.get("/room_keys/version").ok();
    assert_eq!(cur["version"], v1.as_str());
    assert_eq!(cur["algorithm"], ALG);
    assert_eq!(cur["auth_data"]["public_key"], "pk1");
    assert_eq!(cur["count"], 0);
    let etag0 = cur["etag"].as_str().expect("etag is a string").to_owned();

    // Upload at the three levels.
    let room = "!room1:weft.test";
    let room2 = "!room2:weft.test";
    let all = alice
        .put(
            &format!("/room_keys/keys?version={v1}"),
            &json!({"rooms": {room: {"sessions": {"s1": key(5, 1, false, "a")}}}}),
        )
        .ok();
    assert_eq!(all["count"], 1);
    assert_ne!(all["etag"].as_str(), Some(etag0.as_str()));
    let r = alice
        .put(
            &format!("/room_keys/keys/{}?version={v1}", enc(room)),
            &json!({"sessions": {"s2": key(0, 0, true, "b")}}),
        )
        .ok();
    assert_eq!(r["count"], 2);
    let one = alice
        .put(
            &format!("/room_keys/keys/{}/s3?version={v1}", enc(room2)),
            &key(0, 0, false, "c"),
        )
        .ok();
    assert_eq!(one["count"], 3);

    // The better copy wins: an earlier index replaces, a worse copy is ignored (etag kept).
    let better = alice
        .put(
            &format!("/room_keys/keys/{}/s1?version={v1}", enc(room)),
            &key(2, 1, false, "a2"),
        )
        .ok();
    let worse = alice
        .put(
            &format!("/room_keys/keys/{}/s2?version={v1}", enc(room)),
            &key(0, 0, false, "b2"),
        )
        .ok();
    assert_eq!(better["etag"], worse["etag"], "a kept copy changes nothing");
    let s1 = alice
        .get(&format!("/room_keys/keys/{}/s1?version={v1}", enc(room)))
        .ok();
    assert_eq!(s1["first_message_index"], 2);
    assert_eq!(s1["session_data"]["ciphertext"], "a2");
    let s2 = alice
        .get(&format!("/room_keys/keys/{}/s2?version={v1}", enc(room)))
        .ok();
    assert_eq!(s2["session_data"]["ciphertext"], "b", "verified copy kept");

    // Read at the three levels.
    let everything = alice.get(&format!("/room_keys/keys?version={v1}")).ok();
    assert_eq!(
        everything["rooms"][room]["sessions"]
            .as_object()
            .map(|m| m.len()),
        Some(2)
    );
    assert!(everything["rooms"][room2]["sessions"]["s3"].is_object());
    let in_room = alice
        .get(&format!("/room_keys/keys/{}?version={v1}", enc(room2)))
        .ok();
    assert_eq!(in_room["sessions"]["s3"]["session_data"]["ciphertext"], "c");
    let empty_room = alice
        .get(&format!(
            "/room_keys/keys/{}?version={v1}",
            enc("!none:weft.test")
        ))
        .ok();
    assert_eq!(empty_room["sessions"], json!({}));
    alice
        .get(&format!("/room_keys/keys/{}/nope?version={v1}", enc(room)))
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(alice.get("/room_keys/version").ok()["count"], 3);

    // Another user sees none of it.
    let bob = srv.register("bob");
    bob.get("/room_keys/version").expect_err(404, "M_NOT_FOUND");
    bob.get(&format!("/room_keys/keys?version={v1}"))
        .expect_err(404, "M_NOT_FOUND");

    // Update auth_data; the algorithm may not change.
    alice
        .put(
            &format!("/room_keys/version/{v1}"),
            &json!({"algorithm": ALG, "auth_data": {"public_key": "pk1", "signatures": {}}, "version": v1}),
        )
        .ok();
    assert!(
        alice.get(&format!("/room_keys/version/{v1}")).ok()["auth_data"]["signatures"].is_object()
    );
    alice
        .put(
            &format!("/room_keys/version/{v1}"),
            &json!({"algorithm": "other", "auth_data": {}}),
        )
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(
            &format!("/room_keys/version/{v1}"),
            &json!({"algorithm": ALG, "auth_data": {}, "version": "99"}),
        )
        .expect_err(400, "M_INVALID_PARAM");

    // Delete at the three levels.
    let d = alice
        .delete(&format!("/room_keys/keys/{}/s1?version={v1}", enc(room)))
        .ok();
    assert_eq!(d["count"], 2);
    let d = alice
        .delete(&format!("/room_keys/keys/{}?version={v1}", enc(room)))
        .ok();
    assert_eq!(d["count"], 1);
    let d = alice.delete(&format!("/room_keys/keys?version={v1}")).ok();
    assert_eq!(d["count"], 0);

    // A new version becomes current; uploads to the old one are refused with the current.
    let v2 = alice
        .post(
            "/room_keys/version",
            &json!({"algorithm": ALG, "auth_data": {"public_key": "pk2"}}),
        )
        .ok()["version"]
        .as_str()
        .expect("version")
        .to_owned();
    assert_ne!(v1, v2);
    let wrong = alice.put(
        &format!("/room_keys/keys/{}/s1?version={v1}", enc(room)),
        &key(0, 0, false, "x"),
    );
    wrong.expect_err(403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(wrong.body["current_version"], v2.as_str());

    // Deleting the current version leaves the older one current; numbers are not reused.
    alice.delete(&format!("/room_keys/version/{v2}")).ok();
    alice
        .get(&format!("/room_keys/version/{v2}"))
        .expect_err(404, "M_NOT_FOUND");
    alice
        .delete(&format!("/room_keys/version/{v2}"))
        .expect_err(404, "M_NOT_FOUND");
    assert_eq!(alice.get("/room_keys/version").ok()["version"], v1.as_str());
    let v3 = alice
        .post(
            "/room_keys/version",
            &json!({"algorithm": ALG, "auth_data": {}}),
        )
        .ok()["version"]
        .as_str()
        .expect("version")
        .to_owned();
    assert_ne!(v3, v2, "a deleted version number is never reused");
    srv.assert_no_panics();
}

fn key_backup_bad_input(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    alice
        .post("/room_keys/version", &json!({"auth_data": {}}))
        .expect_err(400, "M_BAD_JSON");
    alice
        .post(
            "/room_keys/version",
            &json!({"algorithm": ALG, "auth_data": "x"}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .raw("POST", "/room_keys/version", Some(b"{not json".to_vec()))
        .expect_err(400, "M_NOT_JSON");
    srv.anonymous()
        .get("/room_keys/version")
        .expect_err(401, "M_MISSING_TOKEN");
    let v = alice
        .post(
            "/room_keys/version",
            &json!({"algorithm": ALG, "auth_data": {}}),
        )
        .ok()["version"]
        .as_str()
        .expect("version")
        .to_owned();
    // The version is required on key requests.
    alice
        .get("/room_keys/keys")
        .expect_err(400, "M_MISSING_PARAM");
    alice
        .get("/room_keys/keys?version=abc")
        .expect_err(404, "M_NOT_FOUND");
    alice
        .get("/room_keys/version/abc")
        .expect_err(404, "M_NOT_FOUND");
    // Malformed key data and room IDs.
    let room = enc("!r:weft.test");
    alice
        .put(
            &format!("/room_keys/keys/{room}/s?version={v}"),
            &json!({"first_message_index": "1", "forwarded_count": 0, "is_verified": true, "session_data": {}}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(
            &format!("/room_keys/keys/{room}/s?version={v}"),
            &json!({"first_message_index": 1, "forwarded_count": 0, "is_verified": true}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(
            &format!("/room_keys/keys?version={v}"),
            &json!({"rooms": {"not-a-room": {"sessions": {}}}}),
        )
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(
            &format!("/room_keys/keys?version={v}"),
            &json!({"rooms": []}),
        )
        .expect_err(400, "M_BAD_JSON");
    // Nothing was stored by the refused requests.
    assert_eq!(alice.get("/room_keys/version").ok()["count"], 0);
    srv.assert_no_panics();
}
