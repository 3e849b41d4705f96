//! Linearized Matrix end to end: weft hubs and weft participants on loopback (plain-HTTP
//! federation), and a fake participant written from the spec ([`peer`]) that stands in for
//! the reference implementation: it sends what a participant may not (forged LPDUs).

mod fakehub;
mod harness;
mod peer;

use std::time::{Duration, Instant};

use fakehub::FakeHub;
use harness::{User, Weft, enc};
use peer::{Peers, UNSTABLE};
use serde_json::{Value, json};
use weft_protocol::{canonical, lm};

use crate::both_backends;
use crate::harness::Backend;

both_backends!(
    three_servers_converse_and_agree_on_one_line,
    a_participant_that_was_down_misses_nothing,
    a_gap_in_the_line_is_filled_from_the_hub,
    a_send_while_the_hub_is_down_fails_at_once_and_its_retry_lands_once,
    the_operator_view_is_for_admins,
    forged_lpdus_are_refused_and_nothing_is_fanned_out,
    invites_and_kicks_reach_the_right_servers,
    weft_participates_in_a_room_of_a_reference_like_hub,
);

type Line = Vec<(String, String, String, String)>;

fn ids(t: &[(String, String, String, String)]) -> Vec<&str> {
    t.iter().map(|e| e.0.as_str()).collect()
}

fn contains_all(t: &Line, wanted: &[String]) -> bool {
    wanted.iter().all(|w| t.iter().any(|e| &e.0 == w))
}

/// A hub with `alice`, and participants with one user each, all joined to a new LM room.
fn room_of_three(backend: Backend) -> (Weft, Weft, Weft, User, User, User, String) {
    let hub = Weft::start(backend);
    let p1 = Weft::start(backend);
    let p2 = Weft::start(backend);
    let alice = hub.register("alice");
    let bob = p1.register("bob");
    let carol = p2.register("carol");
    let room = alice.create_lm_room(&[&bob.id, &carol.id], "private_chat");
    bob.wait_invite(&room);
    bob.join(&room);
    carol.wait_invite(&room);
    carol.join(&room);
    (hub, p1, p2, alice, bob, carol, room)
}

fn three_servers_converse_and_agree_on_one_line(backend: Backend) {
    let (hub, p1, p2, alice, bob, carol, room) = room_of_three(backend);

    // Users on all three servers converse; each send answers with the final event ID (the
    // participants' through the hub's echo).
    let said = vec![
        alice.say(&room, "hello from the hub"),
        bob.say(&room, "hello from participant one"),
        carol.say(&room, "hello from participant two"),
    ];
    for u in [&alice, &bob, &carol] {
        u.wait_timeline(&room, "the conversation", |t| {
            contains_all(&t.to_vec(), &said)
        });
    }

    // Both participants send at once; the hub orders everything into one line.
    const EACH: usize = 20;
    let (from_bob, from_carol) = std::thread::scope(|s| {
        let b = s.spawn(|| {
            (0..EACH)
                .map(|i| bob.say(&room, &format!("bob {i}")))
                .collect::<Vec<_>>()
        });
        let c = s.spawn(|| {
            (0..EACH)
                .map(|i| carol.say(&room, &format!("carol {i}")))
                .collect::<Vec<_>>()
        });
        (b.join().expect("bob"), c.join().expect("carol"))
    });
    let all: Vec<String> = said
        .iter()
        .chain(&from_bob)
        .chain(&from_carol)
        .cloned()
        .collect();
    let hub_line = alice.wait_timeline(&room, "every message", |t| contains_all(&t.to_vec(), &all));
    let bob_line = bob.wait_timeline(&room, "every message", |t| t.len() >= hub_line.len());
    let carol_line = carol.wait_timeline(&room, "every message", |t| t.len() >= hub_line.len());
    assert_eq!(
        ids(&bob_line),
        ids(&hub_line),
        "participant one shows the hub's line"
    );
    assert_eq!(
        ids(&carol_line),
        ids(&hub_line),
        "participant two shows the hub's line"
    );

    // Each participant's messages keep their send order within the one line.
    for (who, sent) in [("bob", &from_bob), ("carol", &from_carol)] {
        let positions: Vec<usize> = sent
            .iter()
            .map(|id| {
                hub_line
                    .iter()
                    .position(|e| &e.0 == id)
                    .expect("in the line")
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{who}'s order: {positions:?}"
        );
    }
    // The timeline starts with the room's creation and holds every event once.
    assert_eq!(hub_line[0].2, "m.room.create");
    let mut unique = ids(&hub_line);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), hub_line.len());
    for w in [&hub, &p1, &p2] {
        w.assert_quiet();
    }
}

