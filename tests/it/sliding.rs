//! Simplified sliding sync (MSC4186) over HTTP: room lists with ranges, recency order and
//! filters; full then incremental room data by `pos`; long-poll wake-ups; required state
//! with `$ME`, `$LAZY` and wildcards; room subscriptions; the to_device, e2ee,
//! account_data, receipts and typing extensions; and refusals of bad `pos` and bodies.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{Client, enc, q};
use crate::harness::{Backend, Server};

both_backends!(
    room_list_in_recency_order_then_deltas,
    long_poll_wakes_on_a_message,
    long_poll_waits_after_a_counted_message,
    list_filters,
    required_state_and_subscriptions,
    extensions,
    bad_positions_and_bodies,
);

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

fn ss(c: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={}", q(p)));
    }
    c.post(&path, body).ok()
}

fn list_ids(resp: &Value, list: &str) -> Vec<String> {
    resp["lists"][list]["ops"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|op| op["room_ids"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn all_rooms(range_end: u64, timeline_limit: u64) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": {"all": {
            "ranges": [[0, range_end]],
            "timeline_limit": timeline_limit,
            "required_state": [["m.room.name", ""], ["m.room.member", "$ME"]],
        }},
    })
}

fn room_list_in_recency_order_then_deltas(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let rooms: Vec<String> = (0..3)
        .map(|i| {
            let r = alice.create_room(&json!({"name": format!("room {i}")}));
            alice.send_text(&r, &format!("hello {i}"));
            r
        })
        .collect();
    let first = ss(&alice, None, 0, &all_rooms(1, 2));
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    // Newest activity first; the range shows two.
    assert_eq!(
        list_ids(&first, "all"),
        vec![rooms[2].clone(), rooms[1].clone()]
    );
    let r2 = &first["rooms"][&rooms[2]];
    assert_eq!(r2["initial"], true);
    assert_eq!(r2["name"], "room 2");
    assert_eq!(bodies(&r2["timeline"]), vec!["hello 2"]);
    assert_eq!(r2["timeline"].as_array().unwrap().len(), 2, "{r2}");
    assert_eq!(r2["limited"], true);
    assert!(r2["prev_batch"].is_string());
    assert_eq!(r2["joined_count"], 1);
    assert!(r2["bump_stamp"].as_u64().is_some());
    assert!(
        r2["bump_stamp"].as_u64() > first["rooms"][&rooms[1]]["bump_stamp"].as_u64(),
        "{first}"
    );
    let state = r2["required_state"].as_array().unwrap();
    assert!(state.iter().any(|e| e["type"] == "m.room.name"));
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str())
    );
    assert!(
        !state.iter().any(|e| e["type"] == "m.room.create"),
        "not asked for"
    );
    assert!(first["rooms"][&rooms[0]].is_null(), "outside the range");
    // The prev_batch token pages back with /messages.
    let older = alice.messages(&rooms[2], r2["prev_batch"].as_str(), "b", 10);
    assert!(!older["chunk"].as_array().unwrap().is_empty(), "{older}");

    // The oldest room gets a message: it moves up, and comes in full (never sent before).
    let pos = first["pos"].as_str().unwrap().to_owned();
    alice.send_text(&rooms[0], "news");
    let second = ss(&alice, Some(&pos), 0, &all_rooms(1, 2));
    assert_eq!(
        list_ids(&second, "all"),
        vec![rooms[0].clone(), rooms[2].clone()]
    );
    let r0 = &second["rooms"][&rooms[0]];
    assert_eq!(r0["initial"], true, "{second}");
    assert_eq!(bodies(&r0["timeline"]), vec!["hello 0", "news"]);
    assert!(
        second["rooms"][&rooms[2]].is_null(),
        "nothing new there: {second}"
    );

    // A room sent before gets only what is new.
    let pos = second["pos"].as_str().unwrap().to_owned();
    alice.send_text(&rooms[2], "more");
    alice
        .put_state(&rooms[2], "m.room.name", "", &json!({"name": "renamed"}))
        .ok();
    let third = ss(&alice, Some(&pos), 0, &all_rooms(1, 2));
    let r2 = &third["rooms"][&rooms[2]];
    assert!(r2.get("initial").is_none_or(|i| i == false), "{r2}");
    assert_eq!(r2["name"], "renamed");
    assert_eq!(bodies(&r2["timeline"]), vec!["more"]);
    assert_eq!(r2["num_live"], 2, "{r2}");
    assert_eq!(r2["limited"], false);
    // The same request again with the older pos (a lost response) answers the same.
    let again = ss(&alice, Some(&pos), 0, &all_rooms(1, 2));
    assert_eq!(bodies(&again["rooms"][&rooms[2]]["timeline"]), vec!["more"]);
    // A wider range brings the last room in, in full.
    let pos = third["pos"].as_str().unwrap().to_owned();
    let wide = ss(&alice, Some(&pos), 0, &all_rooms(10, 1));
    assert_eq!(list_ids(&wide, "all").len(), 3);
    assert!(wide["rooms"][&rooms[1]]["initial"] == true, "{wide}");
    srv.assert_no_panics();
}

