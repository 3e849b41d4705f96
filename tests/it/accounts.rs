//! Account features web clients use: room tags, deleting account data, `/account/3pid`,
//! deactivation (rooms left, devices, tokens and keys removed, later logins refused) and
//! devices' last-seen time and address (batched in memory, written periodically).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::both_backends;
use crate::client::enc;
use crate::harness::{Backend, Options, Server};

const WAIT: Duration = Duration::from_secs(20);

both_backends!(
    room_tags,
    account_data_delete,
    deactivation,
    devices_last_seen
);

fn room_tags(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({}));
    let me = enc(&alice.user_id);
    let base = format!("/user/{me}/rooms/{}/tags", enc(&room));
    assert_eq!(alice.get(&base).ok()["tags"], json!({}));
    alice
        .put(&format!("{base}/u.work"), &json!({"order": 0.25}))
        .ok();
    alice.put(&format!("{base}/m.favourite"), &json!({})).ok();
    let tags = alice.get(&base).ok()["tags"].clone();
    assert_eq!(tags["u.work"]["order"], 0.25);
    assert!(tags["m.favourite"].is_object());
    // Tags reach /sync as the room's m.tag account data.
    let sync = alice.sync(None, 0, None);
    let events = sync["rooms"]["join"][&room]["account_data"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tag_event = events
        .iter()
        .find(|e| e["type"] == "m.tag")
        .expect("m.tag in the room's account data");
    assert_eq!(tag_event["content"]["tags"]["u.work"]["order"], 0.25);
    alice.delete(&format!("{base}/u.work")).ok();
    let tags = alice.get(&base).ok()["tags"].clone();
    assert!(tags.get("u.work").is_none());
    assert!(tags["m.favourite"].is_object());
    // Deleting a tag that is not there is fine.
    alice.delete(&format!("{base}/u.none")).ok();

    // Bad input.
    alice
        .put(&format!("{base}/u.x"), &json!({"order": "first"}))
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(&format!("{base}/u.x"), &json!([1]))
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(&format!("{base}/{}", "x".repeat(300)), &json!({}))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(&format!("/user/{me}/rooms/not-a-room/tags/u.x"), &json!({}))
        .expect_err(400, "M_INVALID_PARAM");
    let bob = srv.register("bob");
    bob.get(&base).expect_err(403, "M_FORBIDDEN");
    bob.put(&format!("{base}/u.evil"), &json!({}))
        .expect_err(403, "M_FORBIDDEN");
    srv.assert_no_panics();
}

fn account_data_delete(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let me = enc(&alice.user_id);
    let path = format!("/user/{me}/account_data/org.example.pref");
    alice.put(&path, &json!({"theme": "dark"})).ok();
    let first = alice.sync(None, 0, None);
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    assert_eq!(alice.get(&path).ok()["theme"], "dark");
    alice.delete(&path).ok();
    alice.get(&path).expect_err(404, "M_NOT_FOUND");
    // The deletion reaches /sync as empty content.
    let mut since = Some(since);
    alice.sync_until(&mut since, WAIT, "the deletion", |s| {
        s["account_data"]["events"].as_array().is_some_and(|ev| {
            ev.iter()
                .any(|e| e["type"] == "org.example.pref" && e["content"] == json!({}))
        })
    });
    // Room account data, and the unstable MSC3391 path.
    let room = alice.create_room(&json!({}));
    let rpath = format!("/user/{me}/rooms/{}/account_data/org.example.r", enc(&room));
    alice.put(&rpath, &json!({"a": 1})).ok();
    alice
        .delete(&format!(
            "/_matrix/client/unstable/org.matrix.msc3391/user/{me}/rooms/{}/account_data/org.example.r",
            enc(&room)
        ))
        .ok();
    alice.get(&rpath).expect_err(404, "M_NOT_FOUND");
    // Another user's data cannot be deleted.
    let bob = srv.register("bob");
    bob.delete(&path).expect_err(403, "M_FORBIDDEN");
    // /versions advertises the deletion (MSC3391).
    let v = srv.anonymous().get("/_matrix/client/versions").ok();
    assert_eq!(v["unstable_features"]["org.matrix.msc3391"], true);
    // 3pids: none, but the endpoint answers.
    assert_eq!(alice.get("/account/3pid").ok()["threepids"], json!([]));
    srv.assert_no_panics();
}