fn a_participant_that_was_down_misses_nothing(backend: Backend) {
    // The hub backs off for a minute after the first failure: the participant catches up
    // within the test only because it tells the hub it is back when it starts.
    let hub = Weft::start_with(backend, "retry_min_ms = 60000\nretry_max_ms = 600000\n");
    let mut p1 = Weft::start(backend);
    let p2 = Weft::start(backend);
    let alice = hub.register("alice");
    let bob = p1.register("bob");
    let carol = p2.register("carol");
    let room = alice.create_lm_room(&[&bob.id, &carol.id], "private_chat");
    bob.wait_invite(&room);
    bob.join(&room);
    carol.wait_invite(&room);
    carol.join(&room);
    let admin = hub.admin("operator");
    bob.say(&room, "before the outage");

    p1.kill();
    let mut sent = Vec::new();
    for i in 0..15 {
        sent.push(alice.say(&room, &format!("alice while bob's server is down {i}")));
        sent.push(carol.say(&room, &format!("carol while bob's server is down {i}")));
    }
    // The operator sees the backlog owed to the dead participant.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, view) = admin.get_raw("/_weft/admin/v1/linearized");
        assert_eq!(s, 200, "{view}");
        let owed = view["hubbed_rooms"][0]["participants"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["server"] == json!(p1.name)))
            .map(|p| p["backlog"].as_i64().unwrap_or(0))
            .unwrap_or(0);
        if owed > 0 {
            assert_eq!(view["hubbed_rooms"][0]["room_id"], json!(room));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no backlog for {}: {view}",
            p1.name
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let deliveries fail for a while.
    std::thread::sleep(Duration::from_secs(3));

    p1.restart();
    let back = Instant::now();
    let hub_line = alice.wait_timeline(&room, "everything sent", |t| {
        contains_all(&t.to_vec(), &sent)
    });
    let bob_line = bob.wait_timeline(&room, "the hub's line", |t| ids(t) == ids(&hub_line));
    assert_eq!(ids(&bob_line), ids(&hub_line));
    assert!(
        back.elapsed() < Duration::from_secs(30),
        "caught up only after {:?}",
        back.elapsed()
    );
    assert!(p1.log().contains("told the hub we are back"));
    // And it takes part again.
    let after = bob.say(&room, "back");
    alice.wait_timeline(&room, "bob's return", |t| t.iter().any(|e| e.0 == after));
    // The backlog drained.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = admin.get_raw("/_weft/admin/v1/linearized");
        let owed: i64 = view["destinations"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter(|x| x["server"] == json!(p1.name))
                    .map(|x| x["backlog"].as_i64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if owed == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "backlog never drained: {view}");
        std::thread::sleep(Duration::from_millis(100));
    }
    for w in [&hub, &p1, &p2] {
        w.assert_quiet();
    }
}

