//! Partial-state joins (`send_join?omit_members=true`, the spec's faster joins) on the
//! joining side: `fedpeer` hosts a room of hundreds of real signed members and answers
//! `send_join` without them; weft answers the join at once, lets the user send, fetches the
//! members in the background (`/state_ids`, `/state`), and ends with exactly the host's
//! state. Also: an event from a member the partial state does not know yet is deferred and
//! accepted once the state is complete (never rejected); a restart during partial state
//! resumes; a host whose full state disagrees with its join answer leaves the room partial
//! (logged), never corrupted; and a room hosted by Synapse joined with partial state.
//!
//! How long the resync takes is held open by delaying or failing fedpeer's `/state_ids`, so
//! the assertions "during partial state" do not race it. Every case runs on SQLite and
//! PostgreSQL; the timing of big joins is `tools/bench_join.sh`'s.

use std::collections::BTreeSet;
use std::time::Duration;

use fedpeer::Peer;
use fedpeer::craft;
use fedpeer::peer::{enc, pdu_results};
use serde_json::{Value, json};
use weft_protocol::builder::EventDraft;

use crate::big_join::{joined_members, state_ids, wait_at_host};
use crate::both_backends;
use crate::federation::{join_via, wait};
use crate::harness::{Backend, Federation, Options, Server, free_port};
use crate::synapse::Synapse;

both_backends!(
    a_partial_join_answers_first_and_ends_with_the_hosts_state,
    an_event_from_a_member_not_yet_known_is_deferred_then_accepted,
    a_restart_during_partial_state_resumes_the_resync,
    a_host_whose_full_state_disagrees_leaves_the_room_partial,
    a_synapse_room_joined_with_partial_state_completes,
    an_event_accepted_during_partial_state_is_rejected_against_the_full_state,
    the_members_learned_at_completion_reach_an_incremental_sync,
    the_members_learned_at_completion_reach_a_sliding_sync_client,
);

const MEMBERS: usize = 300;
const STATE_IDS: &str = "/_matrix/federation/v1/state_ids/";
const LONG: Duration = Duration::from_secs(60);

