//! End-to-end encryption relay over HTTP: keys, claims, to-device messages, device-list
//! changes in `/sync` and `/keys/changes`, cross-signing with its UIA rule, device deletion,
//! and to-device messages surviving a restart.
//!
//! Wire-in for `tests/it/main.rs`: `mod e2ee;` (uses `harness`, `client` and
//! `both_backends!` only; keys are signed with `weft_protocol::keys::ServerSigningKey`, a
//! dependency of the weft package, so no new dev-dependency is needed).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_protocol::keys::ServerSigningKey;

use crate::both_backends;
use crate::client::{Client, enc, q};
use crate::harness::{Backend, Server};

const WAIT: Duration = Duration::from_secs(20);

both_backends!(
    keys_claims_and_to_device,
    device_list_changes_wake_sync,
    cross_signing_and_signatures,
    deleting_a_device_removes_its_keys,
    to_device_survives_a_restart,
);

fn next_batch(s: &Value) -> String {
    s["next_batch"].as_str().expect("next_batch").to_owned()
}

fn device_keys(c: &Client, curve: &str, ed: &str) -> Value {
    json!({
        "user_id": c.user_id,
        "device_id": c.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {format!("curve25519:{}", c.device_id): curve, format!("ed25519:{}", c.device_id): ed},
    })
}

fn otks(prefix: &str, n: usize) -> Value {
    let mut m = serde_json::Map::new();
    for i in 0..n {
        m.insert(
            format!("signed_curve25519:{prefix}{i:03}"),
            json!({"key": format!("key-{prefix}-{i}"), "signatures": {}}),
        );
    }
    Value::Object(m)
}

/// Alice and Bob share a room; both did an initial sync.
fn two_in_a_room(srv: &Server) -> (Client, Client, String) {
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "private_chat", "invite": [bob.user_id]}));
    bob.join(&room).ok();
    (alice, bob, room)
}

fn claim(c: &Client, user: &str, device: &str) -> Value {
    c.post(
        "/keys/claim",
        &json!({"one_time_keys": {user: {device: "signed_curve25519"}}}),
    )
    .ok()
}

fn claimed_id(answer: &Value, user: &str, device: &str) -> Option<String> {
    answer["one_time_keys"][user][device]
        .as_object()
        .and_then(|m| m.keys().next().cloned())
}