fn a_gap_in_the_line_is_filled_from_the_hub(backend: Backend) {
    let hub = Weft::start(backend);
    let mut p1 = Weft::start(backend);
    let alice = hub.register("alice");
    let bob = p1.register("bob");
    let room = alice.create_lm_room(&[&bob.id], "private_chat");
    bob.wait_invite(&room);
    bob.join(&room);
    // A second room on the same hub: its messages take the same way to the participant, so
    // one arriving is a barrier for anything the hub sent before it.
    let side = alice.create_lm_room(&[&bob.id], "private_chat");
    bob.wait_invite(&side);
    bob.join(&side);
    let first = alice.say(&room, "before");
    bob.wait_timeline(&room, "the first message", |t| {
        t.iter().any(|e| e.0 == first)
    });

    // The participant misses more than two backfill pages: it is down and the hub forgets
    // what it owed it (as the reference hub does: it tries once).
    p1.kill();
    let mut missed = Vec::new();
    for i in 0..120 {
        missed.push(alice.say(&room, &format!("missed {i}")));
    }
    assert!(
        hub.drop_outbound_queue(&p1.name) > 0,
        "the hub owed the participant nothing"
    );
    p1.restart();
    // Barrier: a message in the side room, sent after the restart, has arrived; a
    // redelivery of the dropped queue would have come first.
    let marker = alice.say(&side, "barrier after the restart");
    bob.wait_timeline(&side, "the barrier", |t| t.iter().any(|e| e.0 == marker));
    let have = bob.timeline(&room);
    assert!(
        !missed.iter().any(|m| have.iter().any(|e| &e.0 == m)),
        "the dropped queue was redelivered"
    );

    // The next event does not extend the participant's tip: it backfills the gap.
    let next = alice.say(&room, "after the gap");
    let hub_line =
        alice.wait_timeline(&room, "the last message", |t| t.iter().any(|e| e.0 == next));
    let bob_line = bob.wait_timeline(&room, "the hub's line", |t| ids(t) == ids(&hub_line));
    assert_eq!(ids(&bob_line), ids(&hub_line));
    assert!(p1.log().contains("filled a gap in the line from the hub"));
    hub.assert_quiet();
    p1.assert_quiet();
}

fn a_send_while_the_hub_is_down_fails_at_once_and_its_retry_lands_once(backend: Backend) {
    let mut hub = Weft::start(backend);
    let p1 = Weft::start(backend);
    let alice = hub.register("alice");
    let bob = p1.register("bob");
    let room = alice.create_lm_room(&[&bob.id], "private_chat");
    bob.wait_invite(&room);
    bob.join(&room);

    hub.kill();
    let started = Instant::now();
    let (s, b) = bob.say_in_txn(&room, "are you there?", "retry-me");
    assert_eq!((s, b["errcode"].as_str()), (502, Some("M_UNKNOWN")), "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the failure took {:?}",
        started.elapsed()
    );
    hub.restart();
    // The client retries the transaction: the same LPDU goes to the hub, once.
    let (s, b) = bob.say_in_txn(&room, "are you there?", "retry-me");
    assert_eq!(s, 200, "{b}");
    let id = b["event_id"].as_str().expect("event_id").to_owned();
    let (s, again) = bob.say_in_txn(&room, "are you there?", "retry-me");
    assert_eq!(
        (s, again["event_id"].as_str()),
        (200, Some(id.as_str())),
        "{again}"
    );
    let line = alice.wait_timeline(&room, "bob's message", |t| t.iter().any(|e| e.0 == id));
    assert_eq!(line.iter().filter(|e| e.3 == "are you there?").count(), 1);
    hub.assert_quiet();
    p1.assert_quiet();
}

