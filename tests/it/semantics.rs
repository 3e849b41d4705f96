//! Room semantics matrix-rust-sdk (Element X) relies on, each checked against the spec's
//! wording (and Synapse's behaviour where the spec leaves a choice):
//!
//! - invite state names the inviter (their `m.room.member` is in the stripped state);
//! - history visibility is judged per event, at that event's state (spec, "History
//!   visibility": the visibility *at the event*);
//! - joining a room every member has left: 404, nobody can be asked;
//! - `/context?limit=N`: `N` events around the target, the smaller half before;
//! - a declined invite (leave, then forget) reaches the next `/sync` as a leave at once;
//! - deleting an alias takes it out of `m.room.canonical_alias` and the directory search;
//! - world-readable rooms: non-members read `/state`, `/joined_members`, and the room
//!   summary (MSC3266);
//! - a member who left reads the state at their leave, not the room's current state;
//! - publishing to the room directory takes the power to set the canonical alias.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{bodies, enc, q};
use crate::harness::{Backend, Server};

both_backends!(
    invite_state_names_the_inviter,
    history_visibility_is_judged_per_event,
    joining_an_abandoned_room_is_not_found,
    context_limit_splits_like_synapse,
    declined_invite_reaches_sync_at_once,
    deleted_alias_leaves_the_canonical_alias,
    world_readable_rooms_for_non_members,
    a_member_who_left_reads_the_state_at_their_leave,
    publishing_needs_power,
);

fn ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The room's name in a list of state events.
fn name_in(state: &Value) -> Option<String> {
    state.as_array()?.iter().find_map(|e| {
        (e["type"] == "m.room.name")
            .then(|| e["content"]["name"].as_str().map(str::to_owned))
            .flatten()
    })
}

fn invite_state_names_the_inviter(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"name": "Invite me"}));
    alice.invite(&room, &bob.user_id).ok();
    let sync = bob.sync(None, 0, None);
    let events = &sync["rooms"]["invite"][&room]["invite_state"]["events"];
    let inviter = events
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str())
        })
        .unwrap_or_else(|| panic!("no inviter membership in the invite state: {events}"));
    assert_eq!(inviter["content"]["membership"], "join", "{inviter}");
    assert_eq!(inviter["sender"], alice.user_id.as_str());
    // The invite itself is still there, and the room's name.
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id.as_str()
                && e["content"]["membership"] == "invite"),
        "{events}"
    );
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name")
    );
    srv.assert_no_panics();
}

fn history_visibility_is_judged_per_event(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    alice.send_text(&room, "while shared");
    alice
        .put_state(
            &room,
            "m.room.history_visibility",
            "",
            &json!({"history_visibility": "invited"}),
        )
        .ok();
    alice.send_text(&room, "while invited-only");
    bob.join(&room).ok();
    alice.send_text(&room, "after the join");

    // /messages: the shared past and everything from the join on; not what was sent while
    // only invitees could see it (bob was not invited then).
    let all = bob.all_messages(&room, 3, 20);
    assert_eq!(
        bodies(&all),
        vec!["while shared", "after the join"],
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()),
        "bob's own join is visible"
    );
    // The visibility change itself was made while shared: visible.
    assert!(all.iter().any(|e| e["type"] == "m.room.history_visibility"));
    // /sync's initial timeline follows the same rule.
    let sync = bob.sync(None, 0, None);
    let tl = &sync["rooms"]["join"][&room]["timeline"]["events"];
    let tl_bodies = bodies(tl.as_array().unwrap());
    assert!(tl_bodies.contains(&"while shared".to_owned()), "{tl}");
    assert!(
        !tl_bodies.contains(&"while invited-only".to_owned()),
        "{tl}"
    );
    // Single events: the hidden one is 404, the shared one readable.
    let hidden = alice
        .all_messages(&room, 20, 5)
        .into_iter()
        .find(|e| e["content"]["body"] == "while invited-only")
        .expect("alice sees her own message");
    let r = bob.get(&format!(
        "/rooms/{}/event/{}",
        enc(&room),
        enc(hidden["event_id"].as_str().unwrap())
    ));
    r.expect_err(404, "M_NOT_FOUND");
    srv.assert_no_panics();
}

fn joining_an_abandoned_room_is_not_found(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    alice.leave(&room).ok();
    bob.join(&room).expect_err(404, "M_NOT_FOUND");
    bob.post(&format!("/rooms/{}/join", enc(&room)), &json!({}))
        .expect_err(404, "M_NOT_FOUND");
    // A room somebody is still in stays joinable.
    let open = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&open).ok();
    srv.assert_no_panics();
}

