//! Joining a room of hundreds of members held elsewhere: `fedpeer` hosts a room of real
//! signed member events (`fedpeer::big_room`: one key, many users of its own server name),
//! a weft user joins it through the client API (weft does `make_join` / `send_join`, checks
//! the state and auth chain, stores them in one batch). Checked: the room's state on weft
//! is exactly the host's (every event ID, after the join), the members list is complete,
//! and the joined user can send (the message reaches the host).
//!
//! Every case runs on SQLite and on PostgreSQL. The timing of big joins is measured by
//! `tools/bench_join.sh`, never here.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fedpeer::Peer;
use fedpeer::peer::enc;
use ruma::OwnedEventId;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, Federation, Options, Server, free_port};

both_backends!(a_full_join_of_a_room_of_hundreds_stores_the_hosts_state);

const MEMBERS: usize = 300;

fn fed_server(backend: Backend) -> Server {
    Server::start_with(
        backend,
        Options {
            federation: Some(Federation {
                // The full join, as before partial-state joins (`partial_join` has those).
                settings: "partial_state_joins = false".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// The event IDs of a room's current state as a local user reads them.
pub(crate) fn state_ids(client: &crate::client::Client, room: &str) -> BTreeSet<String> {
    let v = client.get(&format!("/rooms/{}/state", enc(room))).ok();
    v.as_array()
        .expect("a state list")
        .iter()
        .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
        .collect()
}

pub(crate) fn joined_members(client: &crate::client::Client, room: &str) -> usize {
    let v: Value = client
        .get(&format!("/rooms/{}/joined_members", enc(room)))
        .ok();
    v["joined"].as_object().map(|j| j.len()).unwrap_or(0)
}

/// Waits until the host holds an event (weft delivered it over `/send`).
pub(crate) fn wait_at_host(peer: &Peer, room: &str, event_id: &str) {
    let id = OwnedEventId::try_from(event_id).expect("event ID");
    let start = Instant::now();
    while !peer
        .with_room(room, |r| r.event(&id).is_some())
        .expect("room hosted")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{event_id} never reached the host"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn a_full_join_of_a_room_of_hundreds_stores_the_hosts_state(backend: Backend) {
    let srv = fed_server(backend);
    let alice = srv.register("alice");
    let peer = Peer::start(free_port()).expect("start peer");
    let room = peer
        .create_big_rooms(1, MEMBERS)
        .expect("build the room")
        .pop()
        .expect("one room");

    let r = alice.post(
        &format!(
            "/join/{}?server_name={}",
            enc(&room),
            enc(peer.server_name())
        ),
        &json!({}),
    );
    assert_eq!(r.status, 200, "join: {}", r.text);

    // The host's state now includes alice's join: weft's must be the same, event for event.
    let host: BTreeSet<String> = peer
        .with_room(&room, |r| r.current_state_ids())
        .expect("room hosted")
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        host.len(),
        MEMBERS + 7,
        "create, creator, 4 more, members, alice"
    );
    assert_eq!(state_ids(&alice, &room), host);
    assert_eq!(joined_members(&alice, &room), MEMBERS + 2);

    // alice can send, and the message reaches the host.
    let sent = alice.send_text(&room, "hello, everyone");
    wait_at_host(&peer, &room, &sent);
    srv.assert_no_panics();
}