fn deactivation(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({}));
    alice.invite(&room, &bob.user_id).ok();
    bob.join(&room).ok();
    let invited_room = alice.create_room(&json!({}));
    alice.invite(&invited_room, &bob.user_id).ok();
    // A second device, device keys, a key backup.
    let mut phone = srv.anonymous();
    phone.login("bob", "pw-bob");
    bob.post(
        "/keys/upload",
        &json!({"device_keys": {"user_id": bob.user_id, "device_id": bob.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {format!("ed25519:{}", bob.device_id): "k"}, "signatures": {}}}),
    )
    .ok();
    assert_eq!(
        srv.query_text(
            "SELECT device_id AS v FROM e2e_device_keys WHERE user_id = ?",
            &bob.user_id
        )
        .len(),
        1
    );
    bob.post(
        "/room_keys/version",
        &json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {}}),
    )
    .ok();

    // Deactivation asks for the password.
    let challenge = bob.post("/account/deactivate", &json!({}));
    assert_eq!(challenge.status, 401, "{}", challenge.text);
    assert!(challenge.body["flows"].is_array());
    bob.post(
        "/account/deactivate",
        &json!({"auth": {"type": "m.login.password", "password": "wrong",
                         "identifier": {"type": "m.id.user", "user": "bob"}}}),
    )
    .expect_err(403, "M_FORBIDDEN");
    let done = bob
        .post(
            "/account/deactivate",
            &json!({"auth": {"type": "m.login.password", "password": "pw-bob",
                             "identifier": {"type": "m.id.user", "user": "bob"}}}),
        )
        .ok();
    assert_eq!(done["id_server_unbind_result"], "no-support");

    // Every token is gone, and logging in again is refused.
    bob.get("/account/whoami")
        .expect_err(401, "M_UNKNOWN_TOKEN");
    phone
        .get("/account/whoami")
        .expect_err(401, "M_UNKNOWN_TOKEN");
    let login = srv.anonymous().post(
        "/login",
        &json!({"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw-bob"}),
    );
    login.expect_err(403, "M_USER_DEACTIVATED");
    let login = srv.anonymous().post(
        "/login",
        &json!({"type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "bob"}, "password": "nope"}),
    );
    login.expect_err(403, "M_FORBIDDEN");

    // Bob left the joined room and declined the invite.
    let members = alice.get(&format!("/rooms/{}/members", enc(&room))).ok();
    let bob_member = members["chunk"]
        .as_array()
        .and_then(|c| c.iter().find(|e| e["state_key"] == bob.user_id.as_str()))
        .cloned()
        .expect("bob's membership");
    assert_eq!(bob_member["content"]["membership"], "leave");
    let state = alice
        .get(&format!(
            "/rooms/{}/state/m.room.member/{}",
            enc(&invited_room),
            enc(&bob.user_id)
        ))
        .ok();
    assert_eq!(state["membership"], "leave");

    // Devices, device keys and the backup are gone.
    assert!(
        srv.query_text(
            "SELECT device_id AS v FROM devices WHERE user_id = ?",
            &bob.user_id
        )
        .is_empty()
    );
    assert!(
        srv.query_text(
            "SELECT device_id AS v FROM e2e_device_keys WHERE user_id = ?",
            &bob.user_id
        )
        .is_empty()
    );
    assert!(
        srv.query_text(
            "SELECT user_id AS v FROM backup_versions WHERE user_id = ? AND deleted = FALSE",
            &bob.user_id
        )
        .is_empty()
    );
    let keys = alice
        .post(
            "/keys/query",
            &json!({"device_keys": {bob.user_id.as_str(): []}}),
        )
        .ok();
    assert_eq!(
        keys["device_keys"][bob.user_id.as_str()]
            .as_object()
            .map(|m| m.len())
            .unwrap_or(0),
        0
    );
    // The user ID is not free again.
    srv.anonymous()
        .post(
            "/register",
            &json!({"username": "bob", "password": "x", "auth": {"type": "m.login.dummy"}}),
        )
        .expect_err(400, "M_USER_IN_USE");
    srv.assert_no_panics();
}

fn devices_last_seen(backend: Backend) {
    let srv = Server::start_with(
        backend,
        Options {
            extra_toml: "[devices]\nlast_seen_flush_ms = 100\n".into(),
            ..Options::default()
        },
    );
    let alice = srv.register("alice");
    alice.get("/account/whoami").ok();
    let devices = alice.get("/devices").ok();
    let dev = &devices["devices"][0];
    assert_eq!(dev["device_id"], alice.device_id.as_str());
    assert_eq!(dev["last_seen_ip"], "127.0.0.1");
    assert!(dev["last_seen_ts"].as_i64().is_some_and(|t| t > 0));
    // The batch reaches the database without a write per request.
    let deadline = Instant::now() + WAIT;
    loop {
        let ips = srv.query_text(
            "SELECT last_seen_ip AS v FROM devices WHERE user_id = ? AND last_seen_ip IS NOT NULL",
            &alice.user_id,
        );
        if ips == vec!["127.0.0.1".to_owned()] {
            break;
        }
        assert!(Instant::now() < deadline, "last_seen_ip never written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let one = alice
        .get(&format!("/devices/{}", enc(&alice.device_id)))
        .ok();
    assert_eq!(one["last_seen_ip"], "127.0.0.1");
    srv.assert_no_panics();
}