fn long_poll_wakes_on_a_message(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&room).ok();
    // A second room, sent once and quiet since: its older position must not make the first
    // room's count change look new on every later long-poll.
    let quiet = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&quiet).ok();
    let first = ss(&bob, None, 0, &all_rooms(10, 5));
    let pos = first["pos"].as_str().unwrap().to_owned();
    // Nothing new: the long-poll waits out its timeout and answers.
    let t0 = Instant::now();
    let idle = ss(&bob, Some(&pos), 1_500, &all_rooms(10, 5));
    assert!(
        t0.elapsed() >= Duration::from_millis(1_400),
        "returned early: {idle}"
    );
    assert!(
        idle["rooms"].as_object().is_none_or(|r| r.is_empty()),
        "{idle}"
    );
    let pos = idle["pos"].as_str().unwrap().to_owned();
    let poller = bob.clone_session();
    let waiter = std::thread::spawn(move || {
        let t0 = Instant::now();
        let r = ss(&poller, Some(&pos), 25_000, &all_rooms(10, 5));
        (r, t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    alice.send_text(&room, "wake up");
    let (r, took) = waiter.join().expect("long-poll thread");
    assert!(took < Duration::from_secs(20), "not woken: {took:?}");
    assert_eq!(
        bodies(&r["rooms"][&room]["timeline"]),
        vec!["wake up"],
        "{r}"
    );
    // After the wake-up the long-poll waits again: the push worker's count for the message may
    // end one more poll (the room with its new count), never every poll after it.
    let mut pos = r["pos"].as_str().unwrap().to_owned();
    let mut answers = Vec::new();
    let waited = (0..3).any(|_| {
        let t0 = Instant::now();
        let r = ss(&bob, Some(&pos), 1_000, &all_rooms(10, 5));
        pos = r["pos"].as_str().unwrap().to_owned();
        let waited = t0.elapsed() >= Duration::from_millis(900);
        answers.push(r);
        waited
    });
    assert!(waited, "three long-polls answered at once: {answers:?}");
    srv.assert_no_panics();
}

/// Element X's room list (as `tools/bench_sliding.py` sends it): bob alone in most of his
/// rooms, alice joining one and writing there. The push worker's count for her message lands
/// behind it; the room is sent again with its count once, and then the long-poll waits.
fn long_poll_waits_after_a_counted_message(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let rooms: Vec<String> = (0..3)
        .map(|i| bob.create_room(&json!({"preset": "public_chat", "name": format!("room {i}")})))
        .collect();
    let body = json!({
        "conn_id": "room-list",
        "lists": {"all_rooms": {
            "ranges": [[0, 19]], "timeline_limit": 1,
            "required_state": [["m.room.name", ""], ["m.room.member", "$ME"]],
        }},
        "extensions": {
            "account_data": {"enabled": true},
            "receipts": {"enabled": true, "rooms": ["*"]},
            "typing": {"enabled": true},
        },
    });
    let first = ss(&bob, None, 0, &body);
    let mut pos = first["pos"].as_str().unwrap().to_owned();
    alice.join(&rooms[0]).ok();
    alice.send_text(&rooms[0], "counted");
    // Read until the message and its count have both been sent.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = ss(&bob, Some(&pos), 1_000, &body);
        pos = r["pos"].as_str().unwrap().to_owned();
        if r["rooms"][&rooms[0]]["notification_count"] == json!(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the count never came: {r}");
    }
    let mut answers = Vec::new();
    let waited = (0..3).any(|_| {
        let t0 = Instant::now();
        let r = ss(&bob, Some(&pos), 1_000, &body);
        pos = r["pos"].as_str().unwrap().to_owned();
        let waited = t0.elapsed() >= Duration::from_millis(900);
        answers.push(r);
        waited
    });
    assert!(waited, "three long-polls answered at once: {answers:?}");
    srv.assert_no_panics();
}

fn list_filters(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let plain = bob.create_room(&json!({"name": "plain"}));
    let encrypted = bob.create_room(&json!({"name": "secret", "initial_state": [
        {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}
    ]}));
    let space = bob.create_room(&json!({"name": "space", "creation_content": {"type": "m.space"}}));
    bob.put_state(
        &space,
        "m.space.child",
        &plain,
        &json!({"via": [srv.server_name.clone()]}),
    )
    .ok();
    let dm = alice.create_room(&json!({"is_direct": true, "invite": [bob.user_id.clone()]}));
    bob.join(&dm).ok();
    bob.put(
        &format!("/user/{}/account_data/m.direct", enc(&bob.user_id)),
        &json!({alice.user_id.clone(): [dm.clone()]}),
    )
    .ok();
    let invite = alice.create_room(&json!({"name": "come in"}));
    alice.invite(&invite, &bob.user_id).ok();

    let list =
        |filters: Value| json!({"ranges": [[0, 20]], "timeline_limit": 0, "filters": filters});
    let resp = ss(
        &bob,
        None,
        0,
        &json!({"lists": {
            "all": list(json!({})),
            "dms": list(json!({"is_dm": true})),
            "not_dms": list(json!({"is_dm": false})),
            "encrypted": list(json!({"is_encrypted": true})),
            "invites": list(json!({"is_invite": true})),
            "spaces": list(json!({"room_types": ["m.space"]})),
            "no_spaces": list(json!({"not_room_types": ["m.space"]})),
            "in_space": list(json!({"spaces": [space.clone()]})),
        }}),
    );
    let set = |name: &str| {
        let mut v = list_ids(&resp, name);
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(resp["lists"]["all"]["count"], 5, "{resp}");
    assert_eq!(set("dms"), vec![dm.clone()]);
    assert_eq!(set("not_dms").len(), 4);
    assert_eq!(set("encrypted"), vec![encrypted.clone()]);
    assert_eq!(set("invites"), vec![invite.clone()]);
    assert_eq!(set("spaces"), vec![space.clone()]);
    assert_eq!(
        set("no_spaces"),
        sorted(vec![
            plain.clone(),
            encrypted.clone(),
            dm.clone(),
            invite.clone()
        ])
    );
    assert_eq!(set("in_space"), vec![plain.clone()]);
    // The invite carries its stripped state, naming the inviter.
    let inv = &resp["rooms"][&invite];
    assert_eq!(inv["name"], "come in");
    let stripped = inv["invite_state"].as_array().unwrap();
    assert!(
        stripped
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str())
    );
    assert!(stripped.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == bob.user_id.as_str()
        && e["content"]["membership"] == "invite"));
    // Unnamed DM: heroes name the other member.
    let heroes = resp["rooms"][&dm]["heroes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        heroes
            .iter()
            .any(|h| h["user_id"] == alice.user_id.as_str()),
        "{}",
        resp["rooms"][&dm]
    );
    assert_eq!(resp["rooms"][&dm]["is_dm"], true);
    srv.assert_no_panics();
}

fn required_state_and_subscriptions(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let carol = srv.register("carol");
    let room = alice.create_room(&json!({"preset": "public_chat", "name": "busy", "topic": "t"}));
    bob.join(&room).ok();
    carol.join(&room).ok();
    let quiet = alice.create_room(&json!({"name": "quiet"}));
    let elsewhere = carol.create_room(&json!({"name": "not alice's"}));
    bob.send_text(&room, "from bob");
    let body = json!({
        "lists": {"one": {"ranges": [[0, 0]], "timeline_limit": 1, "required_state": [
            ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.topic", "*"],
        ]}},
        "room_subscriptions": {
            quiet.clone(): {"timeline_limit": 3, "required_state": [["*", "*"]]},
            elsewhere.clone(): {"timeline_limit": 3, "required_state": [["*", "*"]]},
        },
    });
    // `room` is the newest (bob's message), so the one-room window holds it.
    let resp = ss(&alice, None, 0, &body);
    assert_eq!(list_ids(&resp, "one"), vec![room.clone()]);
    let state = resp["rooms"][&room]["required_state"].as_array().unwrap();
    let members: Vec<&str> = state
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(
        members.contains(&bob.user_id.as_str()),
        "$LAZY: the sender: {members:?}"
    );
    assert!(members.contains(&alice.user_id.as_str()), "$ME");
    assert!(
        !members.contains(&carol.user_id.as_str()),
        "carol sent nothing shown"
    );
    assert!(state.iter().any(|e| e["type"] == "m.room.topic"));
    assert!(!state.iter().any(|e| e["type"] == "m.room.name"));
    // The subscription brings a room outside the window, with all its state.
    let quiet_state = resp["rooms"][&quiet]["required_state"].as_array().unwrap();
    assert!(quiet_state.iter().any(|e| e["type"] == "m.room.create"));
    assert!(quiet_state.iter().any(|e| e["type"] == "m.room.name"));
    assert!(resp["rooms"][&elsewhere].is_null(), "not alice's room");
    // Later: carol speaks; her member event comes lazily with her message.
    let pos = resp["pos"].as_str().unwrap().to_owned();
    carol.send_text(&room, "from carol");
    let next = ss(&alice, Some(&pos), 0, &body);
    let r = &next["rooms"][&room];
    assert_eq!(bodies(&r["timeline"]), vec!["from carol"], "{next}");
    assert!(
        r["required_state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == carol.user_id.as_str()),
        "{r}"
    );
    srv.assert_no_panics();
}

fn extensions(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&room).ok();
    let msg = alice.send_text(&room, "read me");
    bob.post(
        "/keys/upload",
        &json!({"one_time_keys": {
            "signed_curve25519:AAAA": {"key": "k1", "signatures": {}},
            "signed_curve25519:AAAB": {"key": "k2", "signatures": {}},
        }}),
    );
    alice
        .put(
            &format!("/sendToDevice/m.test/{}", alice.next_txn()),
            &json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"hello": "bob"}}}}),
        )
        .ok();
    alice
        .post(
            &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&msg)),
            &json!({}),
        )
        .ok();
    bob.put(
        &format!(
            "/user/{}/account_data/org.example.global",
            enc(&bob.user_id)
        ),
        &json!({"a": 1}),
    )
    .ok();
    bob.put(
        &format!(
            "/user/{}/rooms/{}/account_data/org.example.room",
            enc(&bob.user_id),
            enc(&room)
        ),
        &json!({"b": 2}),
    )
    .ok();
    let body = |since: Option<&str>| {
        let mut td = json!({"enabled": true});
        if let Some(s) = since {
            td["since"] = json!(s);
        }
        json!({
            "lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1}},
            "extensions": {
                "to_device": td, "e2ee": {"enabled": true},
                "account_data": {"enabled": true}, "receipts": {"enabled": true},
                "typing": {"enabled": true},
            },
        })
    };
    let first = ss(&bob, None, 0, &body(None));
    let ext = &first["extensions"];
    let td = ext["to_device"]["events"].as_array().unwrap();
    assert_eq!(td.len(), 1, "{ext}");
    assert_eq!(td[0]["content"]["hello"], "bob");
    assert_eq!(td[0]["sender"], alice.user_id.as_str());
    assert_eq!(
        ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 2,
        "{ext}"
    );
    assert!(ext["e2ee"]["device_unused_fallback_key_types"].is_array());
    assert!(
        ext["account_data"]["global"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "org.example.global")
    );
    assert_eq!(
        ext["account_data"]["rooms"][&room][0]["type"], "org.example.room",
        "{ext}"
    );
    assert!(
        ext["receipts"]["rooms"][&room]["content"][&msg]["m.read"][&alice.user_id].is_object(),
        "{ext}"
    );
    // Acknowledged by `since`: not delivered again.
    let pos = first["pos"].as_str().unwrap().to_owned();
    let next_batch = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();
    let second = ss(&bob, Some(&pos), 0, &body(Some(&next_batch)));
    assert!(
        second["extensions"]["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{second}"
    );
    // Typing wakes a long-poll and shows.
    let pos = second["pos"].as_str().unwrap().to_owned();
    let nb = second["extensions"]["to_device"]["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let poller = bob.clone_session();
    let waiter = std::thread::spawn(move || ss(&poller, Some(&pos), 20_000, &body(Some(&nb))));
    std::thread::sleep(Duration::from_millis(300));
    alice
        .put(
            &format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            &json!({"typing": true, "timeout": 10000}),
        )
        .ok();
    let typed = waiter.join().expect("thread");
    let users = &typed["extensions"]["typing"]["rooms"][&room]["content"]["user_ids"];
    assert_eq!(users, &json!([alice.user_id.clone()]), "{typed}");
    srv.assert_no_panics();
}

fn bad_positions_and_bodies(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    alice.create_room(&json!({}));
    let first = ss(&alice, None, 0, &all_rooms(5, 1));
    let pos = first["pos"].as_str().unwrap().to_owned();
    let post =
        |c: &Client, pos: &str, body: &Value| c.post(&format!("{PATH}?pos={}", q(pos)), body);
    // Never issued, from another user, from another connection: unknown.
    post(&alice, &format!("{pos}9"), &all_rooms(5, 1)).expect_err(400, "M_UNKNOWN_POS");
    post(&bob, &pos, &all_rooms(5, 1)).expect_err(400, "M_UNKNOWN_POS");
    let mut other = all_rooms(5, 1);
    other["conn_id"] = json!("encryption");
    post(&alice, &pos, &other).expect_err(400, "M_UNKNOWN_POS");
    // Malformed.
    post(&alice, "garbage", &all_rooms(5, 1)).expect_err(400, "M_INVALID_PARAM");
    // Bodies: not JSON, wrong shapes, a bad room ID, a bad conn_id.
    let r = alice.raw("POST", PATH, Some(b"{not json".to_vec()));
    assert_eq!(r.status, 400, "{}", r.text);
    alice
        .post(PATH, &json!({"lists": {"l": {"ranges": [[0]]}}}))
        .expect_err(400, "M_BAD_JSON");
    alice
        .post(PATH, &json!({"room_subscriptions": {"nope": {}}}))
        .expect_err(400, "M_BAD_JSON");
    alice
        .post(PATH, &json!({"conn_id": 5}))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .post(PATH, &json!({"conn_id": "x".repeat(500)}))
        .expect_err(400, "M_INVALID_PARAM");
    // Without a token.
    srv.anonymous()
        .post(PATH, &all_rooms(5, 1))
        .expect_err(401, "M_MISSING_TOKEN");
    // The good pos still works after all that.
    assert!(post(&alice, &pos, &all_rooms(5, 1)).ok()["pos"].is_string());
    // /versions advertises the feature.
    let v = srv.anonymous().get("/_matrix/client/versions").ok();
    assert_eq!(
        v["unstable_features"]["org.matrix.simplified_msc3575"],
        true
    );
    srv.assert_no_panics();
}