fn context_limit_splits_like_synapse(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({}));
    let sent: Vec<String> = (0..7)
        .map(|i| alice.send_text(&room, &format!("m{i}")))
        .collect();
    let ctx = |limit: usize| {
        alice
            .get(&format!(
                "/rooms/{}/context/{}?limit={limit}",
                enc(&room),
                enc(&sent[3])
            ))
            .ok()
    };
    let three = ctx(3);
    assert_eq!(
        ids(&three["events_before"]),
        vec![sent[2].clone()],
        "{three}"
    );
    assert_eq!(
        ids(&three["events_after"]),
        vec![sent[4].clone(), sent[5].clone()],
        "{three}"
    );
    let one = ctx(1);
    assert!(ids(&one["events_before"]).is_empty(), "{one}");
    assert_eq!(ids(&one["events_after"]), vec![sent[4].clone()], "{one}");
    let zero = ctx(0);
    assert_eq!(zero["event"]["event_id"], sent[3].as_str());
    assert!(ids(&zero["events_before"]).is_empty() && ids(&zero["events_after"]).is_empty());
    srv.assert_no_panics();
}

fn declined_invite_reaches_sync_at_once(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({}));
    alice.invite(&room, &bob.user_id).ok();
    let first = bob.sync(None, 0, None);
    assert!(first["rooms"]["invite"][&room].is_object(), "{first}");
    let since = first["next_batch"].as_str().unwrap().to_owned();
    // Bob long-polls; meanwhile he declines and forgets.
    let poller = bob.clone_session();
    let (since2, room2) = (since.clone(), room.clone());
    let waiter = std::thread::spawn(move || {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(25);
        let mut since = since2;
        loop {
            let r = poller.sync(Some(&since), 25_000, None);
            if r["rooms"]["leave"][&room2].is_object() || Instant::now() >= deadline {
                return (r, t0.elapsed());
            }
            since = r["next_batch"].as_str().unwrap().to_owned();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    bob.leave(&room).ok();
    bob.post(&format!("/rooms/{}/forget", enc(&room)), &json!({}))
        .ok();
    let (r, took) = waiter.join().expect("long-poll thread");
    let left = &r["rooms"]["leave"][&room];
    assert!(left.is_object(), "the decline did not reach /sync: {r}");
    assert!(
        took < Duration::from_secs(20),
        "the long-poll was not woken ({took:?})"
    );
    assert!(left["timeline"]["prev_batch"].is_string(), "{left}");
    assert!(
        left["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |e| e["state_key"] == bob.user_id.as_str() && e["content"]["membership"] == "leave"
            ),
        "{left}"
    );
    // Once delivered, a forgotten room is not repeated.
    let next = bob.sync(r["next_batch"].as_str(), 0, None);
    assert!(next["rooms"]["leave"][&room].is_null(), "{next}");
    // Nor does an initial sync with leaves show it.
    let filter = json!({"room": {"include_leave": true}}).to_string();
    let initial = bob.sync(None, 0, Some(&filter));
    assert!(initial["rooms"]["leave"][&room].is_null(), "{initial}");
    srv.assert_no_panics();
}

fn deleted_alias_leaves_the_canonical_alias(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({
        "preset": "public_chat", "visibility": "public",
        "room_alias_name": "findme", "name": "Somewhere",
    }));
    let alias = format!("#findme:{}", srv.server_name);
    let search = |term: &str| {
        alice
            .post(
                "/publicRooms",
                &json!({"filter": {"generic_search_term": term}}),
            )
            .ok()["chunk"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(search("findme").len(), 1, "found by its alias first");
    let canonical = alice
        .get(&format!(
            "/rooms/{}/state/m.room.canonical_alias/",
            enc(&room)
        ))
        .ok();
    assert_eq!(canonical["alias"], alias.as_str());
    alice
        .delete(&format!("/directory/room/{}", enc(&alias)))
        .ok();
    let canonical = alice
        .get(&format!(
            "/rooms/{}/state/m.room.canonical_alias/",
            enc(&room)
        ))
        .ok();
    assert!(canonical.get("alias").is_none(), "{canonical}");
    assert!(
        search("findme").is_empty(),
        "still found by a deleted alias"
    );
    assert_eq!(search("somewhere").len(), 1, "still found by its name");
    srv.assert_no_panics();
}

fn world_readable_rooms_for_non_members(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({
        "preset": "public_chat", "name": "Readable", "topic": "for all",
        "room_alias_name": "readable",
    }));
    alice
        .put_state(
            &room,
            "m.room.history_visibility",
            "",
            &json!({"history_visibility": "world_readable"}),
        )
        .ok();
    alice.send_text(&room, "hello world");
    let state = bob.get(&format!("/rooms/{}/state", enc(&room))).ok();
    assert_eq!(name_in(&state).as_deref(), Some("Readable"));
    let joined = bob
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .ok();
    assert!(joined["joined"][&alice.user_id].is_object(), "{joined}");
    let msgs = bob.all_messages(&room, 10, 5);
    assert!(bodies(&msgs).contains(&"hello world".to_owned()));

    for path in [
        format!("/_matrix/client/v1/room_summary/{}", enc(&room)),
        format!(
            "/_matrix/client/unstable/im.nheko.summary/summary/{}",
            enc(&room)
        ),
        format!(
            "/_matrix/client/v1/room_summary/{}",
            enc(&format!("#readable:{}", srv.server_name))
        ),
    ] {
        let s = bob.get(&path).ok();
        assert_eq!(s["room_id"], room.as_str(), "{path}: {s}");
        assert_eq!(s["name"], "Readable");
        assert_eq!(s["topic"], "for all");
        assert_eq!(s["world_readable"], true);
        assert_eq!(s["join_rule"], "public");
        assert_eq!(s["num_joined_members"], 1);
        assert!(s["room_version"].is_string());
        assert!(s.get("membership").is_none(), "bob has none: {s}");
    }
    let mine = alice
        .get(&format!("/_matrix/client/v1/room_summary/{}", enc(&room)))
        .ok();
    assert_eq!(mine["membership"], "join");
    // Without a token too.
    let anon = srv
        .anonymous()
        .get(&format!("/_matrix/client/v1/room_summary/{}", enc(&room)))
        .ok();
    assert_eq!(anon["room_id"], room.as_str());

    // A private room says nothing to outsiders.
    let private = alice.create_room(&json!({"preset": "private_chat", "name": "Secret"}));
    bob.get(&format!("/rooms/{}/state", enc(&private)))
        .expect_err(403, "M_FORBIDDEN");
    bob.get(&format!("/rooms/{}/joined_members", enc(&private)))
        .expect_err(403, "M_FORBIDDEN");
    let hidden = bob.get(&format!(
        "/_matrix/client/v1/room_summary/{}",
        enc(&private)
    ));
    hidden.expect_err(404, "M_NOT_FOUND");
    assert!(!hidden.text.contains("Secret"));
    bob.get("/_matrix/client/v1/room_summary/!nope:weft.test")
        .expect_err(404, "M_NOT_FOUND");
    bob.get("/_matrix/client/v1/room_summary/not-a-room")
        .expect_err(400, "M_INVALID_PARAM");
    // Once invited, bob may preview it.
    alice.invite(&private, &bob.user_id).ok();
    let invited = bob
        .get(&format!(
            "/_matrix/client/v1/room_summary/{}",
            enc(&private)
        ))
        .ok();
    assert_eq!(invited["membership"], "invite");
    srv.assert_no_panics();
}

fn a_member_who_left_reads_the_state_at_their_leave(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat", "name": "Before"}));
    bob.join(&room).ok();
    let early = alice.send_text(&room, "while bob was here");
    bob.leave(&room).ok();
    alice
        .put_state(&room, "m.room.name", "", &json!({"name": "After"}))
        .ok();
    let carol = srv.register("carol");
    carol.join(&room).ok();

    let members = bob.get(&format!("/rooms/{}/members", enc(&room))).ok();
    let chunk = members["chunk"].as_array().unwrap();
    let of = |u: &str| {
        chunk
            .iter()
            .find(|e| e["state_key"] == u)
            .map(|e| e["content"]["membership"].clone())
    };
    assert_eq!(of(&bob.user_id), Some(json!("leave")), "{members}");
    assert_eq!(
        of(&carol.user_id),
        None,
        "carol joined after bob left: {members}"
    );

    let state = bob.get(&format!("/rooms/{}/state", enc(&room))).ok();
    assert_eq!(name_in(&state).as_deref(), Some("Before"));
    bob.get(&format!("/rooms/{}/state/m.room.name/", enc(&room)))
        .ok()
        .get("name")
        .filter(|n| *n == "Before")
        .expect("the name at bob's leave");

    let ctx = bob
        .get(&format!(
            "/rooms/{}/context/{}?limit=10",
            enc(&room),
            enc(&early)
        ))
        .ok();
    assert_eq!(name_in(&ctx["state"]).as_deref(), Some("Before"), "{ctx}");
    assert!(
        !ctx["events_after"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name"),
        "the rename after bob left is not his to see"
    );
    // Alice, still joined, sees the present.
    let now = alice.get(&format!("/rooms/{}/state", enc(&room))).ok();
    assert_eq!(name_in(&now).as_deref(), Some("After"));
    srv.assert_no_panics();
}

fn publishing_needs_power(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat", "name": "Mine"}));
    bob.join(&room).ok();
    let path = format!("/directory/list/room/{}", enc(&room));
    bob.put(&path, &json!({"visibility": "public"}))
        .expect_err(403, "M_FORBIDDEN");
    let listed = alice.get(&format!("/publicRooms?limit={}", q("10"))).ok();
    assert_eq!(listed["chunk"].as_array().unwrap().len(), 0, "{listed}");
    alice.put(&path, &json!({"visibility": "public"})).ok();
    assert_eq!(alice.get(&path).ok()["visibility"], "public");
    bob.put(&path, &json!({"visibility": "private"}))
        .expect_err(403, "M_FORBIDDEN");
    assert_eq!(alice.get(&path).ok()["visibility"], "public");
    bob.put(&path, &json!({"visibility": "sideways"}))
        .expect_err(400, "M_INVALID_PARAM");
    srv.assert_no_panics();
}