fn partial_server(backend: Backend, extra: &str) -> Server {
    Server::start_with(
        backend,
        Options {
            federation: Some(Federation {
                settings: if extra.contains("partial_state_members_wait_ms") {
                    format!("partial_state_joins = true\n{extra}")
                } else {
                    format!(
                        "partial_state_joins = true\npartial_state_members_wait_ms = 20000\n{extra}"
                    )
                },
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// One partial-state case's set-up: a weft server joining with partial state (`extra`:
/// more `[federation]` settings), its user `@alice`, and fedpeer hosting a room of
/// [`MEMBERS`] members.
struct Setup {
    srv: Server,
    alice: crate::client::Client,
    peer: Peer,
    room: String,
}

fn setup(backend: Backend, extra: &str) -> Setup {
    let srv = partial_server(backend, extra);
    let alice = srv.register("alice");
    let peer = Peer::start(free_port()).expect("start peer");
    let room = peer
        .create_big_rooms(1, MEMBERS)
        .expect("build")
        .pop()
        .expect("room");
    Setup {
        srv,
        alice,
        peer,
        room,
    }
}

fn host_state(peer: &Peer, room: &str) -> BTreeSet<String> {
    peer.with_room(room, |r| r.current_state_ids())
        .expect("room hosted")
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn partial_rooms(srv: &Server) -> i64 {
    srv.count_rows("partial_state_rooms")
}

fn wait_complete(srv: &Server) {
    wait("the room to leave partial state", LONG, || {
        (partial_rooms(srv) == 0).then_some(())
    });
}

fn join(alice: &crate::client::Client, peer: &Peer, room: &str) {
    let r = alice.post(
        &format!(
            "/join/{}?server_name={}",
            enc(room),
            enc(peer.server_name())
        ),
        &json!({}),
    );
    assert_eq!(r.status, 200, "join: {}", r.text);
}

fn a_partial_join_answers_first_and_ends_with_the_hosts_state(backend: Backend) {
    let Setup {
        srv,
        alice,
        peer,
        room,
    } = setup(backend, "");
    // The resync waits 8 s for its first answer: long enough to look at the partial state.
    peer.delay("GET", STATE_IDS, Duration::from_secs(8));

    join(&alice, &peer, &room);
    assert_eq!(
        partial_rooms(&srv),
        1,
        "the join answered with partial state"
    );
    // The room is joined for /sync at once.
    let sync = alice.sync(None, 0, None);
    assert!(
        sync["rooms"]["join"].get(&room).is_some(),
        "joined in /sync"
    );
    // The user can send now, and the host (named in servers_in_room) gets it.
    let sent = alice.send_text(&room, "hello before the members are in");
    wait_at_host(&peer, &room, &sent);
    assert_eq!(
        partial_rooms(&srv),
        1,
        "still partial when the host had the message"
    );

    // /joined_members waits for the full state, then lists everyone.
    assert_eq!(joined_members(&alice, &room), MEMBERS + 2);
    wait_complete(&srv);
    assert_eq!(state_ids(&alice, &room), host_state(&peer, &room));
    assert_eq!(srv.count_rows("partial_state_deferred"), 0);
    // And sends go on after completion.
    let after = alice.send_text(&room, "hello after");
    wait_at_host(&peer, &room, &after);
    srv.assert_no_panics();
}

fn an_event_from_a_member_not_yet_known_is_deferred_then_accepted(backend: Backend) {
    let Setup {
        srv,
        alice,
        peer,
        room,
    } = setup(backend, "");
    peer.delay("GET", STATE_IDS, Duration::from_secs(8));
    join(&alice, &peer, &room);
    assert_eq!(partial_rooms(&srv), 1);

    // @m5 is a member the partial state left out; their message cites alice's join.
    let msg = peer
        .message(&room, "m5", "from a member weft does not know yet")
        .expect("message");
    let mut fed = peer.client(&srv.server_name).expect("client");
    let answer = fed
        .send_transaction("partial-1", vec![msg.to_federation_value()], vec![])
        .expect("send");
    assert_eq!(answer.status, 200, "{}", answer.json());
    let results = pdu_results(&answer.json());
    assert_eq!(
        results.get(&msg.owned_event_id()),
        Some(&None),
        "deferred, not refused: {results:?}"
    );
    let event_path = format!(
        "/rooms/{}/event/{}",
        enc(&room),
        enc(msg.event_id().as_str())
    );
    assert_eq!(partial_rooms(&srv), 1, "still partial");
    assert_eq!(
        alice.get(&event_path).status,
        404,
        "not in the room while deferred"
    );
    assert_eq!(srv.count_rows("partial_state_deferred"), 1);

    wait_complete(&srv);
    let got: Value = wait("the deferred event to be accepted", LONG, || {
        let r = alice.get(&event_path);
        (r.status == 200).then(|| r.ok())
    });
    assert_eq!(
        got["content"]["body"],
        "from a member weft does not know yet"
    );
    let rejected = srv.query_text(
        "SELECT event_id AS v FROM events WHERE rejected IS NOT NULL AND event_id = ?",
        msg.event_id().as_str(),
    );
    assert!(rejected.is_empty(), "never rejected");
    assert_eq!(srv.count_rows("partial_state_deferred"), 0);
    assert_eq!(state_ids(&alice, &room), host_state(&peer, &room));
    srv.assert_no_panics();
}

fn a_restart_during_partial_state_resumes_the_resync(backend: Backend) {
    let Setup {
        mut srv,
        alice,
        peer,
        room,
    } = setup(backend, "");
    // The host fails every /state_ids until we restart.
    peer.script(
        "GET",
        STATE_IDS,
        500,
        json!({"errcode": "M_UNKNOWN", "error": "busy"}),
    );
    join(&alice, &peer, &room);
    let sent = alice.send_text(&room, "before the restart");
    wait_at_host(&peer, &room, &sent);
    assert_eq!(partial_rooms(&srv), 1);

    srv.stop();
    peer.clear_scripts();
    srv.start_again();
    wait_complete(&srv);
    assert!(
        srv.log().contains("partial state: resuming the resync"),
        "resumed at start-up"
    );
    assert_eq!(state_ids(&alice, &room), host_state(&peer, &room));
    assert_eq!(joined_members(&alice, &room), MEMBERS + 2);
    srv.assert_no_panics();
}

fn a_host_whose_full_state_disagrees_leaves_the_room_partial(backend: Backend) {
    let Setup {
        srv,
        alice,
        peer,
        room,
    } = setup(
        backend,
        "partial_state_resync_attempts = 2\npartial_state_members_wait_ms = 500",
    );
    // The host's /state_ids leaves out the power levels its join answer had (and its
    // /state names them): the answers disagree, so weft believes neither.
    let pl = peer
        .with_room(&room, |r| {
            r.state_event("m.room.power_levels", "")
                .map(|e| e.event_id().to_string())
        })
        .expect("hosted")
        .expect("power levels");
    let (state, chain) = peer
        .with_room(&room, |r| {
            let tip = r.extremities().first().cloned().expect("a tip");
            let (mut s, c) = r.state_ids_at(&tip).expect("state at the tip");
            if let Some(e) = r.event(&tip) {
                s.push(e.owned_event_id());
            }
            (s, c)
        })
        .expect("hosted");
    let lying: Vec<String> = state
        .iter()
        .map(|e| e.to_string())
        .filter(|e| *e != pl)
        .collect();
    peer.script(
        "GET",
        STATE_IDS,
        200,
        json!({"pdu_ids": lying, "auth_chain_ids": chain.iter().map(|e| e.to_string()).collect::<Vec<_>>()}),
    );
    join(&alice, &peer, &room);

    wait("the resync to give up", LONG, || {
        srv.log()
            .contains("partial state: resync gave up")
            .then_some(())
    });
    assert!(srv.log().contains("partial state: resync failed"));
    assert_eq!(partial_rooms(&srv), 1, "the room stays partial");
    // The room still works for what it knows: alice sends, members answer (bounded).
    let sent = alice.send_text(&room, "still here");
    wait_at_host(&peer, &room, &sent);
    let r = alice.get(&format!("/rooms/{}/joined_members", enc(&room)));
    assert_eq!(r.status, 200, "{}", r.text);
    // Nothing the host said went into the state: the power levels are the join answer's.
    let ours = state_ids(&alice, &room);
    assert!(ours.contains(&pl), "the join answer's power levels stay");
    assert!(
        ours.len() < MEMBERS,
        "no members taken from the disagreeing answers"
    );
    srv.assert_no_panics();
}

fn a_synapse_room_joined_with_partial_state_completes(backend: Backend) {
    let syn = Synapse::shared();
    let w = partial_server(backend, "");
    let alice = syn.register_fresh("alice");
    let room = alice.create_room(&json!({"preset": "public_chat", "name": "partial"}));
    let mut others = Vec::new();
    for i in 0..5 {
        let c = syn.register_fresh(&format!("member{i}"));
        assert_eq!(c.join(&room).status, 200);
        others.push(c);
    }
    let bob = w.register("bob");
    join_via(&bob, &room, &syn.server_name());
    let sent = bob.send_text(&room, "from weft, maybe before the members");
    wait(
        "the Synapse-hosted room to leave partial state",
        LONG,
        || (partial_rooms(&w) == 0).then_some(()),
    );
    // The room leaves partial state in the database a moment before the line is logged.
    let began = std::time::Instant::now();
    while !w.log().contains("partial state: room completed")
        && began.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        w.log().contains("partial state: room completed"),
        "weft joined with partial state (Synapse answered omit_members): {}",
        crate::harness::tail(&w.log(), 40)
    );
    // The member list matches Synapse's.
    let theirs: BTreeSet<String> = alice
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .ok()["joined"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let ours: BTreeSet<String> = bob
        .get(&format!("/rooms/{}/joined_members", enc(&room)))
        .ok()["joined"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 7, "alice, five members, bob");
    wait("Synapse to get weft's message", LONG, || {
        let r = alice.get(&format!("/rooms/{}/event/{}", enc(&room), enc(&sent)));
        (r.status == 200).then_some(())
    });
    w.assert_no_panics();
}

/// The ban the partial state left out: the creator banned `@m7` before weft joined, and
/// the join answer (members omitted) does not name it. During partial state `@m7` rejoins
/// with auth events citing its old join instead of the ban, then sends a message; against
/// the partial state both pass and are accepted. Once the full state is in, both are
/// authorized again against the state before them, now naming the ban: both are rejected,
/// no longer served, and the state names the ban again.
fn an_event_accepted_during_partial_state_is_rejected_against_the_full_state(backend: Backend) {
    let Setup {
        srv,
        alice,
        peer,
        room,
    } = setup(backend, "");
    let m7 = peer.user("m7");
    let old_join = peer
        .with_room(&room, |r| {
            r.state_event("m.room.member", m7.as_str())
                .map(|e| e.event_id().to_string())
        })
        .expect("hosted")
        .expect("@m7 is a member");
    let ban = peer
        .build(
            &room,
            &EventDraft::state(
                "m.room.member",
                m7.as_str(),
                peer.user("creator"),
                json!({"membership": "ban"}),
            ),
        )
        .expect("ban");
    peer.append(&room, &ban).expect("append");
    peer.delay("GET", STATE_IDS, Duration::from_secs(8));
    join(&alice, &peer, &room);
    assert_eq!(partial_rooms(&srv), 1, "joined with partial state");

    // The rejoin cites the old join where its auth events should cite the ban.
    let version = peer.room_version(&room).expect("version");
    let mut rejoin = peer
        .template(
            &room,
            &EventDraft::state(
                "m.room.member",
                m7.as_str(),
                m7.clone(),
                json!({"membership": "join"}),
            ),
        )
        .expect("template");
    let auth: Vec<String> = craft::to_value(&rejoin)["auth_events"]
        .as_array()
        .expect("auth events")
        .iter()
        .filter_map(|v| v.as_str())
        .map(|id| {
            if id == ban.event_id().as_str() {
                old_join.clone()
            } else {
                id.to_owned()
            }
        })
        .collect();
    assert!(auth.contains(&old_join), "the rejoin cites the old join");
    craft::set(&mut rejoin, "auth_events", json!(auth)).expect("auth events");
    let rejoin = peer.sign(rejoin, version).expect("sign");
    peer.append(&room, &rejoin).expect("append");
    let msg = peer
        .message(&room, "m7", "from a banned member")
        .expect("message");
    let mut fed = peer.client(&srv.server_name).expect("client");
    for (txn, pdu) in [("partial-ban-1", &rejoin), ("partial-ban-2", &msg)] {
        let answer = fed
            .send_transaction(txn, vec![pdu.to_federation_value()], vec![])
            .expect("send");
        assert_eq!(answer.status, 200, "{}", answer.json());
        let results = pdu_results(&answer.json());
        assert_eq!(
            results.get(&pdu.owned_event_id()),
            Some(&None),
            "accepted: {results:?}"
        );
    }
    let event_path = |id: &str| format!("/rooms/{}/event/{}", enc(&room), enc(id));
    assert_eq!(partial_rooms(&srv), 1, "still partial");
    assert_eq!(
        alice.get(&event_path(msg.event_id().as_str())).status,
        200,
        "accepted against the partial state"
    );
    assert_eq!(
        srv.count_rows("partial_state_deferred"),
        0,
        "nothing deferred"
    );

    wait_complete(&srv);
    for id in [rejoin.event_id().as_str(), msg.event_id().as_str()] {
        let rejected = srv.query_text(
            "SELECT event_id AS v FROM events WHERE rejected IS NOT NULL AND event_id = ?",
            id,
        );
        assert_eq!(
            rejected,
            vec![id.to_owned()],
            "{id} rejected after completion"
        );
        assert_eq!(
            alice.get(&event_path(id)).status,
            404,
            "{id} no longer served"
        );
    }
    let ours = state_ids(&alice, &room);
    assert!(
        ours.contains(ban.event_id().as_str()),
        "the state names the ban"
    );
    assert!(
        !ours.contains(rejoin.event_id().as_str()),
        "not the rejected rejoin"
    );
    let messages = alice.get(&format!("/rooms/{}/messages?dir=b&limit=50", enc(&room)));
    assert_eq!(messages.status, 200, "{}", messages.text);
    assert!(
        !messages.text.contains("from a banned member"),
        "not in the history"
    );
    // The rejected message was the room's only forward extremity: it is one no more, and
    // alice's next message, which reaches the host, cites what came before it.
    let tips = srv.query_text(
        "SELECT event_id AS v FROM forward_extremities WHERE room_id = ?",
        &room,
    );
    assert!(!tips.is_empty(), "the room has forward extremities");
    for id in [rejoin.event_id().as_str(), msg.event_id().as_str()] {
        assert!(
            !tips.iter().any(|t| t == id),
            "{id} is still a forward extremity: {tips:?}"
        );
    }
    let after = alice.send_text(&room, "after the ban was seen");
    wait_at_host(&peer, &room, &after);
    let prevs: Vec<String> = peer
        .with_room(&room, |r| {
            r.event(&ruma::OwnedEventId::try_from(after.as_str()).expect("event ID"))
                .map(|e| e.prev_events().iter().map(|p| p.to_string()).collect())
        })
        .expect("hosted")
        .expect("at the host");
    for id in [rejoin.event_id().as_str(), msg.event_id().as_str()] {
        assert!(
            !prevs.iter().any(|p| p == id),
            "alice's message cites the rejected {id}: {prevs:?}"
        );
    }
    srv.assert_no_panics();
}

/// The members a completion learns are no timeline events: an incremental `/sync` across
/// the completion carries them in the room's state section (and a long-poll is woken by it).
fn the_members_learned_at_completion_reach_an_incremental_sync(backend: Backend) {
    let Setup {
        srv,
        alice,
        peer,
        room,
    } = setup(backend, "");
    peer.delay("GET", STATE_IDS, Duration::from_secs(8));
    join(&alice, &peer, &room);
    assert_eq!(partial_rooms(&srv), 1, "joined with partial state");
    let members = |sync: &Value| -> BTreeSet<String> {
        let room = &sync["rooms"]["join"][&room];
        ["state", "timeline"]
            .iter()
            .filter_map(|section| room[section]["events"].as_array())
            .flatten()
            .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect()
    };
    let first = alice.sync(None, 0, None);
    let initial = members(&first);
    assert!(
        initial.len() < 5,
        "the partial state has (almost) no members: {initial:?}"
    );
    let mut since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let mut seen = initial.clone();
    let creator = peer.user("creator").to_string();
    wait("the learned members in an incremental /sync", LONG, || {
        let next = alice.sync(Some(&since), 5000, None);
        since = next["next_batch"].as_str().expect("next_batch").to_owned();
        seen.extend(members(&next));
        (seen.len() >= MEMBERS + 2).then_some(())
    });
    assert_eq!(partial_rooms(&srv), 0, "complete");
    assert!(seen.contains(&peer.user("m5").to_string()));
    assert!(seen.contains(&creator));
    assert!(seen.contains(&alice.user_id));
    assert_eq!(seen.len(), MEMBERS + 2, "every member, once");
    // A later incremental sync does not repeat them.
    let quiet = alice.sync(Some(&since), 0, None);
    assert!(members(&quiet).is_empty(), "{}", quiet["rooms"]);
    srv.assert_no_panics();
}

/// The same for sliding sync (MSC4186), as Element X speaks it: a `room-list` connection
/// whose list asks for `$LAZY` and `$ME` members, and a subscription to the open room asking
/// for every member. The members the completion learns are outliers (no timeline event
/// carries them), so the room is sent again once its full state is in, with them in its
/// `required_state` delta and the full `joined_count`; a later request does not repeat them.
fn the_members_learned_at_completion_reach_a_sliding_sync_client(backend: Backend) {
    let Setup {
        srv,
        alice,
        peer,
        room,
    } = setup(backend, "");
    peer.delay("GET", STATE_IDS, Duration::from_secs(8));
    join(&alice, &peer, &room);
    assert_eq!(partial_rooms(&srv), 1, "joined with partial state");
    const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let body = json!({
        "conn_id": "room-list",
        "lists": {"all_rooms": {
            "ranges": [[0, 19]],
            "timeline_limit": 1,
            "required_state": [
                ["m.room.encryption", ""], ["m.room.name", ""], ["m.room.avatar", ""],
                ["m.room.member", "$LAZY"], ["m.room.member", "$ME"],
            ],
        }},
        "room_subscriptions": {room.clone(): {
            "timeline_limit": 20,
            "required_state": [["m.room.member", "*"], ["m.room.power_levels", ""]],
        }},
    });
    let sliding = |pos: Option<&str>, timeout_ms: u64| -> Value {
        let mut path = format!("{PATH}?timeout={timeout_ms}");
        if let Some(p) = pos {
            path.push_str(&format!("&pos={}", enc(p)));
        }
        let r = alice.post(&path, &body);
        assert_eq!(r.status, 200, "sliding sync: {}", r.text);
        r.body
    };
    let members = |resp: &Value| -> BTreeSet<String> {
        resp["rooms"][&room]["required_state"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect()
    };
    let first = sliding(None, 0);
    assert_eq!(first["rooms"][&room]["initial"], true, "{}", first["rooms"]);
    let initial = members(&first);
    assert!(
        initial.len() < 5,
        "the partial state has (almost) no members: {initial:?}"
    );
    let mut pos = first["pos"].as_str().expect("pos").to_owned();
    let mut seen = initial.clone();
    let mut joined_count = first["rooms"][&room]["joined_count"].clone();
    wait("the learned members in a sliding sync", LONG, || {
        let next = sliding(Some(&pos), 5000);
        pos = next["pos"].as_str().expect("pos").to_owned();
        if let Some(r) = next["rooms"].get(&room) {
            assert!(r.get("initial").is_none(), "sent as a delta: {r}");
            joined_count = r["joined_count"].clone();
        }
        seen.extend(members(&next));
        (seen.len() >= MEMBERS + 2).then_some(())
    });
    assert_eq!(partial_rooms(&srv), 0, "complete");
    assert!(seen.contains(&peer.user("m5").to_string()));
    assert!(seen.contains(&peer.user("creator").to_string()));
    assert!(seen.contains(&alice.user_id));
    assert_eq!(seen.len(), MEMBERS + 2, "every member, once");
    assert_eq!(joined_count, json!(MEMBERS + 2), "the room's joined count");
    // A later request does not send the room again.
    let quiet = sliding(Some(&pos), 0);
    assert!(
        quiet["rooms"].get(&room).is_none(),
        "sent again: {}",
        quiet["rooms"]
    );
    srv.assert_no_panics();
}
