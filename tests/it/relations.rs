//! Relations and threads: `/relations` (all, by type, by type and event type; pagination
//! both ways; recursion), bundled aggregations on `/event`, `/messages` and `/sync`
//! (latest valid edit, thread summary, references), `/threads` (all and participated),
//! redaction removing a relation, and bad input.

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{Client, enc, timeline};
use crate::harness::{Backend, Server};

both_backends!(relations_and_threads);

fn rel(c: &Client, room: &str, path: &str) -> Value {
    c.get(&format!(
        "/_matrix/client/v1/rooms/{}/relations/{path}",
        enc(room)
    ))
    .ok()
}

fn ids(v: &Value) -> Vec<String> {
    v["chunk"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|e| e["event_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn edit(c: &Client, room: &str, of: &str, body: &str) -> String {
    c.send(
        room,
        "m.room.message",
        &json!({"msgtype": "m.text", "body": format!("* {body}"),
                "m.new_content": {"msgtype": "m.text", "body": body},
                "m.relates_to": {"rel_type": "m.replace", "event_id": of}}),
    )
}

fn in_thread(c: &Client, room: &str, root: &str, body: &str) -> String {
    c.send(
        room,
        "m.room.message",
        &json!({"msgtype": "m.text", "body": body,
                "m.relates_to": {"rel_type": "m.thread", "event_id": root,
                                 "is_falling_back": true, "m.in_reply_to": {"event_id": root}}}),
    )
}

fn relations_and_threads(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let carol = srv.register("carol");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&room).ok();
    carol.join(&room).ok();

    let root = alice.send_text(&room, "root");
    let e1 = edit(&alice, &room, &root, "root, edited");
    let e2 = edit(&alice, &room, &root, "root, edited twice");
    let forged = edit(&bob, &room, &root, "not yours to edit");
    let reaction = bob.send(
        &room,
        "m.reaction",
        &json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": root, "key": "👍"}}),
    );
    let t1 = in_thread(&bob, &room, &root, "thread 1");
    let t2 = in_thread(&alice, &room, &root, "thread 2");
    let reference = bob.send(
        &room,
        "m.room.message",
        &json!({"msgtype": "m.text", "body": "see above",
                "m.relates_to": {"rel_type": "m.reference", "event_id": root}}),
    );
    // A reaction to a thread reply: only found with recursion.
    let deep = carol.send(
        &room,
        "m.reaction",
        &json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": t1, "key": "🎉"}}),
    );

    // Everything relating to the root, newest first.
    let all = rel(&bob, &room, &format!("{}?limit=50", enc(&root)));
    assert_eq!(
        ids(&all),
        [&reference, &t2, &t1, &reaction, &forged, &e2, &e1].map(|s| s.to_owned())
    );
    assert!(all.get("recursion_depth").is_none());
    // Paginated both ways.
    let p1 = rel(&bob, &room, &format!("{}?limit=3", enc(&root)));
    assert_eq!(ids(&p1), [&reference, &t2, &t1].map(|s| s.to_owned()));
    let next = p1["next_batch"].as_str().expect("next_batch").to_owned();
    let p2 = rel(&bob, &room, &format!("{}?limit=3&from={next}", enc(&root)));
    assert_eq!(ids(&p2), [&reaction, &forged, &e2].map(|s| s.to_owned()));
    let fwd = rel(&bob, &room, &format!("{}?dir=f&limit=2", enc(&root)));
    assert_eq!(ids(&fwd), [&e1, &e2].map(|s| s.to_owned()));
    // By relation type, and by relation and event type.
    let thread = rel(&bob, &room, &format!("{}/m.thread", enc(&root)));
    assert_eq!(ids(&thread), [&t2, &t1].map(|s| s.to_owned()));
    let reactions = rel(
        &bob,
        &room,
        &format!("{}/m.annotation/m.reaction", enc(&root)),
    );
    assert_eq!(ids(&reactions), [reaction.as_str()]);
    let none = rel(
        &bob,
        &room,
        &format!("{}/m.annotation/m.sticker", enc(&root)),
    );
    assert!(ids(&none).is_empty());
    // Recursion reaches the reaction to a thread reply (what js-sdk's thread view asks).
    let rec = rel(
        &bob,
        &room,
        &format!("{}/m.thread?recurse=true", enc(&root)),
    );
    assert_eq!(ids(&rec), [&t2, &t1].map(|s| s.to_owned()));
    let rec_all = rel(
        &bob,
        &room,
        &format!("{}?recurse=true&limit=50", enc(&root)),
    );
    assert!(ids(&rec_all).contains(&deep));
    assert!(rec_all["recursion_depth"].as_u64().is_some_and(|d| d >= 2));

    // Bundled aggregations on /event.
    let ev = bob
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&root)))
        .ok();
    let rels = &ev["unsigned"]["m.relations"];
    assert_eq!(
        rels["m.replace"]["event_id"],
        e2.as_str(),
        "latest valid edit: {rels}"
    );
    assert_eq!(
        rels["m.replace"]["content"]["m.new_content"]["body"],
        "root, edited twice"
    );
    assert_eq!(rels["m.thread"]["count"], 2);
    assert_eq!(rels["m.thread"]["latest_event"]["event_id"], t2.as_str());
    assert_eq!(rels["m.thread"]["current_user_participated"], true);
    assert_eq!(
        rels["m.reference"]["chunk"],
        json!([{"event_id": reference}])
    );
    // Carol took no part in the thread.
    let ev = carol
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&root)))
        .ok();
    assert_eq!(
        ev["unsigned"]["m.relations"]["m.thread"]["current_user_participated"],
        false
    );
    // ... and on /messages and /sync.
    let msgs = bob.messages(&room, None, "b", 50);
    let in_msgs = msgs["chunk"]
        .as_array()
        .and_then(|c| c.iter().find(|e| e["event_id"] == root.as_str()))
        .cloned()
        .expect("root in /messages");
    assert_eq!(in_msgs["unsigned"]["m.relations"]["m.thread"]["count"], 2);
    let sync = bob.sync(None, 0, Some(r#"{"room":{"timeline":{"limit":50}}}"#));
    let in_sync = timeline(&sync, &room)
        .into_iter()
        .find(|e| e["event_id"] == root.as_str())
        .cloned()
        .expect("root in /sync");
    assert_eq!(
        in_sync["unsigned"]["m.relations"]["m.replace"]["event_id"],
        e2.as_str()
    );

    // /threads.
    let threads = |c: &Client, q: &str| {
        c.get(&format!(
            "/_matrix/client/v1/rooms/{}/threads{q}",
            enc(&room)
        ))
        .ok()
    };
    let t = threads(&carol, "");
    assert_eq!(ids(&t), [root.as_str()]);
    assert_eq!(
        t["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"],
        2
    );
    assert!(ids(&threads(&carol, "?include=participated")).is_empty());
    assert_eq!(
        ids(&threads(&bob, "?include=participated")),
        [root.as_str()]
    );
    let root2 = bob.send_text(&room, "second root");
    in_thread(&carol, &room, &root2, "carol's thread");
    assert_eq!(ids(&threads(&carol, "")), [root2.clone(), root.clone()]);
    let first = threads(&carol, "?limit=1");
    assert_eq!(ids(&first), [root2.as_str()]);
    let next = first["next_batch"].as_str().expect("next_batch").to_owned();
    assert_eq!(
        ids(&threads(&carol, &format!("?limit=1&from={next}"))),
        [root.as_str()]
    );

    // Redacting the latest edit: the one before it is bundled again.
    alice
        .put(
            &format!(
                "/rooms/{}/redact/{}/{}",
                enc(&room),
                enc(&e2),
                alice.next_txn()
            ),
            &json!({}),
        )
        .ok();
    let ev = bob
        .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&root)))
        .ok();
    assert_eq!(
        ev["unsigned"]["m.relations"]["m.replace"]["event_id"],
        e1.as_str()
    );

    // Bad input.
    let base = format!("/_matrix/client/v1/rooms/{}/relations", enc(&room));
    bob.get(&format!("{base}/{}?dir=sideways", enc(&root)))
        .expect_err(400, "M_INVALID_PARAM");
    bob.get(&format!("{base}/{}?from=abc", enc(&root)))
        .expect_err(400, "M_INVALID_PARAM");
    bob.get(&format!("{base}/{}", enc("$nosuchevent")))
        .expect_err(404, "M_NOT_FOUND");
    bob.get(&format!(
        "/_matrix/client/v1/rooms/{}/threads?include=mine",
        enc(&room)
    ))
    .expect_err(400, "M_INVALID_PARAM");
    let dave = srv.register("dave");
    dave.get(&format!("{base}/{}", enc(&root)))
        .expect_err(403, "M_FORBIDDEN");
    dave.get(&format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)))
        .expect_err(403, "M_FORBIDDEN");
    srv.assert_no_panics();
}