fn keys_and_to_device_test(srv: &Server) {
    let (alice, bob, _room) = two_in_a_room(srv);
    // Upload through the r0 prefix, as Hydrogen does.
    let up = bob
        .post(
            "/_matrix/client/r0/keys/upload",
            &json!({"device_keys": device_keys(&bob, "curve-b", "ed-b"), "one_time_keys": otks("a", 3)}),
        )
        .ok();
    assert_eq!(up, json!({"one_time_key_counts": {"signed_curve25519": 3}}));

    let query = alice
        .post("/keys/query", &json!({"device_keys": {&bob.user_id: []}}))
        .ok();
    let dev = &query["device_keys"][&bob.user_id][&bob.device_id];
    assert_eq!(
        dev["keys"][format!("curve25519:{}", bob.device_id)],
        "curve-b"
    );
    assert!(dev["unsigned"].is_object(), "unsigned is added: {dev}");
    assert_eq!(query["failures"], json!({}));

    // Each claim hands out a different key, oldest upload first, until none is left.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let id = claimed_id(
            &claim(&alice, &bob.user_id, &bob.device_id),
            &bob.user_id,
            &bob.device_id,
        )
        .expect("a key");
        assert!(!seen.contains(&id), "{id} handed out twice");
        seen.push(id);
    }
    assert_eq!(
        claim(&alice, &bob.user_id, &bob.device_id)["one_time_keys"],
        json!({})
    );
    // Bob's sync reports the count (0 included).
    let s = bob.sync(None, 0, None);
    assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 0);
    assert!(s["device_unused_fallback_key_types"].is_array());

    // A fallback key is handed out once the one-time keys are gone, and stays.
    bob.post(
        "/keys/upload",
        &json!({"fallback_keys": {"signed_curve25519:FB": {"key": "fb", "fallback": true, "signatures": {}}}}),
    )
    .ok();
    assert_eq!(
        bob.sync(None, 0, None)["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );
    for _ in 0..2 {
        let a = claim(&alice, &bob.user_id, &bob.device_id);
        assert_eq!(
            claimed_id(&a, &bob.user_id, &bob.device_id).as_deref(),
            Some("signed_curve25519:FB")
        );
    }
    assert_eq!(
        bob.sync(None, 0, None)["device_unused_fallback_key_types"],
        json!([])
    );

    // To-device: delivered once, acknowledged by the next since, idempotent per txn.
    let mut b_since = Some(next_batch(&bob.sync(None, 0, None)));
    let path = format!("/sendToDevice/{}/{}", enc("m.test"), "txn-1");
    let body = json!({"messages": {&bob.user_id: {"*": {"n": 1}}}});
    alice.put(&path, &body).ok();
    alice.put(&path, &body).ok();
    let got = bob.sync_until(&mut b_since, WAIT, "the to-device message", |s| {
        !s["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty())
    });
    assert_eq!(
        got["to_device"]["events"],
        json!([{"sender": alice.user_id, "type": "m.test", "content": {"n": 1}}]),
        "one message, even though the request was sent twice"
    );
    let again = bob.sync(b_since.as_deref(), 0, None);
    assert_eq!(
        again["to_device"]["events"],
        json!([]),
        "acknowledged messages are gone"
    );

    // Bad input is a Matrix error.
    alice
        .put(
            &format!("/sendToDevice/m.test/{}", alice.next_txn()),
            &json!({"messages": {&bob.user_id: {"*": "not an object"}}}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .post("/keys/query", &json!({"device_keys": {"not-a-user": []}}))
        .expect_err(400, "M_INVALID_PARAM");
    bob.post("/keys/upload", &json!({"one_time_keys": {"no-colon": {}}}))
        .expect_err(400, "M_INVALID_PARAM");
    // A remote user's server is reported as a failure (no federation client wired yet).
    let remote = alice
        .post(
            "/keys/query",
            &json!({"device_keys": {"@x:remote.invalid": []}}),
        )
        .ok();
    assert!(remote["failures"]["remote.invalid"].is_object(), "{remote}");
}

fn keys_claims_and_to_device(backend: Backend) {
    let srv = Server::start(backend);
    keys_and_to_device_test(&srv);
    srv.assert_no_panics();
}

fn device_list_changes_wake_sync(backend: Backend) {
    let srv = Server::start(backend);
    let (alice, bob, room) = two_in_a_room(&srv);
    let op = srv.admin("operator");
    let since = next_batch(&alice.sync(None, 0, None));

    // A waiting sync of Alice's returns as soon as Bob uploads keys (sent once it parked).
    let waiter = alice.clone_session();
    let s2 = since.clone();
    let poll = std::thread::spawn(move || waiter.sync(Some(&s2), 15_000, None));
    srv.wait_parked_syncs(&op, 1);
    let started = Instant::now();
    bob.post(
        "/keys/upload",
        &json!({"device_keys": device_keys(&bob, "c", "e")}),
    )
    .ok();
    let woke = poll.join().expect("sync thread");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the key change woke the sync"
    );
    assert_eq!(woke["device_lists"]["changed"], json!([bob.user_id]));

    // /keys/changes over the same range agrees.
    let to = next_batch(&woke);
    let changes = alice
        .get(&format!("/keys/changes?from={}&to={}", q(&since), q(&to)))
        .ok();
    assert_eq!(changes["changed"], json!([bob.user_id]));

    // Carol joins: Alice and Bob see her as changed. Bob leaves: Alice sees him as left.
    let carol = srv.register("carol");
    alice.invite(&room, &carol.user_id).ok();
    carol.join(&room).ok();
    let mut a_since = Some(to);
    alice.sync_until(&mut a_since, WAIT, "carol in device_lists.changed", |s| {
        s["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == carol.user_id.as_str()))
    });
    bob.leave(&room).ok();
    alice.sync_until(&mut a_since, WAIT, "bob in device_lists.left", |s| {
        s["device_lists"]["left"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == bob.user_id.as_str()))
    });
    alice
        .get("/keys/changes?from=garbage&to=s1")
        .expect_err(400, "M_INVALID_PARAM");
    srv.assert_no_panics();
}

/// An ed25519 key for cross-signing in tests.
struct Key(ServerSigningKey);

impl Key {
    fn new(seed: u8) -> Self {
        Self(ServerSigningKey::from_seed([seed; 32], "t").expect("key"))
    }
    fn public(&self) -> String {
        self.0.public_key_b64()
    }
    fn id(&self) -> String {
        format!("ed25519:{}", self.public())
    }
    fn cross_signing(&self, user: &str, usage: &str) -> Value {
        json!({"user_id": user, "usage": [usage], "keys": {self.id(): self.public()}})
    }
    /// Signs `obj` (without `signatures`/`unsigned`, canonical JSON) as `user` with `key_id`.
    fn sign(&self, obj: &mut Value, user: &str, key_id: &str) {
        let mut unsigned = obj.clone();
        if let Some(o) = unsigned.as_object_mut() {
            o.remove("signatures");
            o.remove("unsigned");
        }
        let canonical = weft_protocol::canonical::value_to_object(unsigned).expect("canonical");
        let text = weft_protocol::canonical::to_string(&canonical);
        obj["signatures"][user][key_id] = json!(self.0.sign_b64(text.as_bytes()));
    }
}

fn cross_signing_and_signatures(backend: Backend) {
    let srv = Server::start(backend);
    let (alice, bob, _room) = two_in_a_room(&srv);
    let device = Key::new(9);
    let mut dk = device_keys(&alice, "curve-a", &device.public());
    device.sign(
        &mut dk,
        &alice.user_id,
        &format!("ed25519:{}", alice.device_id),
    );
    alice.post("/keys/upload", &json!({"device_keys": dk})).ok();

    let (master, ssk, usk) = (Key::new(1), Key::new(2), Key::new(3));
    let mut self_signing = ssk.cross_signing(&alice.user_id, "self_signing");
    master.sign(&mut self_signing, &alice.user_id, &master.id());
    let mut user_signing = usk.cross_signing(&alice.user_id, "user_signing");
    master.sign(&mut user_signing, &alice.user_id, &master.id());
    let upload = json!({
        "master_key": master.cross_signing(&alice.user_id, "master"),
        "self_signing_key": self_signing,
        "user_signing_key": user_signing,
    });
    // The first upload and an identical retry need no UIA.
    alice.post("/keys/device_signing/upload", &upload).ok();
    alice.post("/keys/device_signing/upload", &upload).ok();
    // A self-signing key the master key did not sign is refused.
    let bad =
        json!({"self_signing_key": Key::new(4).cross_signing(&alice.user_id, "self_signing")});
    alice
        .post("/keys/device_signing/upload", &bad)
        .expect_err(400, "M_INVALID_SIGNATURE");
    // Replacing the master key needs the password.
    let replace = json!({"master_key": Key::new(5).cross_signing(&alice.user_id, "master")});
    let challenge = alice.post("/keys/device_signing/upload", &replace);
    assert_eq!(challenge.status, 401, "{}", challenge.text);
    assert_eq!(
        challenge.body["flows"][0]["stages"],
        json!(["m.login.password"])
    );
    let mut with_auth = upload.clone();
    with_auth["auth"] = json!({
        "type": "m.login.password", "session": challenge.body["session"],
        "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": "pw-alice",
    });
    alice.post("/keys/device_signing/upload", &with_auth).ok();

    // Alice signs her device with the self-signing key; everyone sees that signature.
    let mut signed = dk_from_query(&alice, &alice.user_id, &alice.device_id);
    ssk.sign(&mut signed, &alice.user_id, &ssk.id());
    let answer = alice
        .post(
            "/keys/signatures/upload",
            &json!({&alice.user_id: {&alice.device_id: signed}}),
        )
        .ok();
    assert_eq!(answer["failures"], json!({}));
    let seen_by_bob = dk_from_query(&bob, &alice.user_id, &alice.device_id);
    assert!(
        seen_by_bob["signatures"][&alice.user_id][ssk.id()].is_string(),
        "{seen_by_bob}"
    );
    // Bob sees Alice's master and self-signing keys, not her user-signing key.
    let q = bob
        .post("/keys/query", &json!({"device_keys": {&alice.user_id: []}}))
        .ok();
    assert!(q["master_keys"][&alice.user_id].is_object());
    assert!(q["self_signing_keys"][&alice.user_id].is_object());
    assert!(q["user_signing_keys"].get(&alice.user_id).is_none(), "{q}");
    let own = alice
        .post("/keys/query", &json!({"device_keys": {&alice.user_id: []}}))
        .ok();
    assert!(own["user_signing_keys"][&alice.user_id].is_object());
    // A forged signature is reported per key.
    let mut forged = dk_from_query(&alice, &alice.user_id, &alice.device_id);
    forged["signatures"][&alice.user_id][ssk.id()] = json!("AAAA");
    let answer = alice
        .post(
            "/keys/signatures/upload",
            &json!({&alice.user_id: {&alice.device_id: forged}}),
        )
        .ok();
    assert_eq!(
        answer["failures"][&alice.user_id][&alice.device_id]["errcode"],
        "M_INVALID_SIGNATURE"
    );
    srv.assert_no_panics();
}

fn dk_from_query(c: &Client, user: &str, device: &str) -> Value {
    let q = c
        .post("/keys/query", &json!({"device_keys": {user: [device]}}))
        .ok();
    q["device_keys"][user][device].clone()
}

fn deleting_a_device_removes_its_keys(backend: Backend) {
    let srv = Server::start(backend);
    let (alice, bob, _room) = two_in_a_room(&srv);
    let mut bob2 = srv.anonymous();
    bob2.login("bob", "pw-bob");
    bob2.post(
        "/keys/upload",
        &json!({"device_keys": device_keys(&bob2, "c2", "e2"), "one_time_keys": otks("x", 2)}),
    )
    .ok();
    let since = next_batch(&alice.sync(None, 0, None));
    let path = format!("/devices/{}", enc(&bob2.device_id));
    let challenge = bob.raw("DELETE", &path, Some(b"{}".to_vec()));
    assert_eq!(challenge.status, 401, "{}", challenge.text);
    let auth = json!({"auth": {"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw-bob"}});
    bob.raw("DELETE", &path, Some(auth.to_string().into_bytes()))
        .ok();
    let mut a_since = Some(since);
    alice.sync_until(&mut a_since, WAIT, "bob's device deletion", |s| {
        s["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == bob.user_id.as_str()))
    });
    let q = alice
        .post("/keys/query", &json!({"device_keys": {&bob.user_id: []}}))
        .ok();
    assert!(
        q["device_keys"][&bob.user_id]
            .get(&bob2.device_id)
            .is_none(),
        "{q}"
    );
    assert_eq!(
        claim(&alice, &bob.user_id, &bob2.device_id)["one_time_keys"],
        json!({})
    );
    srv.assert_no_panics();
}

fn to_device_survives_a_restart(backend: Backend) {
    let mut srv = Server::start(backend);
    let (alice, bob, _room) = two_in_a_room(&srv);
    let since = next_batch(&bob.sync(None, 0, None));
    alice
        .put(
            "/sendToDevice/m.test/before",
            &json!({"messages": {&bob.user_id: {&bob.device_id: {"when": "before"}}}}),
        )
        .ok();
    srv.stop();
    srv.start_again();
    // After the restart, new stream positions come after the stored ones: a message sent
    // now is delivered after the one sent before.
    alice
        .put(
            "/sendToDevice/m.test/after",
            &json!({"messages": {&bob.user_id: {&bob.device_id: {"when": "after"}}}}),
        )
        .ok();
    // The retried transaction from before the restart is still recognised.
    alice
        .put(
            "/sendToDevice/m.test/before",
            &json!({"messages": {&bob.user_id: {&bob.device_id: {"when": "again"}}}}),
        )
        .ok();
    let s = bob.sync(Some(&since), 0, None);
    let whens: Vec<&Value> = s["to_device"]["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| &e["content"]["when"])
        .collect();
    assert_eq!(whens, vec!["before", "after"]);
    let later = bob.sync(Some(&next_batch(&s)), 0, None);
    assert_eq!(later["to_device"]["events"], json!([]));
    srv.assert_no_panics();
}