fn the_operator_view_is_for_admins(backend: Backend) {
    let hub = Weft::start(backend);
    let alice = hub.register("alice");
    let (s, b) = alice.get_raw("/_weft/admin/v1/linearized");
    assert_eq!(
        (s, b["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{b}"
    );
}

/// What a refusal of one LPDU looks like in the hub's `/send` answer.
fn refusal(answer: &Value, lpdu_id: &str) -> String {
    answer["failed_pdus"][lpdu_id]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{lpdu_id} was not refused: {answer}"))
        .to_owned()
}

fn forged_lpdus_are_refused_and_nothing_is_fanned_out(backend: Backend) {
    let hub = Weft::start(backend);
    let p1 = Weft::start(backend);
    let peers = Peers::start(2, true);
    let (mallory_server, other_server) = (&peers.names[0], &peers.names[1]);
    let alice = hub.register("alice");
    let bob = p1.register("bob");
    let room = alice.create_lm_room(&[&bob.id], "public_chat");
    bob.wait_invite(&room);
    bob.join(&room);
    // The fake participant's user joins through the hub (make_join + send_join).
    let mallory = format!("@mallory:{mallory_server}");
    let answer = peers.join(mallory_server, &hub.name, hub.fed_port, &room, &mallory);
    assert_eq!(
        answer["state"][0]["type"],
        json!("m.room.create"),
        "the whole line, oldest first"
    );
    let good = peers.lpdu(
        mallory_server,
        &hub.name,
        &room,
        &mallory,
        "m.room.message",
        None,
        json!({"body": "legit"}),
    );
    let (s, a) = peers.send_to(
        mallory_server,
        &hub.name,
        hub.fed_port,
        &[canonical::to_value(&good)],
    );
    assert_eq!(s, 200, "{a}");
    assert!(
        a["failed_pdus"].as_object().is_some_and(|f| f.is_empty()),
        "{a}"
    );
    let legit = bob.wait_timeline(&room, "mallory's legit message", |t| {
        t.iter().any(|e| e.3 == "legit")
    });
    let hub_before = alice.timeline(&room);
    assert_eq!(ids(&legit), ids(&hub_before));
    // The echo reached the fake participant.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !peers
        .received(mallory_server)
        .iter()
        .any(|p| p["content"]["body"] == json!("legit"))
    {
        assert!(Instant::now() < deadline, "no echo");
        std::thread::sleep(Duration::from_millis(50));
    }
    let received_before = peers.count(mallory_server);

    let msg = |body: &str| {
        peers.lpdu(
            mallory_server,
            &hub.name,
            &room,
            &mallory,
            "m.room.message",
            None,
            json!({"body": body}),
        )
    };
    // (case, forged LPDU, words the refusal must contain)
    let mut cases: Vec<(&str, ruma::CanonicalJsonObject, &str)> = Vec::new();
    // Bad signature: signed by another key.
    let mut bad_sig = msg("bad signature");
    let stolen = msg("another body");
    bad_sig.insert("signatures".into(), stolen["signatures"].clone());
    cases.push(("bad signature", bad_sig, "signature"));
    // Wrong hash: the content changed after signing (the signature covers only the redacted
    // form, so only the hash can tell).
    let mut wrong_hash = msg("what was signed");
    peer::set(&mut wrong_hash, &["content", "body"], "what was sent");
    cases.push(("wrong hash", wrong_hash, "does not match"));
    // Sender not on the sending server: bob's server never sent this.
    let forged_sender = peers.lpdu(
        mallory_server,
        &hub.name,
        &room,
        &bob.id,
        "m.room.message",
        None,
        json!({"body": "I am bob"}),
    );
    cases.push((
        "sender on another server",
        forged_sender,
        "is not a user of",
    ));
    // Auth violation: mallory (level 0) makes herself admin.
    let coup = peers.lpdu(
        mallory_server,
        &hub.name,
        &room,
        &mallory,
        "m.room.power_levels",
        Some(""),
        json!({"users": {mallory.clone(): 100}}),
    );
    cases.push(("auth violation", coup, "not allowed"));
    // Another hub named.
    let mut elsewhere = msg("misrouted");
    peer::set(&mut elsewhere, &["hub_server"], other_server);
    cases.push(("another hub", elsewhere, "hub"));
    for (name, forged, words) in &cases {
        let id = lm::event_id(forged);
        let (s, a) = peers.send_to(
            mallory_server,
            &hub.name,
            hub.fed_port,
            &[canonical::to_value(forged)],
        );
        assert_eq!(s, 200, "{name}: {a}");
        let why = refusal(&a, &id);
        assert!(why.contains(words), "{name}: {why}");
    }
    // Wrong room version: an LPDU for a room of version 12 on the same hub.
    let (s, dag) = alice.post(
        "/createRoom",
        json!({"room_version": "12", "preset": "public_chat"}),
    );
    assert_eq!(s, 200, "{dag}");
    let dag_room = dag["room_id"].as_str().expect("room").to_owned();
    let wrong_version = peers.lpdu(
        mallory_server,
        &hub.name,
        &dag_room,
        &mallory,
        "m.room.message",
        None,
        json!({"body": "v12"}),
    );
    let (s, a) = peers.send_to(
        mallory_server,
        &hub.name,
        hub.fed_port,
        &[canonical::to_value(&wrong_version)],
    );
    assert_eq!(s, 200, "{a}");
    assert!(
        refusal(&a, &lm::event_id(&wrong_version)).contains("not Linearized Matrix"),
        "{a}"
    );
    // ... and an invite for an obsolete LM version is refused outright.
    let path = format!("{UNSTABLE}/invite/x1");
    let body = json!({"room_version": "org.matrix.i-d.ralston-mimi-linearized-matrix.00", "event": canonical::to_value(&msg("x"))});
    let (s, a) = peers.request(
        mallory_server,
        &p1.name,
        p1.fed_port,
        "POST",
        &path,
        Some(&body),
    );
    assert_eq!(
        (s, a["errcode"].as_str()),
        (400, Some("M_UNSUPPORTED_ROOM_VERSION")),
        "{a}"
    );
    // A join for another room version.
    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        enc(&room),
        enc(&mallory)
    );
    let (s, a) = peers.request(mallory_server, &hub.name, hub.fed_port, "GET", &path, None);
    assert_eq!(
        (s, a["errcode"].as_str()),
        (400, Some("M_INCOMPATIBLE_ROOM_VERSION")),
        "{a}"
    );

    // Nothing was appended or fanned out. Barrier: a legit LPDU sent after the forgeries
    // goes through and reaches the weft participant and the fake one; anything the hub had
    // appended or fanned out of the forgeries would be in the line before it.
    let after = msg("still welcome");
    let (_, a) = peers.send_to(
        mallory_server,
        &hub.name,
        hub.fed_port,
        &[canonical::to_value(&after)],
    );
    assert!(
        a["failed_pdus"].as_object().is_some_and(|f| f.is_empty()),
        "{a}"
    );
    let line = bob.wait_timeline(&room, "the legit message", |t| {
        t.iter().any(|e| e.3 == "still welcome")
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !peers
        .received(mallory_server)
        .iter()
        .any(|p| p["content"]["body"] == json!("still welcome"))
    {
        assert!(Instant::now() < deadline, "no echo of the barrier");
        std::thread::sleep(Duration::from_millis(50));
    }
    let hub_after = alice.timeline(&room);
    assert_eq!(
        ids(&hub_after[..hub_after.len() - 1]),
        ids(&hub_before),
        "the hub appended a forgery"
    );
    assert_eq!(
        ids(&line),
        ids(&hub_after),
        "a forgery reached a participant"
    );
    assert_eq!(
        peers.count(mallory_server),
        received_before + 1,
        "a forgery was fanned out: {:?}",
        peers.received(mallory_server)
    );
    // The same LPDU again (a retry in a new transaction) is not appended twice. Barrier:
    // one more legit LPDU, sent after the retry, lands right after the first.
    let (_, a) = peers.send_to(
        mallory_server,
        &hub.name,
        hub.fed_port,
        &[canonical::to_value(&after)],
    );
    assert!(
        a["failed_pdus"].as_object().is_some_and(|f| f.is_empty()),
        "{a}"
    );
    let last = msg("and again");
    let (_, a) = peers.send_to(
        mallory_server,
        &hub.name,
        hub.fed_port,
        &[canonical::to_value(&last)],
    );
    assert!(
        a["failed_pdus"].as_object().is_some_and(|f| f.is_empty()),
        "{a}"
    );
    let line = bob.wait_timeline(&room, "the second legit message", |t| {
        t.iter().any(|e| e.3 == "and again")
    });
    let hub_line = alice.timeline(&room);
    assert_eq!(ids(&line), ids(&hub_line));
    assert_eq!(
        hub_line.len(),
        hub_before.len() + 2,
        "the retry was appended"
    );
    assert_eq!(
        hub_line.iter().filter(|e| e.3 == "still welcome").count(),
        1,
        "the retry was appended"
    );

    hub.assert_quiet();
    p1.assert_quiet();
}

fn invites_and_kicks_reach_the_right_servers(backend: Backend) {
    let hub = Weft::start(backend);
    let p1 = Weft::start(backend);
    let peers = Peers::start(1, true);
    let fake = &peers.names[0];
    let alice = hub.register("alice");
    let bob = p1.register("bob");
    let room = alice.create_lm_room(&[&bob.id], "private_chat");
    bob.wait_invite(&room);
    bob.join(&room);
    // A participant's user invites a user of a server not in the room: the invite LPDU
    // goes to the hub, which has the target's server sign it first.
    let zed = format!("@zed:{fake}");
    let (s, b) = bob.post(
        &format!("/rooms/{}/invite", enc(&room)),
        json!({"user_id": zed}),
    );
    // Private chat: invite level 0, bob may invite.
    assert_eq!(s, 200, "{b}");
    let invite = format!("invite:{zed}");
    let line = alice.wait_timeline(&room, "zed's invite", |t| t.iter().any(|e| e.3 == invite));
    let by = line.iter().find(|e| e.3 == invite).map(|e| e.1.clone());
    assert_eq!(by.as_deref(), Some(bob.id.as_str()));
    // zed's server signed it but, not being in the room, got no /send of it.
    assert_eq!(peers.count(fake), 0, "{:?}", peers.received(fake));
    // zed joins; alice kicks zed: the kicked user's server hears of it.
    peers.join(fake, &hub.name, hub.fed_port, &room, &zed);
    let (s, b) = alice.post(
        &format!("/rooms/{}/kick", enc(&room)),
        json!({"user_id": zed}),
    );
    assert_eq!(s, 200, "{b}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !peers.received(fake).iter().any(|p| {
        p["type"] == json!("m.room.member")
            && p["state_key"] == json!(zed)
            && p["content"]["membership"] == json!("leave")
    }) {
        assert!(
            Instant::now() < deadline,
            "the kicked user's server never heard of it: {:?}",
            peers.received(fake)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And bob's server saw all of it in the same order as the hub.
    let hub_line = alice.timeline(&room);
    let bob_line = bob.wait_timeline(&room, "the kick", |t| t.len() >= hub_line.len());
    assert_eq!(ids(&bob_line), ids(&hub_line));
    assert!(
        bob_line
            .iter()
            .any(|e| e.3 == format!("leave:{zed}") && e.1 == alice.id)
    );
    hub.assert_quiet();
    p1.assert_quiet();
}

/// weft as a participant in a room of a hub with the reference implementation's habits: it
/// fans out before it answers (our join and our echo arrive while our requests are open),
/// answers `backfill` newest first ten at a time, refuses with 500 `M_UNKNOWN`, and drops
/// what it could not deliver.
fn weft_participates_in_a_room_of_a_reference_like_hub(backend: Backend) {
    let fake = FakeHub::start();
    let p1 = Weft::start(backend);
    let bob = p1.register("bob");
    fake.invite(&bob.id).expect("bob's server signs the invite");
    bob.wait_invite(&fake.room);
    bob.join(&fake.room);
    let hello = bob.say(&fake.room, "hello from weft");
    assert_eq!(
        fake.line().last(),
        Some(&hello),
        "the event ID is the hub's"
    );
    let hi = fake.say("hi bob");
    let line = bob.wait_timeline(&fake.room, "dave's message", |t| {
        t.iter().any(|e| e.0 == hi)
    });
    let want = fake.line();
    assert_eq!(
        ids(&line),
        want.iter().map(String::as_str).collect::<Vec<_>>()
    );

    // The hub drops what it cannot deliver; the next event reveals the gap, and weft fills
    // it from the hub's newest-first, ten-at-a-time backfill.
    fake.set_delivering(&p1.name, false);
    for i in 0..25 {
        fake.say(&format!("dropped {i}"));
    }
    fake.set_delivering(&p1.name, true);
    let last = fake.say("after the drop");
    bob.wait_timeline(&fake.room, "the hub's line", |t| {
        ids(t) == fake.line().iter().map(String::as_str).collect::<Vec<_>>()
    });
    assert!(p1.log().contains("filled a gap in the line from the hub"));
    assert!(bob.timeline(&fake.room).iter().any(|e| e.0 == last));

    // The hub knows more than we do (bob was kicked, and the kick was dropped): weft's own
    // check passes, the hub refuses, and the client hears the hub's reason.
    fake.set_delivering(&p1.name, false);
    fake.dave_sends(
        "m.room.member",
        Some(&bob.id),
        json!({"membership": "leave"}),
    );
    let (s, b) = bob.try_say(&fake.room, "am I still here?");
    assert_eq!(
        (s, b["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{b}"
    );
    assert!(
        b["error"]
            .as_str()
            .unwrap_or_default()
            .contains("the hub refused"),
        "{b}"
    );
    p1.assert_quiet();
}
