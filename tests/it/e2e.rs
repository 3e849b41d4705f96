//! Two users talk through one server: what matrix-nio's smoke test does, over raw HTTP.

use std::time::Duration;

use serde_json::json;

use crate::both_backends;
use crate::client::{bodies, timeline};
use crate::harness::{Backend, Server};

const WAIT: Duration = Duration::from_secs(20);

both_backends!(two_users_talk);

fn two_users_talk(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let mut bob = srv.register("bob");
    assert_eq!(alice.user_id, "@alice:weft.test");

    // Logging in again gives a second working session.
    bob.login("bob", "pw-bob");
    let who = bob.get("/account/whoami").ok();
    assert_eq!(who["user_id"], bob.user_id.as_str());
    assert_eq!(who["device_id"], bob.device_id.as_str());

    // Initial syncs (no since), as clients do first.
    let mut a_since = Some(
        alice.sync(None, 0, None)["next_batch"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let mut b_since = Some(
        bob.sync(None, 0, None)["next_batch"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    let room = alice.create_room(&json!({"name": "smoke", "preset": "private_chat"}));
    alice.invite(&room, &bob.user_id).ok();

    // Bob sees the invite with stripped state, including his own invite member event.
    let s = bob.sync_until(&mut b_since, WAIT, "the invite", |s| {
        s["rooms"]["invite"][&room].is_object()
    });
    let stripped = s["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .expect("invite_state.events");
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id.as_str()
            && e["content"]["membership"] == "invite"),
        "invite_state lacks bob's invite: {stripped:?}"
    );
    for (kind, field, want) in [
        ("m.room.name", "name", "smoke"),
        ("m.room.join_rules", "join_rule", "invite"),
        ("m.room.create", "room_version", "12"),
    ] {
        assert!(
            stripped
                .iter()
                .any(|e| e["type"] == kind && e["content"][field] == want),
            "invite_state lacks {kind}: {stripped:?}"
        );
    }

    let joined = bob.join(&room).ok();
    assert_eq!(joined["room_id"], room.as_str());

    // Alice sees Bob's join in her timeline.
    alice.sync_until(&mut a_since, WAIT, "bob's join", |s| {
        timeline(s, &room).iter().any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == "join"
        })
    });

    // Three messages from Alice arrive at Bob in order.
    let sent: Vec<String> = (1..=3).map(|i| format!("hello #{i}")).collect();
    let mut ids = Vec::new();
    for body in &sent {
        ids.push(alice.send_text(&room, body));
    }
    let mut got: Vec<String> = Vec::new();
    let mut got_ids: Vec<String> = Vec::new();
    bob.sync_until(&mut b_since, WAIT, "three messages", |s| {
        for e in timeline(s, &room) {
            if e["type"] == "m.room.message" {
                got.push(e["content"]["body"].as_str().unwrap_or("").to_owned());
                got_ids.push(e["event_id"].as_str().unwrap_or("").to_owned());
                assert_eq!(e["sender"], alice.user_id.as_str());
            }
        }
        got.len() >= sent.len()
    });
    assert_eq!(got, sent, "bob got messages out of order or extra ones");
    assert_eq!(
        got_ids, ids,
        "event IDs in /sync differ from those /send returned"
    );

    // /messages backwards from the live end gives them newest first, and forwards from the
    // start gives the whole room oldest first.
    let back = bob.messages(&room, b_since.as_deref(), "b", 20);
    let mut want = sent.clone();
    want.reverse();
    assert_eq!(bodies(back["chunk"].as_array().unwrap()), want);
    assert!(back["start"].is_string());
    let all = bob.all_messages(&room, 4, 50);
    assert_eq!(all[0]["type"], "m.room.create");
    assert_eq!(bodies(&all), sent);
    let fwd = bob.messages(&room, None, "f", 100);
    let fwd_ids: Vec<&str> = fwd["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let all_ids: Vec<&str> = all
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(fwd_ids, all_ids, "dir=f and dir=b disagree on the order");

    // Bob replies; Alice receives it.
    let reply_id = bob.send_text(&room, "hi alice");
    alice.sync_until(&mut a_since, WAIT, "bob's reply", |s| {
        timeline(s, &room)
            .iter()
            .any(|e| e["event_id"] == reply_id.as_str() && e["content"]["body"] == "hi alice")
    });

    // Both are joined, then both leave; the room moves to `leave` in Bob's sync.
    let members = alice
        .get(&format!(
            "/rooms/{}/joined_members",
            crate::client::enc(&room)
        ))
        .ok();
    let joined: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
    assert_eq!(joined.len(), 2, "{members}");
    bob.leave(&room).ok();
    bob.sync_until(&mut b_since, WAIT, "the room under leave", |s| {
        s["rooms"]["leave"][&room].is_object()
    });
    alice.leave(&room).ok();
    let rooms = alice.get("/joined_rooms").ok();
    assert_eq!(rooms["joined_rooms"], json!([]));
    srv.assert_no_panics();
}
