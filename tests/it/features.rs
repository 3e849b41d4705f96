//! The rest of the client surface real clients use: idempotent transactions, long-poll
//! wake-ups, state, redaction, kick/ban/unban, profiles, aliases, filters, /context, the r0
//! prefix and CORS, logout, and registration being closed by default.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{bodies, enc, q, timeline};
use crate::harness::{Backend, Options, Server};

const WAIT: Duration = Duration::from_secs(20);

both_backends!(
    send_is_idempotent_per_device,
    sync_long_poll_wakes_on_new_events,
    woken_sync_answers_as_a_full_sync_would,
    state_put_and_get,
    redaction,
    kick_ban_unban,
    profile,
    aliases_and_join_by_alias,
    filters,
    context_around_an_event,
    r0_prefix_and_cors,
    logout_invalidates_the_token,
    registration_is_closed_by_default,
    idle_room_actor_stops_and_reloads_the_same_state,
);

fn send_is_idempotent_per_device(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({}));
    let content = json!({"msgtype": "m.text", "body": "once"});
    let first = alice
        .send_txn(&room, "m.room.message", "txn-1", &content)
        .ok();
    let again = alice
        .send_txn(&room, "m.room.message", "txn-1", &content)
        .ok();
    assert_eq!(first["event_id"], again["event_id"]);
    // A different body under the same transaction ID is still the same transaction.
    let third = alice
        .send_txn(&room, "m.room.message", "txn-1", &json!({"body": "other"}))
        .ok();
    assert_eq!(first["event_id"], third["event_id"]);
    // The same transaction ID from another device is another event.
    let mut phone = srv.anonymous();
    phone.login("alice", "pw-alice");
    assert_ne!(phone.device_id, alice.device_id);
    let other = phone
        .send_txn(&room, "m.room.message", "txn-1", &content)
        .ok();
    assert_ne!(first["event_id"], other["event_id"]);
    // A transaction ID is scoped to its path: reused in another room or for another event
    // type, it is a new request, not a retry.
    let room2 = alice.create_room(&json!({}));
    let elsewhere = alice
        .send_txn(&room2, "m.room.message", "txn-1", &content)
        .ok();
    assert_ne!(first["event_id"], elsewhere["event_id"]);
    let msgs2 = alice.all_messages(&room2, 50, 5);
    assert_eq!(
        bodies(&msgs2),
        vec!["once"],
        "the message to the second room was dropped"
    );
    let other_type = alice
        .send_txn(&room, "org.example.ping", "txn-1", &json!({}))
        .ok();
    assert_ne!(first["event_id"], other_type["event_id"]);
    assert_eq!(
        alice
            .send_txn(&room2, "m.room.message", "txn-1", &content)
            .ok()["event_id"],
        elsewhere["event_id"],
        "a retry in the second room is still recognised"
    );
    // Concurrent retries of one transaction give one event.
    let ids: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let c = alice.clone_session();
                let room = room.clone();
                s.spawn(move || {
                    c.send_txn(
                        &room,
                        "m.room.message",
                        "txn-race",
                        &json!({"body": "race"}),
                    )
                    .ok()["event_id"]
                        .clone()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let msgs = alice.all_messages(&room, 50, 5);
    assert_eq!(bodies(&msgs), vec!["once", "once", "race"]);
    // The sender sees its own transaction ID in unsigned; others do not.
    let ev = msgs
        .iter()
        .find(|e| e["event_id"] == first["event_id"])
        .unwrap();
    assert_eq!(ev["unsigned"]["transaction_id"], "txn-1");
    let seen_by_phone = phone.messages(&room, None, "b", 10);
    let ev = seen_by_phone["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == first["event_id"])
        .unwrap();
    assert!(ev["unsigned"].get("transaction_id").is_none(), "{ev}");
    srv.assert_no_panics();
}

/// Drops every `unsigned.age` (it grows between two reads of the same event).
fn without_age(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(u)) = m.get_mut("unsigned") {
                    u.remove("age");
                }
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// `weft_sync_woken_answers_total{path="<path>"}` from `/metrics` (0 when absent).
fn woken_answers(srv: &Server, path: &str) -> f64 {
    let r = srv.anonymous().get("/metrics");
    assert_eq!(r.status, 200, "/metrics: {}", r.text);
    let prefix = format!("weft_sync_woken_answers_total{{path=\"{path}\"}} ");
    r.text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A long-poll woken by new timeline events answers from the committed events
/// (`sync::wake`), and that answer is the body a full `/sync` from the same token gives:
/// others' events, the user's own (with the transaction ID on the sending device only),
/// state events, a relation to an older event, with filters (a room left out, a limit,
/// per-thread counts). The answers are counted by path, so the test knows which one it saw.
fn woken_sync_answers_as_a_full_sync_would(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let mut phone = srv.anonymous();
    phone.login("bob", "pw-bob");
    let op = srv.admin("operator");
    // Nothing notifies anyone, so the push worker moves no stream between the woken answer
    // and the full read it is compared with (push counts have their own tests).
    for user in [&alice, &bob] {
        for rule in [
            "underride/.m.rule.message",
            "underride/.m.rule.room_one_to_one",
        ] {
            user.put(
                &format!("/pushrules/global/{rule}/enabled"),
                &json!({"enabled": false}),
            )
            .ok();
        }
    }
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    let other = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&room).ok();
    bob.join(&other).ok();
    let first = alice.send_text(&room, "before");

    let filtered = json!({"room": {"not_rooms": [other], "timeline": {"limit": 3}}}).to_string();
    let threaded = json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string();
    type Act<'a> = Box<dyn Fn() + 'a>;
    let rounds: Vec<(&str, Option<&str>, Act)> = vec![
        (
            "alice's message",
            None,
            Box::new(|| {
                alice.send_text(&room, "hello bob");
            }),
        ),
        (
            "bob's own message",
            None,
            Box::new(|| {
                bob.send_text(&room, "from this device");
            }),
        ),
        (
            "bob's other device",
            None,
            Box::new(|| {
                phone.send_text(&room, "from the phone");
            }),
        ),
        (
            "a state event",
            None,
            Box::new(|| {
                alice
                    .put_state(&room, "m.room.topic", "", &json!({"topic": "t"}))
                    .ok();
            }),
        ),
        (
            "a reaction to an older event",
            None,
            Box::new(|| {
                alice.send(
                    &room,
                    "m.reaction",
                    &json!({"m.relates_to": {
                "rel_type": "m.annotation", "event_id": first, "key": "+1"}}),
                );
            }),
        ),
        (
            "a room the filter leaves out, then one it keeps",
            Some(&filtered),
            Box::new(|| {
                alice.send_text(&other, "not shown");
                alice.send_text(&room, "shown");
            }),
        ),
        (
            "per-thread counts",
            Some(&threaded),
            Box::new(|| {
                alice.send_text(&room, "threaded filter");
            }),
        ),
    ];
    for (what, filter, act) in rounds {
        let since = bob.sync(None, 0, filter)["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let before = woken_answers(&srv, "incremental");
        let woken = std::thread::scope(|s| {
            let poller = bob.clone_session();
            let since = since.clone();
            let h = s.spawn(move || poller.sync(Some(&since), 30_000, filter));
            srv.wait_parked_syncs(&op, 1);
            act();
            h.join().unwrap()
        });
        assert!(
            !timeline(&woken, &room).is_empty(),
            "{what}: woken without the event: {woken}"
        );
        assert_eq!(
            woken_answers(&srv, "incremental"),
            before + 1.0,
            "{what}: not answered from the committed events: {woken}"
        );
        let full = bob.sync(Some(&since), 0, filter);
        let (mut woken, full) = (without_age(woken), without_age(full));
        if woken["next_batch"] != full["next_batch"] {
            // Something that is not bob's landed after the woken answer (another user's push
            // counts): nothing between the two tokens may be bob's.
            let between = bob.sync(woken["next_batch"].as_str(), 0, filter);
            assert!(
                between["rooms"]["join"]
                    .as_object()
                    .is_some_and(|r| r.is_empty())
                    && crate::client::only_counts(&between),
                "{what}: the full read is further on by something of bob's: {between}"
            );
            assert_eq!(between["next_batch"], full["next_batch"], "{what}");
            woken["next_batch"] = full["next_batch"].clone();
        }
        assert_eq!(
            woken, full,
            "{what}: the woken answer differs from a full /sync from {since}"
        );
    }
    // The transaction ID shows on the sending device only, in both answers.
    let mine = bob.sync(None, 0, None);
    let own = timeline(&mine, &room)
        .iter()
        .find(|e| e["content"]["body"] == "from this device")
        .cloned()
        .unwrap();
    assert!(own["unsigned"]["transaction_id"].is_string(), "{own}");
    srv.assert_no_panics();
}

fn sync_long_poll_wakes_on_new_events(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let op = srv.admin("operator");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&room).ok();
    let since = bob.sync(None, 0, None)["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // With nothing new, a long-poll waits for its timeout and returns the same position.
    let t = Instant::now();
    let idle = bob.sync(Some(&since), 600, None);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(550),
        "returned after {waited:?}"
    );
    assert!(timeline(&idle, &room).is_empty(), "{idle}");

    // A long-poll with a 30 s timeout returns soon after a message is sent.
    for round in 0..3 {
        let since = bob.sync(None, 0, None)["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let body = format!("wake {round}");
        let (resp, elapsed_after_send) = std::thread::scope(|s| {
            let poller = bob.clone_session();
            let since = since.clone();
            let h = s.spawn(move || {
                // The push worker counts the previous round's message a moment after it was
                // sent and moves bob's stream on: a count-only answer (`only_counts`) is not
                // the wake-up under test, so poll on from its token.
                let mut since = since;
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let r = poller.sync(Some(&since), 30_000, None);
                    if !crate::client::only_counts(&r) || Instant::now() >= deadline {
                        return (r, Instant::now());
                    }
                    since = r["next_batch"].as_str().unwrap().to_owned();
                }
            });
            // Send only once the request has read everything and parked on a wake-up.
            srv.wait_parked_syncs(&op, 1);
            let sent_at = Instant::now();
            alice.send_text(&room, &body);
            let (r, returned_at) = h.join().unwrap();
            (r, returned_at.saturating_duration_since(sent_at))
        });
        assert_eq!(bodies(timeline(&resp, &room)), vec![body.clone()], "{resp}");
        assert!(
            elapsed_after_send < Duration::from_secs(10),
            "round {round}: sync returned {elapsed_after_send:?} after the send"
        );
    }

    // A long-poll of a user not in the room is not woken by it.
    let carol = srv.register("carol");
    let c_since = carol.sync(None, 0, None)["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (r, waited) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let t = Instant::now();
            (carol.sync(Some(&c_since), 3_000, None), t.elapsed())
        });
        srv.wait_parked_syncs(&op, 1);
        alice.send_text(&room, "not for carol");
        h.join().unwrap()
    });
    assert!(r["rooms"]["join"].as_object().unwrap().is_empty(), "{r}");
    assert!(
        waited >= Duration::from_millis(2_900),
        "carol woke after {waited:?}"
    );
    srv.assert_no_panics();
}

