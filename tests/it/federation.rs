//! Federation with real Synapse, in both directions: rooms created on either side, joined
//! from the other; messages, name/topic/power-level changes, invites, kicks and bans both
//! ways; each server's `/state` of the room equal at the end. Outages: Synapse stopped,
//! weft killed with a non-empty outbound queue, weft down while Synapse sends; a to-device
//! message to a server that is down. A Synapse room alias resolved and joined over
//! federation (and refused with federation off). Between two weft servers: a network partition with
//! conflicting state changes on both sides, healed and resolved to one state.
//!
//! Every scenario runs with weft on SQLite and on PostgreSQL (`::sqlite`, `::postgres`).
//! Scenarios that leave Synapse running share one instance ([`Synapse::shared`]; their users
//! are fresh per run); those that stop or kill it start their own. The partition test runs
//! once: its two weft servers are on one backend each.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{Client, enc};
use crate::harness::{Backend, Federation, Options, Server, free_port};
use crate::proxy::Proxy;
use crate::synapse::Synapse;

pub(crate) const WAIT: Duration = Duration::from_secs(60);

both_backends!(
    synapse_room_joined_from_weft,
    weft_room_joined_from_synapse,
    typing_and_receipts_with_synapse,
    decline_a_synapse_invite,
    knock_on_a_synapse_room,
    outages_with_synapse,
    to_device_survives_synapse_outage,
    join_a_synapse_room_by_its_alias,
    remote_aliases_without_federation_are_not_found,
);

/// A weft server with federation on (loopback, self-signed TLS, fast retries).
pub(crate) fn weft(backend: Backend) -> Server {
    Server::start_with(
        backend,
        Options {
            federation: Some(Federation::default()),
            ..Default::default()
        },
    )
}

/// Polls `f` until it yields a value; panics with `what` after `within`.
#[track_caller]
pub(crate) fn wait<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    let mut step = Duration::from_millis(50);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(step);
        step = (step * 2).min(Duration::from_millis(500));
    }
}