/// A Synapse user's edit and thread reply, received over federation, are aggregated on
/// weft (bundled on the root, listed by `/relations` and `/threads`).
#[test]
fn synapse_edit_and_thread_aggregated_on_weft() {
    use crate::federation::{join_via, wait_bodies, wait_invite};
    use crate::harness::{Federation, Options};
    use crate::synapse::Synapse;
    use std::time::{Duration, Instant};

    let syn = Synapse::start();
    let w = Server::start_with(
        Backend::Sqlite,
        Options {
            federation: Some(Federation::default()),
            ..Default::default()
        },
    );
    let alice = syn.register("alice");
    let bob = w.register("bob");
    let room = alice.create_room(&json!({"preset": "private_chat", "invite": [bob.user_id]}));
    wait_invite(&bob, &room);
    join_via(&bob, &room, &syn.server_name());
    let root = alice.send_text(&room, "root from synapse");
    let e = edit(&alice, &room, &root, "edited on synapse");
    let t = in_thread(&alice, &room, &root, "thread from synapse");
    wait_bodies(&bob, &room, &["thread from synapse"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let rels = loop {
        let ev = bob
            .get(&format!("/rooms/{}/event/{}", enc(&room), enc(&root)))
            .ok();
        let rels = ev["unsigned"]["m.relations"].clone();
        if rels["m.replace"]["event_id"] == e.as_str() && rels["m.thread"]["count"] == 1 {
            break rels;
        }
        assert!(
            Instant::now() < deadline,
            "no aggregation of Synapse's edit and thread on weft: {ev}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(rels["m.thread"]["latest_event"]["event_id"], t.as_str());
    assert_eq!(rels["m.thread"]["current_user_participated"], false);
    let thread = rel(
        &bob,
        &room,
        &format!("{}/m.thread?recurse=true", enc(&root)),
    );
    assert_eq!(ids(&thread), [t.as_str()]);
    let threads = bob
        .get(&format!("/_matrix/client/v1/rooms/{}/threads", enc(&room)))
        .ok();
    assert_eq!(ids(&threads), [root.as_str()]);
    w.assert_no_panics();
}