fn state_put_and_get(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({"name": "first"}));
    let r = enc(&room);
    let id = alice
        .put_state(&room, "m.room.name", "", &json!({"name": "second"}))
        .ok()["event_id"]
        .clone();
    assert!(id.as_str().is_some_and(|s| s.starts_with('$')));
    let name = alice.get(&format!("/rooms/{r}/state/m.room.name")).ok();
    assert_eq!(name, json!({"name": "second"}));
    let name = alice
        .get(&format!("/rooms/{r}/state/m.room.name/?format=event"))
        .ok();
    assert_eq!(name["event_id"], id);
    assert_eq!(name["content"]["name"], "second");
    // Custom state with a state key, including characters that need escaping.
    let key = "a key/with #odd?chars";
    alice
        .put_state(&room, "org.example.state", key, &json!({"v": 1}))
        .ok();
    let v = alice
        .get(&format!("/rooms/{r}/state/org.example.state/{}", enc(key)))
        .ok();
    assert_eq!(v, json!({"v": 1}));
    let all = alice.get(&format!("/rooms/{r}/state")).ok();
    let all = all.as_array().unwrap();
    assert!(
        all.iter()
            .any(|e| e["type"] == "org.example.state" && e["state_key"] == key)
    );
    assert_eq!(
        all.iter().filter(|e| e["type"] == "m.room.name").count(),
        1,
        "current state holds one name"
    );
    alice
        .get(&format!("/rooms/{r}/state/org.example.state/other"))
        .expect_err(404, "M_NOT_FOUND");
    // Members list.
    let members = alice.get(&format!("/rooms/{r}/members")).ok();
    assert_eq!(members["chunk"].as_array().unwrap().len(), 1);
    srv.assert_no_panics();
}