/// The room's current state as `(type, state_key, event_id)`.
pub(crate) fn state(c: &Client, room: &str) -> BTreeSet<(String, String, String)> {
    let r = c.get(&format!("/rooms/{}/state", enc(room)));
    if r.status != 200 {
        return BTreeSet::new();
    }
    r.body
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["type"].as_str().unwrap_or_default().to_owned(),
                        e["state_key"].as_str().unwrap_or_default().to_owned(),
                        e["event_id"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn state_content(c: &Client, room: &str, kind: &str, key: &str) -> Option<Value> {
    let r = c.get(&format!(
        "/rooms/{}/state/{}/{}",
        enc(room),
        enc(kind),
        enc(key)
    ));
    (r.status == 200).then_some(r.body)
}

/// Message bodies of a room in timeline order, as `(sender, body)`.
pub(crate) fn bodies(c: &Client, room: &str) -> Vec<(String, String)> {
    let r = c.get(&format!("/rooms/{}/messages?dir=b&limit=500", enc(room)));
    if r.status != 200 {
        return Vec::new();
    }
    let mut out: Vec<(String, String)> = r.body["chunk"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| {
                    (
                        e["sender"].as_str().unwrap_or_default().to_owned(),
                        e["content"]["body"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.reverse();
    out
}

#[track_caller]
pub(crate) fn wait_bodies(c: &Client, room: &str, wanted: &[&str]) {
    wait(&format!("{} to see {wanted:?}", c.user_id), WAIT, || {
        let have: Vec<String> = bodies(c, room).into_iter().map(|(_, b)| b).collect();
        wanted
            .iter()
            .all(|w| have.iter().any(|h| h == w))
            .then_some(())
    });
}

pub(crate) fn membership(c: &Client, room: &str, user: &str) -> Option<String> {
    state_content(c, room, "m.room.member", user)
        .and_then(|v| v["membership"].as_str().map(str::to_owned))
}

#[track_caller]
pub(crate) fn wait_membership(c: &Client, room: &str, user: &str, m: &str) {
    wait(&format!("{} to see {user} {m}", c.user_id), WAIT, || {
        (membership(c, room, user).as_deref() == Some(m)).then_some(())
    });
}

#[track_caller]
pub(crate) fn wait_invite(c: &Client, room: &str) {
    wait(
        &format!("{} to be invited to {room}", c.user_id),
        WAIT,
        || {
            let s = c.sync(None, 0, None);
            s["rooms"]["invite"].get(room).map(|_| ())
        },
    );
}

#[track_caller]
pub(crate) fn join_via(c: &Client, room: &str, server: &str) {
    let r = c.post(
        &format!("/join/{}?server_name={}", enc(room), enc(server)),
        &json!({}),
    );
    assert_eq!(
        r.status, 200,
        "{} could not join {room}: {}",
        c.user_id, r.text
    );
}

#[track_caller]
pub(crate) fn set_state(c: &Client, room: &str, kind: &str, key: &str, content: Value) {
    let r = c.put_state(room, kind, key, &content);
    assert_eq!(
        r.status, 200,
        "{} could not set {kind}: {}",
        c.user_id, r.text
    );
}

#[track_caller]
pub(crate) fn wait_state_equal(a: &Client, b: &Client, room: &str) {
    let mut last;
    let ok = {
        let deadline = Instant::now() + WAIT;
        loop {
            last = (state(a, room), state(b, room));
            if !last.0.is_empty() && last.0 == last.1 {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    assert!(
        ok,
        "room state differs between {} and {}:\nonly on the first: {:?}\nonly on the second: {:?}",
        a.user_id,
        b.user_id,
        last.0.difference(&last.1).collect::<Vec<_>>(),
        last.1.difference(&last.0).collect::<Vec<_>>()
    );
}

pub(crate) fn raise_power(c: &Client, room: &str, user: &str, level: i64) {
    let mut pl = state_content(c, room, "m.room.power_levels", "").expect("power levels");
    pl["users"][user] = json!(level);
    set_state(c, room, "m.room.power_levels", "", pl);
}

/// A room on Synapse, joined from weft: everything flows both ways.
fn synapse_room_joined_from_weft(backend: Backend) {
    let syn = Synapse::shared();
    let w = weft(backend);
    let alice = syn.register_fresh("alice");
    let dave = syn.register_fresh("dave");
    let bob = w.register("bob");
    let carol = w.register("carol");

    let room = alice.create_room(&json!({"preset": "private_chat", "invite": [bob.user_id]}));
    wait_invite(&bob, &room);
    join_via(&bob, &room, &syn.server_name());
    wait_membership(&alice, &room, &bob.user_id, "join");

    // Messages both ways, in order.
    for i in 0..3 {
        alice.send_text(&room, &format!("from synapse {i}"));
    }
    bob.send_text(&room, "from weft 0");
    wait_bodies(
        &bob,
        &room,
        &[
            "from synapse 0",
            "from synapse 1",
            "from synapse 2",
            "from weft 0",
        ],
    );
    wait_bodies(&alice, &room, &["from weft 0"]);
    let seen: Vec<String> = bodies(&bob, &room)
        .into_iter()
        .map(|(_, b)| b)
        .filter(|b| b.starts_with("from synapse"))
        .collect();
    assert_eq!(
        seen,
        ["from synapse 0", "from synapse 1", "from synapse 2"],
        "order on weft"
    );

    // Name, topic and power levels from Synapse; a topic from weft with the new power.
    set_state(
        &alice,
        &room,
        "m.room.name",
        "",
        json!({"name": "made on synapse"}),
    );
    raise_power(&alice, &room, &bob.user_id, 100);
    wait("weft to see bob at power 100", WAIT, || {
        (state_content(&bob, &room, "m.room.power_levels", "")?["users"][&bob.user_id] == 100)
            .then_some(())
    });
    set_state(
        &bob,
        &room,
        "m.room.topic",
        "",
        json!({"topic": "set on weft"}),
    );
    wait("synapse to see weft's topic", WAIT, || {
        (state_content(&alice, &room, "m.room.topic", "")?["topic"] == "set on weft").then_some(())
    });
    assert_eq!(
        state_content(&bob, &room, "m.room.name", "").unwrap()["name"],
        "made on synapse"
    );

    // Invites both ways: Synapse invites a weft user, weft invites a Synapse user.
    assert_eq!(alice.invite(&room, &carol.user_id).status, 200);
    wait_invite(&carol, &room);
    join_via(&carol, &room, &syn.server_name());
    assert_eq!(
        bob.invite(&room, &dave.user_id).status,
        200,
        "weft inviting a Synapse user"
    );
    wait_invite(&dave, &room);
    assert_eq!(dave.join(&room).status, 200);
    wait_membership(&bob, &room, &dave.user_id, "join");
    wait_membership(&alice, &room, &carol.user_id, "join");

    // Kicks and bans both ways: Synapse kicks a weft user; weft bans a Synapse user.
    let mut carol_since = Some(
        carol.sync(None, 0, None)["next_batch"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let r = alice.post(
        &format!("/rooms/{}/kick", enc(&room)),
        &json!({"user_id": carol.user_id, "reason": "test"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_membership(&bob, &room, &carol.user_id, "leave");
    let r = bob.post(
        &format!("/rooms/{}/ban", enc(&room)),
        &json!({"user_id": dave.user_id}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_membership(&alice, &room, &dave.user_id, "ban");
    // The kicked weft user sees the kick.
    carol.sync_until(&mut carol_since, WAIT, "her kick", |s| {
        s["rooms"]["leave"].get(&room).is_some()
    });

    wait_state_equal(&alice, &bob, &room);
    w.assert_no_panics();
}

/// A room on weft, joined from Synapse: everything flows both ways.
fn weft_room_joined_from_synapse(backend: Backend) {
    let syn = Synapse::shared();
    let w = weft(backend);
    let alice = syn.register_fresh("alice");
    let dave = syn.register_fresh("dave");
    let bob = w.register("bob");
    let carol = w.register("carol");

    let room = bob.create_room(
        &json!({"preset": "private_chat", "invite": [alice.user_id], "name": "made on weft"}),
    );
    wait_invite(&alice, &room);
    join_via(&alice, &room, &w.server_name);
    wait_membership(&bob, &room, &alice.user_id, "join");

    bob.send_text(&room, "hello from weft");
    alice.send_text(&room, "hello from synapse");
    wait_bodies(&alice, &room, &["hello from weft"]);
    wait_bodies(&bob, &room, &["hello from synapse"]);

    set_state(
        &bob,
        &room,
        "m.room.topic",
        "",
        json!({"topic": "weft topic"}),
    );
    raise_power(&bob, &room, &alice.user_id, 100);
    wait("synapse to see alice at power 100", WAIT, || {
        (state_content(&alice, &room, "m.room.power_levels", "")?["users"][&alice.user_id] == 100)
            .then_some(())
    });
    set_state(
        &alice,
        &room,
        "m.room.name",
        "",
        json!({"name": "renamed on synapse"}),
    );
    wait("weft to see synapse's name", WAIT, || {
        (state_content(&bob, &room, "m.room.name", "")?["name"] == "renamed on synapse")
            .then_some(())
    });

    // Invites from both sides.
    assert_eq!(bob.invite(&room, &dave.user_id).status, 200);
    wait_invite(&dave, &room);
    assert_eq!(dave.join(&room).status, 200);
    assert_eq!(alice.invite(&room, &carol.user_id).status, 200);
    wait_invite(&carol, &room);
    assert_eq!(carol.join(&room).status, 200);
    wait_membership(&alice, &room, &carol.user_id, "join");
    wait_membership(&bob, &room, &dave.user_id, "join");

    // Synapse bans a weft user; weft kicks a Synapse user.
    let r = alice.post(
        &format!("/rooms/{}/ban", enc(&room)),
        &json!({"user_id": carol.user_id}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_membership(&bob, &room, &carol.user_id, "ban");
    let r = bob.post(
        &format!("/rooms/{}/kick", enc(&room)),
        &json!({"user_id": dave.user_id}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    wait_membership(&alice, &room, &dave.user_id, "leave");

    wait_state_equal(&alice, &bob, &room);
    w.assert_no_panics();
}

/// Whether a sync response shows `who` typing in `room`.
fn shows_typing(s: &Value, room: &str, who: &str) -> bool {
    s["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .is_some_and(|evs| {
            evs.iter().any(|e| {
                e["type"] == "m.typing"
                    && e["content"]["user_ids"]
                        .as_array()
                        .is_some_and(|u| u.iter().any(|x| x == who))
            })
        })
}

/// Typing notifications and read receipts travel as EDUs, both ways.
fn typing_and_receipts_with_synapse(backend: Backend) {
    let syn = Synapse::shared();
    let w = weft(backend);
    let alice = syn.register_fresh("alice");
    let bob = w.register("bob");
    let room = bob.create_room(&json!({"preset": "private_chat", "invite": [alice.user_id]}));
    wait_invite(&alice, &room);
    join_via(&alice, &room, &w.server_name);
    wait_membership(&bob, &room, &alice.user_id, "join");
    let event = alice.send_text(&room, "read me");
    wait_bodies(&bob, &room, &["read me"]);

    let mut a_since = Some(
        alice.sync(None, 0, None)["next_batch"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let mut b_since = Some(
        bob.sync(None, 0, None)["next_batch"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let typing = |c: &Client, who: &Client| {
        let r = c.put(
            &format!("/rooms/{}/typing/{}", enc(&room), enc(&who.user_id)),
            &json!({"typing": true, "timeout": 20000}),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    };
    typing(&bob, &bob);
    alice.sync_until(&mut a_since, WAIT, "weft's typing", |s| {
        shows_typing(s, &room, &bob.user_id)
    });
    typing(&alice, &alice);
    bob.sync_until(&mut b_since, WAIT, "Synapse's typing", |s| {
        shows_typing(s, &room, &alice.user_id)
    });

    let r = bob.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event)),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    alice.sync_until(&mut a_since, WAIT, "weft's read receipt", |s| {
        s["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .is_some_and(|evs| {
                evs.iter().any(|e| {
                    e["type"] == "m.receipt"
                        && !e["content"][&event]["m.read"][&bob.user_id].is_null()
                })
            })
    });
    let mine = bob.send_text(&room, "and you read mine");
    wait_bodies(&alice, &room, &["and you read mine"]);
    let r = alice.post(
        &format!("/rooms/{}/receipt/m.read/{}", enc(&room), enc(&mine)),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    bob.sync_until(&mut b_since, WAIT, "Synapse's read receipt", |s| {
        s["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .is_some_and(|evs| {
                evs.iter().any(|e| {
                    e["type"] == "m.receipt"
                        && !e["content"][&mine]["m.read"][&alice.user_id].is_null()
                })
            })
    });
    w.assert_no_panics();
}

/// Declining an invite from Synapse: the leave goes through make_leave/send_leave.
fn decline_a_synapse_invite(backend: Backend) {
    let syn = Synapse::shared();
    let w = weft(backend);
    let alice = syn.register_fresh("alice");
    let bob = w.register("bob");
    let room = alice.create_room(&json!({"preset": "private_chat", "invite": [bob.user_id]}));
    wait_invite(&bob, &room);
    assert_eq!(bob.leave(&room).status, 200);
    wait_membership(&alice, &room, &bob.user_id, "leave");
    w.assert_no_panics();
}

/// Knocking on a Synapse room from weft, being let in, and joining.
fn knock_on_a_synapse_room(backend: Backend) {
    let syn = Synapse::shared();
    let w = weft(backend);
    let alice = syn.register_fresh("alice");
    let bob = w.register("bob");
    let room = alice.create_room(&json!({
        "preset": "private_chat",
        "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
    }));
    let mut since = Some(
        bob.sync(None, 0, None)["next_batch"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let r = bob.post(
        &format!(
            "/knock/{}?server_name={}",
            enc(&room),
            enc(&syn.server_name())
        ),
        &json!({"reason": "let me in"}),
    );
    assert_eq!(r.status, 200, "knock: {}", r.text);
    bob.sync_until(&mut since, WAIT, "the knock", |s| {
        s["rooms"]["knock"].get(&room).is_some()
    });
    wait_membership(&alice, &room, &bob.user_id, "knock");
    assert_eq!(alice.invite(&room, &bob.user_id).status, 200);
    wait_invite(&bob, &room);
    join_via(&bob, &room, &syn.server_name());
    wait_membership(&alice, &room, &bob.user_id, "join");
    w.assert_no_panics();
}

/// Outages: every event sent while the other side was down arrives after it returns, and
/// both timelines agree.
fn outages_with_synapse(backend: Backend) {
    let mut syn = Synapse::start();
    let mut w = weft(backend);
    let alice = syn.register("alice");
    let bob = w.register("bob");
    let room = bob.create_room(&json!({"preset": "private_chat", "invite": [alice.user_id]}));
    wait_invite(&alice, &room);
    join_via(&alice, &room, &w.server_name);
    wait_membership(&bob, &room, &alice.user_id, "join");

    // 1. Synapse stopped; weft keeps sending.
    syn.stop();
    for i in 0..5 {
        bob.send_text(&room, &format!("synapse down {i}"));
    }
    syn.start_again();
    wait_bodies(
        &alice,
        &room,
        &[
            "synapse down 0",
            "synapse down 1",
            "synapse down 2",
            "synapse down 3",
            "synapse down 4",
        ],
    );

    // 2. weft killed with a non-empty outbound queue (Synapse down, so nothing is sent).
    syn.stop();
    for i in 0..3 {
        bob.send_text(&room, &format!("queued {i}"));
    }
    w.kill();
    w.start_again();
    syn.start_again();
    wait_bodies(&alice, &room, &["queued 0", "queued 1", "queued 2"]);

    // 3. weft down; Synapse keeps sending and retries.
    w.kill();
    for i in 0..4 {
        alice.send_text(&room, &format!("weft down {i}"));
    }
    w.start_again();
    wait_bodies(
        &bob,
        &room,
        &["weft down 0", "weft down 1", "weft down 2", "weft down 3"],
    );

    // 4. Synapse crashes with events for weft unsent: after a restart it sends only the
    //    latest event (catch-up mode) and weft pulls the rest with get_missing_events.
    w.kill();
    for i in 0..3 {
        alice.send_text(&room, &format!("catch-up {i}"));
    }
    syn.kill();
    syn.start_again();
    w.start_again();
    // Anything signed from weft tells Synapse it is back.
    bob.send_text(&room, "weft is back");
    wait_bodies(&bob, &room, &["catch-up 0", "catch-up 1", "catch-up 2"]);

    // Both timelines hold the same messages, each sender's in the same order (events sent
    // concurrently on the two sides may interleave differently: each server orders by
    // arrival, and neither is wrong).
    let per_sender = |v: &[(String, String)], who: &str| -> Vec<String> {
        v.iter()
            .filter(|(s, _)| s == who)
            .map(|(_, b)| b.clone())
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, b) = (bodies(&alice, &room), bodies(&bob, &room));
        let (mut sa, mut sb) = (a.clone(), b.clone());
        sa.sort();
        sb.sort();
        if a.len() == 16
            && sa == sb
            && per_sender(&a, &alice.user_id) == per_sender(&b, &alice.user_id)
            && per_sender(&a, &bob.user_id) == per_sender(&b, &bob.user_id)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timelines differ:\nsynapse: {a:?}\nweft:    {b:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_state_equal(&alice, &bob, &room);
    w.assert_no_panics();
}

/// A to-device message for a server that is down is delivered after it returns.
fn to_device_survives_synapse_outage(backend: Backend) {
    let mut syn = Synapse::start();
    let w = weft(backend);
    let alice = syn.register("alice");
    let bob = w.register("bob");
    // Share a room so the servers know each other.
    let room = bob.create_room(&json!({"preset": "private_chat", "invite": [alice.user_id]}));
    wait_invite(&alice, &room);
    join_via(&alice, &room, &w.server_name);
    wait_membership(&bob, &room, &alice.user_id, "join");
    let mut since = Some(
        alice.sync(None, 0, None)["next_batch"]
            .as_str()
            .unwrap()
            .to_owned(),
    );

    syn.stop();
    let body = json!({"messages": {alice.user_id.clone(): {"*": {"ping": "while you were away"}}}});
    let r = bob.put(
        &format!("/sendToDevice/org.weft.test/{}", bob.next_txn()),
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text);
    std::thread::sleep(Duration::from_millis(500));
    syn.start_again();
    alice.sync_until(&mut since, WAIT, "the to-device message", |s| {
        s["to_device"]["events"].as_array().is_some_and(|evs| {
            evs.iter().any(|e| {
                e["type"] == "org.weft.test" && e["content"]["ping"] == "while you were away"
            })
        })
    });
    w.assert_no_panics();
}

/// Two weft servers split by a partition send conflicting state changes; once it heals
/// both resolve to the same state (the MIMI transport draft's example: A1 and A2 on one side
/// race C1 on the other; A3 then merges the forks and pulls what was missing).
#[test]
fn partition_heals_to_one_state() {
    let (fa, fc) = (free_port(), free_port());
    let (pa, pc) = (Proxy::start(fa), Proxy::start(fc));
    let fed = |listen: u16, advertised: u16| Options {
        federation: Some(Federation {
            listen_port: Some(listen),
            advertised_port: Some(advertised),
            ..Default::default()
        }),
        ..Default::default()
    };
    let a = Server::start_with(Backend::Sqlite, fed(fa, pa.port));
    let c = Server::start_with(Backend::Postgres, fed(fc, pc.port));
    let anna = a.register("anna");
    let carl = c.register("carl");

    let room = anna.create_room(&json!({"preset": "private_chat", "invite": [carl.user_id]}));
    wait_invite(&carl, &room);
    join_via(&carl, &room, &a.server_name);
    wait_membership(&anna, &room, &carl.user_id, "join");
    raise_power(&anna, &room, &carl.user_id, 100);
    wait("carl at power 100 on c", WAIT, || {
        (state_content(&carl, &room, "m.room.power_levels", "")?["users"][&carl.user_id] == 100)
            .then_some(())
    });

    // Partition.
    pa.block();
    pc.block();
    set_state(&anna, &room, "m.room.topic", "", json!({"topic": "A1"}));
    set_state(&anna, &room, "m.room.name", "", json!({"name": "A2"}));
    set_state(&carl, &room, "m.room.topic", "", json!({"topic": "C1"}));
    carl.send_text(&room, "C during partition");
    anna.send_text(&room, "A during partition");
    assert_ne!(
        state_content(&anna, &room, "m.room.topic", "").unwrap()["topic"],
        state_content(&carl, &room, "m.room.topic", "").unwrap()["topic"],
        "the two sides diverged"
    );

    // Heal; queued events flow; A3 merges the forks.
    pa.unblock();
    pc.unblock();
    wait_bodies(&anna, &room, &["C during partition"]);
    wait_bodies(&carl, &room, &["A during partition"]);
    anna.send_text(&room, "A3 after the partition");
    wait_bodies(&carl, &room, &["A3 after the partition"]);
    wait_state_equal(&anna, &carl, &room);
    // Both resolved the topic race the same way, and kept A2's name.
    assert_eq!(
        state_content(&anna, &room, "m.room.topic", ""),
        state_content(&carl, &room, "m.room.topic", "")
    );
    assert_eq!(
        state_content(&carl, &room, "m.room.name", "").unwrap()["name"],
        "A2"
    );
    a.assert_no_panics();
    c.assert_no_panics();
}

/// A room alias on Synapse, resolved by weft over federation
/// (`/_matrix/federation/v1/query/directory`): the directory answer, a join by the alias
/// alone (the servers come from Synapse's answer), and an unknown alias answered 404.
fn join_a_synapse_room_by_its_alias(backend: Backend) {
    let syn = Synapse::shared();
    let w = weft(backend);
    let alice = syn.register_fresh("alice");
    let bob = w.register("bob");
    // Aliases are global on the shared Synapse: name this one after alice's fresh localpart.
    let local = alice.user_id[1..]
        .split_once(':')
        .map(|(l, _)| l.to_owned())
        .unwrap_or_default();
    let room = alice.create_room(&json!({
        "preset": "public_chat", "room_alias_name": format!("hall-{local}"),
    }));
    let alias = format!("#hall-{local}:{}", syn.server_name());

    let r = bob.get(&format!("/directory/room/{}", enc(&alias)));
    assert_eq!(r.status, 200, "directory lookup: {}", r.text);
    assert_eq!(r.body["room_id"], room.as_str());
    let servers: Vec<&str> = r.body["servers"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    assert!(
        servers.contains(&syn.server_name().as_str()),
        "servers {servers:?}"
    );

    let r = bob.post(&format!("/join/{}", enc(&alias)), &json!({}));
    assert_eq!(r.status, 200, "join by alias: {}", r.text);
    assert_eq!(r.body["room_id"], room.as_str());
    wait_membership(&alice, &room, &bob.user_id, "join");

    let r = bob.get(&format!(
        "/directory/room/{}",
        enc(&format!("#no-such-{local}:{}", syn.server_name()))
    ));
    assert_eq!(r.status, 404, "unknown remote alias: {}", r.text);
    assert_eq!(r.body["errcode"], "M_NOT_FOUND");
}

/// With federation off, a remote alias cannot be asked about: 404 `M_NOT_FOUND`, for the
/// directory lookup and for a join by that alias.
fn remote_aliases_without_federation_are_not_found(backend: Backend) {
    let w = Server::start(backend);
    let bob = w.register("bob");
    let alias = "#somewhere:elsewhere.test";
    let r = bob.get(&format!("/directory/room/{}", enc(alias)));
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.body["errcode"], "M_NOT_FOUND");
    let r = bob.post(&format!("/join/{}", enc(alias)), &json!({}));
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.body["errcode"], "M_NOT_FOUND");
}
