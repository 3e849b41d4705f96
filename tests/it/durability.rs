//! Acknowledged means durable: every event a client got an event ID for is still there after
//! the server is killed with SIGKILL (no shutdown, no flush) and started again.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{Client, bodies, enc, timeline};
use crate::harness::{Backend, Server};

both_backends!(
    acknowledged_events_survive_sigkill,
    graceful_restart_keeps_everything
);

/// Messages sent one after another, then by several clients at once (so the writer commits
/// them in batches).
const SEQUENTIAL: usize = 40;
const THREADS: usize = 4;
const PER_THREAD: usize = 25;

fn acknowledged_events_survive_sigkill(backend: Backend) {
    let mut srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&room).ok();
    let before_kill = bob.sync(None, 0, None)["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // (event ID, body) in the order each sender got its acknowledgement.
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut txns: Vec<(String, String)> = Vec::new();
    for i in 0..SEQUENTIAL {
        let body = format!("seq {i}");
        let txn = alice.next_txn();
        let v = alice
            .send_txn(
                &room,
                "m.room.message",
                &txn,
                &json!({"msgtype": "m.text", "body": body}),
            )
            .ok();
        let id = v["event_id"].as_str().unwrap().to_owned();
        txns.push((txn, id.clone()));
        acked.push((id, body));
    }
    let per_thread: Vec<Vec<(String, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let sender: Client = if t % 2 == 0 {
                    alice.clone_session()
                } else {
                    bob.clone_session()
                };
                let room = room.clone();
                scope.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let body = format!("thread {t} msg {i}");
                            (sender.send_text(&room, &body), body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("sender thread"))
            .collect()
    });
    for v in &per_thread {
        acked.extend(v.iter().cloned());
    }
    let total = SEQUENTIAL + THREADS * PER_THREAD;
    assert_eq!(acked.len(), total);

    // No grace period: kill right after the last acknowledgement.
    srv.kill();
    srv.start_again();

    // The old access tokens still work (they are stored), so the same clients go on.
    let all = bob.all_messages(&room, 50, 100);
    let found: HashMap<&str, &Value> = all
        .iter()
        .map(|e| (e["event_id"].as_str().unwrap(), e))
        .collect();
    for (id, body) in &acked {
        let e = found
            .get(id.as_str())
            .unwrap_or_else(|| panic!("acknowledged event {id} ({body}) is gone after SIGKILL"));
        assert_eq!(e["content"]["body"], body.as_str());
    }
    assert_eq!(
        bodies(&all).len(),
        total,
        "messages were duplicated or invented"
    );

    // Order: the sequential run in order, and each thread's messages in its own order.
    let position: HashMap<&str, usize> = all
        .iter()
        .enumerate()
        .map(|(i, e)| (e["event_id"].as_str().unwrap(), i))
        .collect();
    let check_order = |seq: &[(String, String)]| {
        for w in seq.windows(2) {
            assert!(
                position[w[0].0.as_str()] < position[w[1].0.as_str()],
                "{} came after {}",
                w[0].1,
                w[1].1
            );
        }
    };
    check_order(&acked[..SEQUENTIAL]);
    for v in &per_thread {
        check_order(v);
    }

    // /sync from a token taken before the messages returns all of them (limited timeline,
    // newest last), and an initial sync with a large timeline limit has every one.
    let filter = json!({"room": {"timeline": {"limit": 500}}}).to_string();
    let initial = bob.sync(None, 0, Some(&filter));
    let synced: Vec<&str> = timeline(&initial, &room)
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    for (id, body) in &acked {
        assert!(
            synced.contains(&id.as_str()),
            "{id} ({body}) missing from /sync"
        );
    }
    let incremental = bob.sync(Some(&before_kill), 0, Some(&filter));
    assert_eq!(
        bodies(timeline(&incremental, &room)).len(),
        total,
        "incremental sync from before the kill"
    );

    // A retried transaction is still recognised after the restart: same event, no new one.
    let (txn, id) = &txns[SEQUENTIAL / 2];
    let again = alice
        .send_txn(
            &room,
            "m.room.message",
            txn,
            &json!({"msgtype": "m.text", "body": "retry"}),
        )
        .ok();
    assert_eq!(again["event_id"], id.as_str());

    // The room actor reloads from disk and goes on appending after the last event.
    let after = alice.send_text(&room, "after restart");
    let last = bob.messages(&room, None, "b", 1);
    assert_eq!(last["chunk"][0]["event_id"], after.as_str());
    assert_eq!(bodies(&bob.all_messages(&room, 100, 10)).len(), total + 1);
    srv.assert_no_panics();
}

fn graceful_restart_keeps_everything(backend: Backend) {
    let mut srv = Server::start(backend);
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({"name": "kept", "room_alias_name": "kept"}));
    alice
        .put(
            "/profile/@alice:weft.test/displayname",
            &json!({"displayname": "Alice A."}),
        )
        .ok();
    let id = alice.send_text(&room, "before restart");
    srv.stop();
    srv.start_again();
    let alias = alice
        .get(&format!("/directory/room/{}", enc("#kept:weft.test")))
        .ok();
    assert_eq!(alias["room_id"], room.as_str());
    let name = alice
        .get(&format!("/rooms/{}/state/m.room.name/", enc(&room)))
        .ok();
    assert_eq!(name["name"], "kept");
    let ev = alice
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&id)))
        .ok();
    assert_eq!(ev["content"]["body"], "before restart");
    let profile = alice.get("/profile/@alice:weft.test").ok();
    assert_eq!(profile["displayname"], "Alice A.");
    // A new login works against the stored password hash.
    let mut again = srv.anonymous();
    again.login("alice", "pw-alice");
    assert_eq!(again.user_id, alice.user_id);
    assert!(srv.log().contains("weft starting"));
    srv.assert_no_panics();
}