fn redaction(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&room).ok();
    let mut b_since = Some(
        bob.sync(None, 0, None)["next_batch"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let target = bob.send_text(&room, "oops");
    // Bob redacts his own message.
    let red = bob
        .put(
            &format!("/rooms/{}/redact/{}/red-1", enc(&room), enc(&target)),
            &json!({"reason": "typo"}),
        )
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = bob
        .put(
            &format!("/rooms/{}/redact/{}/red-1", enc(&room), enc(&target)),
            &json!({"reason": "typo"}),
        )
        .ok();
    assert_eq!(again["event_id"], red.as_str(), "redact txn is idempotent");
    let ev = alice
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&target)))
        .ok();
    assert_eq!(ev["content"], json!({}), "{ev}");
    assert_eq!(ev["unsigned"]["redacted_because"]["event_id"], red.as_str());
    bob.sync_until(&mut b_since, WAIT, "the redaction", |s| {
        timeline(s, &room)
            .iter()
            .any(|e| e["type"] == "m.room.redaction" && e["event_id"] == red.as_str())
    });
    // Alice (power 100) may redact Bob's messages; Bob may not redact hers.
    let other = bob.send_text(&room, "rude");
    alice
        .put(
            &format!("/rooms/{}/redact/{}/mod", enc(&room), enc(&other)),
            &json!({}),
        )
        .ok();
    let hers = alice.send_text(&room, "mine");
    bob.put(
        &format!("/rooms/{}/redact/{}/no", enc(&room), enc(&hers)),
        &json!({}),
    )
    .expect_err(403, "M_FORBIDDEN");
    let msgs = alice.all_messages(&room, 50, 5);
    assert_eq!(bodies(&msgs), vec!["mine"], "redacted bodies are gone");
    srv.assert_no_panics();
}

fn membership_of(c: &crate::client::Client, room: &str, user: &str) -> Option<String> {
    let r = c.get(&format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(room),
        enc(user)
    ));
    (r.status == 200).then(|| r.body["membership"].as_str().unwrap_or("").to_owned())
}

fn kick_ban_unban(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    let r = enc(&room);
    bob.join(&room).ok();
    alice
        .post(
            &format!("/rooms/{r}/kick"),
            &json!({"user_id": bob.user_id, "reason": "out"}),
        )
        .ok();
    assert_eq!(
        membership_of(&alice, &room, &bob.user_id).as_deref(),
        Some("leave")
    );
    bob.put(
        &format!("/rooms/{r}/send/m.room.message/k1"),
        &json!({"body": "x"}),
    )
    .expect_err(403, "M_FORBIDDEN");
    // Kicked from a public room: may rejoin.
    bob.join(&room).ok();
    alice
        .post(&format!("/rooms/{r}/ban"), &json!({"user_id": bob.user_id}))
        .ok();
    assert_eq!(
        membership_of(&alice, &room, &bob.user_id).as_deref(),
        Some("ban")
    );
    bob.join(&room).expect_err(403, "M_FORBIDDEN");
    // Kicking a banned user is refused (they are not in the room).
    alice
        .post(
            &format!("/rooms/{r}/kick"),
            &json!({"user_id": bob.user_id}),
        )
        .expect_err(403, "M_FORBIDDEN");
    alice
        .post(
            &format!("/rooms/{r}/unban"),
            &json!({"user_id": bob.user_id}),
        )
        .ok();
    assert_eq!(
        membership_of(&alice, &room, &bob.user_id).as_deref(),
        Some("leave")
    );
    alice
        .post(
            &format!("/rooms/{r}/unban"),
            &json!({"user_id": bob.user_id}),
        )
        .expect_err(403, "M_FORBIDDEN");
    bob.join(&room).ok();
    bob.send_text(&room, "back");
    // A banned user who never joined cannot be let in by an invite.
    let carol = srv.register("carol");
    alice
        .post(
            &format!("/rooms/{r}/ban"),
            &json!({"user_id": carol.user_id}),
        )
        .ok();
    alice
        .invite(&room, &carol.user_id)
        .expect_err(403, "M_FORBIDDEN");
    srv.assert_no_panics();
}

fn profile(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let me = enc(&alice.user_id);
    alice
        .put(
            &format!("/profile/{me}/displayname"),
            &json!({"displayname": "Alice ✓"}),
        )
        .ok();
    alice
        .put(
            &format!("/profile/{me}/avatar_url"),
            &json!({"avatar_url": "mxc://weft.test/abc"}),
        )
        .ok();
    let p = bob.get(&format!("/profile/{me}")).ok();
    assert_eq!(p["displayname"], "Alice ✓");
    assert_eq!(p["avatar_url"], "mxc://weft.test/abc");
    assert_eq!(
        bob.get(&format!("/profile/{me}/displayname")).ok(),
        json!({"displayname": "Alice ✓"})
    );
    // A room joined afterwards carries the profile in the member event.
    let room = alice.create_room(&json!({}));
    let m = alice
        .get(&format!("/rooms/{}/state/m.room.member/{me}", enc(&room)))
        .ok();
    assert_eq!(m["displayname"], "Alice ✓");
    assert_eq!(m["avatar_url"], "mxc://weft.test/abc");
    srv.assert_no_panics();
}

fn aliases_and_join_by_alias(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({
        "preset": "public_chat", "room_alias_name": "lobby", "visibility": "public"
    }));
    let alias = "#lobby:weft.test";
    let got = bob.get(&format!("/directory/room/{}", enc(alias))).ok();
    assert_eq!(got["room_id"], room.as_str());
    assert!(
        got["servers"]
            .as_array()
            .is_some_and(|s| s.contains(&json!("weft.test")))
    );
    // The alias is taken.
    alice
        .post("/createRoom", &json!({"room_alias_name": "lobby"}))
        .expect_err(400, "M_ROOM_IN_USE");
    // Join by alias (escaped # in the path).
    let j = bob.join(alias).ok();
    assert_eq!(j["room_id"], room.as_str());
    // A second alias, listed, then removed.
    let second = "#hall:weft.test";
    alice
        .put(
            &format!("/directory/room/{}", enc(second)),
            &json!({"room_id": room}),
        )
        .ok();
    alice
        .put(
            &format!("/directory/room/{}", enc(second)),
            &json!({"room_id": room}),
        )
        .expect_err(409, "M_UNKNOWN");
    let list = alice.get(&format!("/rooms/{}/aliases", enc(&room))).ok();
    let list = list["aliases"].as_array().unwrap();
    assert!(
        list.contains(&json!(alias)) && list.contains(&json!(second)),
        "{list:?}"
    );
    alice
        .delete(&format!("/directory/room/{}", enc(second)))
        .ok();
    bob.get(&format!("/directory/room/{}", enc(second)))
        .expect_err(404, "M_NOT_FOUND");
    // The public room directory lists the room (published with visibility=public), and not
    // a public_chat room that was not published.
    let unlisted = alice.create_room(&json!({"preset": "public_chat"}));
    let public = bob.get("/publicRooms").ok();
    assert!(
        public["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == room.as_str()),
        "{public}"
    );
    assert!(
        !public["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["room_id"] == unlisted.as_str()),
        "{public}"
    );
    srv.assert_no_panics();
}

fn filters(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({}));
    for i in 0..5 {
        alice.send_text(&room, &format!("m{i}"));
    }
    alice
        .put_state(&room, "org.example.s", "", &json!({"x": 1}))
        .ok();
    let filter = json!({"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}});
    let id = alice
        .post(&format!("/user/{}/filter", enc(&alice.user_id)), &filter)
        .ok()["filter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = alice
        .get(&format!("/user/{}/filter/{id}", enc(&alice.user_id)))
        .ok();
    assert_eq!(stored, filter);
    for f in [id.as_str(), &filter.to_string()] {
        let s = alice.sync(None, 0, Some(f));
        let tl = &s["rooms"]["join"][&room]["timeline"];
        let events = tl["events"].as_array().unwrap();
        assert!(events.len() <= 2, "{tl}");
        assert!(events.iter().all(|e| e["type"] == "m.room.message"), "{tl}");
        assert_eq!(tl["limited"], true);
        assert!(tl["prev_batch"].is_string());
    }
    // Filters are private.
    let bob = srv.register("bob");
    bob.get(&format!("/user/{}/filter/{id}", enc(&alice.user_id)))
        .expect_err(403, "M_FORBIDDEN");
    bob.get(&format!("/sync?filter={}", q(&id)))
        .expect_err(404, "M_NOT_FOUND");
    // /messages with a type filter.
    let m = alice
        .get(&format!(
            "/rooms/{}/messages?dir=b&limit=50&filter={}",
            enc(&room),
            q(&json!({"types": ["org.example.s"]}).to_string())
        ))
        .ok();
    let chunk = m["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "{m}");
    assert_eq!(chunk[0]["type"], "org.example.s");
    srv.assert_no_panics();
}

fn context_around_an_event(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({}));
    let ids: Vec<String> = (0..7)
        .map(|i| alice.send_text(&room, &format!("c{i}")))
        .collect();
    let ctx = alice
        .get(&format!(
            "/rooms/{}/context/{}?limit=4",
            enc(&room),
            enc(&ids[3])
        ))
        .ok();
    assert_eq!(ctx["event"]["event_id"], ids[3].as_str());
    let before: Vec<&str> = ctx["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let after: Vec<&str> = ctx["events_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    // Spec: events_before is newest first (reverse chronological).
    assert_eq!(before, vec![ids[2].as_str(), ids[1].as_str()], "{ctx}");
    assert_eq!(after, vec![ids[4].as_str(), ids[5].as_str()], "{ctx}");
    assert!(ctx["start"].is_string() && ctx["end"].is_string());
    assert!(ctx["state"].as_array().is_some_and(|s| !s.is_empty()));
    // Paginating on from the context's tokens continues on both sides.
    let older = alice.messages(&room, ctx["start"].as_str(), "b", 1);
    assert_eq!(older["chunk"][0]["event_id"], ids[0].as_str(), "{older}");
    let newer = alice.messages(&room, ctx["end"].as_str(), "f", 1);
    assert_eq!(newer["chunk"][0]["event_id"], ids[6].as_str(), "{newer}");
    srv.assert_no_panics();
}

fn r0_prefix_and_cors(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let who = alice.get("/_matrix/client/r0/account/whoami").ok();
    assert_eq!(who["user_id"], alice.user_id.as_str());
    let room = alice.create_room(&json!({}));
    let v = alice
        .put(
            &format!(
                "/_matrix/client/r0/rooms/{}/send/m.room.message/r0",
                enc(&room)
            ),
            &json!({"msgtype": "m.text", "body": "via r0"}),
        )
        .ok();
    assert!(v["event_id"].is_string());
    // The query string survives the rewrite to `v3` (a filter that leaves the timeline
    // with only the event just sent).
    let synced = alice
        .get("/_matrix/client/r0/sync?timeout=0&filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%7D%7D")
        .ok();
    let timeline = &synced["rooms"]["join"][room.as_str()]["timeline"]["events"];
    assert_eq!(timeline.as_array().map(Vec::len), Some(1), "{synced}");
    assert_eq!(timeline[0]["event_id"], v["event_id"], "{synced}");
    let flows = srv.anonymous().get("/_matrix/client/r0/login").ok();
    assert!(
        flows["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["type"] == "m.login.password")
    );
    // Spec versions are listed one by one (Hydrogen looks for "v1.11").
    let versions = srv.anonymous().get("/_matrix/client/versions").ok();
    let list = versions["versions"].as_array().unwrap();
    for want in ["r0.6.1", "v1.1", "v1.11"] {
        assert!(list.contains(&json!(want)), "{versions}");
    }
    // Preflight on any path, known or not, with and without a token.
    let anon = srv.anonymous();
    for path in [
        "/_matrix/client/r0/sync",
        "/_matrix/client/v3/rooms/!x:weft.test/send/m.room.message/1",
        "/_matrix/client/v3/no/such/thing",
        "/_matrix/client/versions",
    ] {
        let r = anon.raw_with(
            "OPTIONS",
            path,
            None,
            None,
            &[
                ("Origin", "http://127.0.0.1:1"),
                ("Access-Control-Request-Method", "PUT"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
        );
        assert!(
            matches!(r.status, 200 | 204),
            "OPTIONS {path}: {}",
            r.status
        );
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
        let methods = r.header("access-control-allow-methods").unwrap_or("");
        for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            assert!(methods.contains(m), "{path}: methods {methods}");
        }
        let headers = r
            .header("access-control-allow-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        for h in ["authorization", "content-type"] {
            assert!(headers.contains(h), "{path}: headers {headers}");
        }
    }
    // Ordinary answers, errors included, carry Allow-Origin too.
    let ok = alice.get("/account/whoami");
    assert_eq!(ok.header("access-control-allow-origin"), Some("*"));
    let err = anon.get("/account/whoami");
    assert_eq!(err.status, 401);
    assert_eq!(err.header("access-control-allow-origin"), Some("*"));
    let unknown = anon.get("/no/such/thing");
    assert_eq!(unknown.header("access-control-allow-origin"), Some("*"));
    srv.assert_no_panics();
}

fn logout_invalidates_the_token(backend: Backend) {
    let srv = Server::start(backend);
    let mut alice = srv.register("alice");
    let old = alice.token.clone().unwrap();
    alice.post("/logout", &json!({})).ok();
    alice
        .get("/account/whoami")
        .expect_err(401, "M_UNKNOWN_TOKEN");
    alice.login("alice", "pw-alice");
    let mut other = srv.anonymous();
    other.login("alice", "pw-alice");
    assert_ne!(alice.token, Some(old));
    alice.post("/logout/all", &json!({})).ok();
    other
        .get("/account/whoami")
        .expect_err(401, "M_UNKNOWN_TOKEN");
    srv.assert_no_panics();
}

fn registration_is_closed_by_default(backend: Backend) {
    let srv = Server::start_with(
        backend,
        Options {
            registration_open: false,
            ..Default::default()
        },
    );
    let anon = srv.anonymous();
    anon.post(
        "/register",
        &json!({"username": "eve", "password": "x", "auth": {"type": "m.login.dummy"}}),
    )
    .expect_err(403, "M_FORBIDDEN");
    // The operator creates users with the CLI, against the same database, while the server runs.
    // The password comes on stdin, never on the command line.
    let (ok, out, err) = srv.cli_input(&["register-user", "dave"], Some("pw-dave\n"));
    assert!(ok, "register-user failed: {out} {err}");
    assert_eq!(out.trim(), "@dave:weft.test");
    let (ok, _, err) = srv.cli_input(&["register-user", "dave"], Some("again\n"));
    assert!(!ok, "registering dave twice succeeded");
    assert!(!err.contains("panicked"), "{err}");
    let mut dave = srv.anonymous();
    dave.login("dave", "pw-dave");
    assert_eq!(dave.user_id, "@dave:weft.test");
    dave.create_room(&json!({"name": "operator's room"}));
    srv.assert_no_panics();

    // The embedded default config (no file at all) also keeps registration closed.
    let text = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("generate-config")
        .output()
        .expect("weft generate-config");
    let text = String::from_utf8_lossy(&text.stdout);
    let cfg: toml::Value = toml::from_str(&text).expect("generated config parses");
    assert_eq!(cfg["registration"]["open"].as_bool(), Some(false), "{text}");
}

/// `weft_room_actors` from the server's `/metrics` (loopback may scrape).
fn live_room_actors(srv: &Server) -> Option<u64> {
    let text = reqwest_free_get(&format!("{}/metrics", srv.base))?;
    text.lines()
        .find(|l| l.starts_with("weft_room_actors"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

fn reqwest_free_get(url: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "5", url])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A room actor stopped for idleness (memory given back) and started again from the
/// database serves the same state, keeps the auth rules of that state and extends the room
/// from where it was (the PDUs it holds are kept as canonical text, `weft_protocol::pdu`).
fn idle_room_actor_stops_and_reloads_the_same_state(backend: Backend) {
    let srv = Server::start_with(
        backend,
        Options {
            extra_toml: "[actors]\nroom_idle_secs = 1\n".into(),
            ..Default::default()
        },
    );
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({
        "preset": "public_chat", "name": "before idle", "topic": "t \u{e9}\"q\"",
    }));
    bob.join(&room).ok();
    let first = alice.send_text(&room, "before");
    let state_path = format!("/_matrix/client/v3/rooms/{}/state", enc(&room));
    let sorted = |v: Value| {
        let mut events: Vec<Value> = v.as_array().cloned().unwrap_or_default();
        for e in &mut events {
            // `unsigned.age` moves on.
            e.as_object_mut().map(|o| o.remove("unsigned"));
        }
        events.sort_by_key(|e| (e["type"].to_string(), e["state_key"].to_string()));
        events
    };
    let before = sorted(alice.get(&state_path).ok());
    assert!(before.len() >= 6, "{before:?}");

    // Every room actor stops once idle (1 s here).
    let deadline = Instant::now() + WAIT;
    while live_room_actors(&srv) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "room actors still alive: {:?}",
            live_room_actors(&srv)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Reloaded: the same state, event for event.
    assert_eq!(sorted(alice.get(&state_path).ok()), before);
    // Its auth rules: bob (power 0) may not rename the room; alice may.
    bob.put_state(&room, "m.room.name", "", &json!({"name": "bob's"}))
        .expect_err(403, "M_FORBIDDEN");
    alice
        .put_state(&room, "m.room.name", "", &json!({"name": "after idle"}))
        .ok();
    let name_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room));
    assert_eq!(alice.get(&name_path).ok()["name"], "after idle");
    // The membership it reloaded: bob is joined and can still send.
    let second = bob.send_text(&room, "after");
    let msgs = alice.all_messages(&room, 50, 5);
    let texts = bodies(&msgs);
    assert_eq!(texts, vec!["before", "after"], "{msgs:?}");
    // The new event extends the room's single tip from before.
    let ctx = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/context/{}?limit=2",
            enc(&room),
            enc(&second)
        ))
        .ok();
    assert!(
        ctx["events_before"]
            .as_array()
            .is_some_and(|b| !b.is_empty()),
        "{ctx}"
    );
    assert_ne!(first, second);
    srv.assert_no_panics();
}
