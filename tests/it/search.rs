//! Server-side search (`POST /search`) and the user directory (`POST
//! /user_directory/search`), on both databases: matching words (prefixes, stems, case),
//! keys, filters, rank and recent order with pagination that neither repeats nor skips,
//! counts, event context, groups; who may see what (a room never joined, a room left, the
//! history before a `joined`-visibility join); redaction removing a result; the migration
//! filling the index from events already stored; the directory following joins, leaves,
//! display-name changes and deactivation; and bad input answered with Matrix errors.

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{Client, enc};
use crate::harness::{Backend, Server};

both_backends!(room_event_search, search_bad_input, user_directory_search);

/// `/versions` advertises up to v1.12, so every endpoint family those versions give
/// Element-class clients must be routed: a probe of each may fail on its input or
/// permissions, never with 404 `M_UNRECOGNIZED` (what the issue saw for media, search, the
/// directory, key backup and tags).
#[test]
fn advertised_endpoints_are_served() {
    let srv = Server::start(Backend::Sqlite);
    let alice = srv.register("alice");
    let v = srv.anonymous().get("/_matrix/client/versions").ok();
    assert!(
        v["versions"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("v1.12"))),
        "{v}"
    );
    let caps = alice.get("/capabilities").ok();
    assert_eq!(
        caps["capabilities"]["m.3pid_changes"]["enabled"], false,
        "{caps}"
    );
    let room = alice.create_room(&json!({}));
    let me = enc(&alice.user_id);
    let r = enc(&room);
    let probes: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/search".into(),
            Some(json!({"search_categories": {"room_events": {"search_term": "x"}}})),
        ),
        (
            "POST",
            "/user_directory/search".into(),
            Some(json!({"search_term": "x"})),
        ),
        ("GET", "/_matrix/client/v1/media/config".into(), None),
        (
            "GET",
            "/_matrix/client/v1/media/download/weft.test/nothing".into(),
            None,
        ),
        ("POST", "/_matrix/media/v1/create".into(), Some(json!({}))),
        (
            "GET",
            format!("/_matrix/client/v1/rooms/{r}/relations/%24x"),
            None,
        ),
        ("GET", format!("/_matrix/client/v1/rooms/{r}/threads"), None),
        ("GET", format!("/user/{me}/rooms/{r}/tags"), None),
        ("GET", "/room_keys/version".into(), None),
        ("GET", "/account/3pid".into(), None),
        ("GET", "/pushrules/".into(), None),
    ];
    for (method, path, body) in probes {
        let resp = alice.raw(method, &path, body.map(|b| b.to_string().into_bytes()));
        assert!(
            !(resp.status == 404 && resp.errcode() == "M_UNRECOGNIZED"),
            "{method} {path} is not served: {}",
            resp.text
        );
    }
    srv.assert_no_panics();
}

fn search(c: &Client, room_events: Value) -> Value {
    c.post(
        "/search",
        &json!({"search_categories": {"room_events": room_events}}),
    )
    .ok()["search_categories"]["room_events"]
        .clone()
}

fn search_page(c: &Client, room_events: Value, next: &str) -> Value {
    c.post(
        &format!("/search?next_batch={}", enc(next)),
        &json!({"search_categories": {"room_events": room_events}}),
    )
    .ok()["search_categories"]["room_events"]
        .clone()
}

fn result_ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|x| x["result"]["event_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn room_event_search(backend: Backend) {
    let mut srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let carol = srv.register("carol");

    // A room alice and bob share.
    let shared = alice.create_room(&json!({"preset": "private_chat", "name": "Lobby of foxes"}));
    alice.invite(&shared, "@bob:weft.test").ok();
    bob.join(&shared).ok();
    let fox = alice.send_text(&shared, "The quick brown Fox jumps");
    let dogs = alice.send_text(&shared, "lazy dogs sleeping all day");
    let foxes = bob.send_text(&shared, "foxes again, brown ones");
    let topic = alice.put_state(
        &shared,
        "m.room.topic",
        "",
        &json!({"topic": "brown hounds"}),
    );
    let topic = topic.ok()["event_id"].as_str().unwrap().to_owned();
    let noise: Vec<String> = (0..3)
        .map(|i| bob.send_text(&shared, &format!("unrelated chatter {i}")))
        .collect();

    // Alice's private room: bob never joined it.
    let private = alice.create_room(&json!({"preset": "private_chat"}));
    let secret = alice.send_text(&private, "brown secret plans");

    // A room bob left: what he saw while joined is still not searched (joined rooms only).
    let left = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&left).ok();
    alice.send_text(&left, "brown zebra stripes");
    bob.leave(&left).ok();

    // History visibility `joined`: carol must not find what was said before she joined.
    let late = alice.create_room(&json!({"preset": "public_chat"}));
    alice
        .put_state(
            &late,
            "m.room.history_visibility",
            "",
            &json!({"history_visibility": "joined"}),
        )
        .ok();
    let early_msg = alice.send_text(&late, "brown words before carol");
    carol.join(&late).ok();
    let late_msg = alice.send_text(&late, "brown words after carol");

    // Words: every word must match, as a prefix, case-folded; stems (fox/foxes).
    let r = search(&bob, json!({"search_term": "brown fox"}));
    assert_eq!(
        sorted(result_ids(&r)),
        sorted(vec![fox.clone(), foxes.clone()]),
        "{r}"
    );
    assert_eq!(r["count"], 2);
    assert_eq!(r["highlights"], json!(["brown", "fox"]));
    let r = search(&bob, json!({"search_term": "QUI"}));
    assert_eq!(result_ids(&r), vec![fox.clone()], "prefix, any case: {r}");
    let r = search(&bob, json!({"search_term": "sleep"}));
    assert_eq!(result_ids(&r), vec![dogs.clone()], "stem: {r}");
    // Each result is a whole client event.
    assert_eq!(
        r["results"][0]["result"]["content"]["body"],
        "lazy dogs sleeping all day"
    );
    assert!(r["results"][0]["rank"].is_number());

    // Who sees what.
    let bob_brown = sorted(result_ids(&search(&bob, json!({"search_term": "brown"}))));
    assert_eq!(
        bob_brown,
        sorted(vec![fox.clone(), foxes.clone(), topic.clone()]),
        "bob: his room only, never the private room or the room he left"
    );
    let alice_brown = sorted(result_ids(&search(&alice, json!({"search_term": "brown"}))));
    assert!(alice_brown.contains(&secret) && alice_brown.contains(&early_msg));
    let carol_brown = result_ids(&search(&carol, json!({"search_term": "brown"})));
    assert_eq!(
        carol_brown,
        vec![late_msg.clone()],
        "carol: only after her join"
    );
    let none = search(&carol, json!({"search_term": "secret"}));
    assert_eq!(
        (none["results"].clone(), none["count"].clone()),
        (json!([]), json!(0))
    );

    // Keys: only the topic.
    let r = search(
        &bob,
        json!({"search_term": "brown", "keys": ["content.topic"]}),
    );
    assert_eq!(result_ids(&r), vec![topic.clone()]);
    let r = search(
        &bob,
        json!({"search_term": "foxes", "keys": ["content.name"]}),
    );
    assert_eq!(r["count"], 1, "the room name event: {r}");
    assert_eq!(r["results"][0]["result"]["type"], "m.room.name");

    // Filters: rooms, senders, types.
    let r = search(
        &alice,
        json!({"search_term": "brown", "filter": {"rooms": [private]}}),
    );
    assert_eq!(result_ids(&r), vec![secret.clone()]);
    let r = search(
        &alice,
        json!({"search_term": "brown", "filter": {"senders": ["@bob:weft.test"]}}),
    );
    assert_eq!(result_ids(&r), vec![foxes.clone()]);
    let r = search(
        &bob,
        json!({"search_term": "brown", "filter": {"not_types": ["m.room.topic"]}}),
    );
    assert_eq!(
        sorted(result_ids(&r)),
        sorted(vec![fox.clone(), foxes.clone()])
    );

    // Recent order: newest first; pages of one cover everything once.
    let term = json!({"search_term": "brown", "order_by": "recent", "filter": {"limit": 1}});
    let mut seen = Vec::new();
    let mut page = search(&bob, term.clone());
    loop {
        assert_eq!(page["count"], 3, "count is over all pages: {page}");
        seen.extend(result_ids(&page));
        match page["next_batch"].as_str() {
            Some(n) => page = search_page(&bob, term.clone(), n),
            None => break,
        }
        assert!(seen.len() <= 3, "pagination does not end: {seen:?}");
    }
    assert_eq!(seen, vec![topic.clone(), foxes.clone(), fox.clone()]);
    // A new match arriving between pages does not shift the recent pages.
    let first = search(&bob, term.clone());
    bob.send_text(&shared, "brown newcomer");
    let second = search_page(&bob, term.clone(), first["next_batch"].as_str().unwrap());
    assert_eq!(result_ids(&second), vec![foxes.clone()]);

    // Rank order pages the same way, by offset.
    let rank = json!({"search_term": "brown", "filter": {"limit": 2}});
    let p1 = search(&bob, rank.clone());
    let p2 = search_page(&bob, rank.clone(), p1["next_batch"].as_str().unwrap());
    let mut all = result_ids(&p1);
    all.extend(result_ids(&p2));
    assert_eq!(all.len(), 4, "{p1} {p2}");
    assert!(p2.get("next_batch").is_none());
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 4, "no result twice");

    // Event context with profiles, groups, state.
    let r = search(
        &bob,
        json!({"search_term": "lazy", "event_context": {"before_limit": 1, "after_limit": 2,
               "include_profile": true},
               "groupings": {"group_by": [{"key": "room_id"}]}, "include_state": true}),
    );
    let ctx = &r["results"][0]["context"];
    assert_eq!(ctx["events_before"][0]["event_id"], fox.as_str(), "{ctx}");
    assert_eq!(ctx["events_after"][0]["event_id"], foxes.as_str());
    assert_eq!(ctx["events_after"].as_array().map(Vec::len), Some(2));
    assert!(ctx["start"].is_string() && ctx["end"].is_string());
    assert!(ctx["profile_info"]["@alice:weft.test"].is_object(), "{ctx}");
    assert_eq!(
        r["groups"]["room_id"][&shared]["results"],
        json!([dogs.clone()])
    );
    let state = r["state"][&shared].as_array().expect("state of the room");
    assert!(state.iter().any(|e| e["type"] == "m.room.topic"));

    // Client text never reaches the query languages' operators.
    for term in [
        "\"brown",
        "brown OR NEAR(",
        "brown:* & !fox",
        "'; DROP TABLE events; --",
        "*",
    ] {
        let r = search(&bob, json!({"search_term": term}));
        assert!(r["count"].is_number(), "{term}: {r}");
    }

    // A redaction removes the event from the results.
    alice
        .put(
            &format!("/rooms/{}/redact/{}/r1", enc(&shared), enc(&dogs)),
            &json!({}),
        )
        .ok();
    assert_eq!(search(&bob, json!({"search_term": "lazy"}))["count"], 0);

    // The migration fills the index from events already stored: drop the index, forget
    // the migration, start again.
    srv.stop();
    if backend == Backend::Sqlite {
        srv.execute("DROP TABLE event_search_fts", &[]);
    }
    srv.execute("DROP TABLE event_search", &[]);
    srv.execute(
        "DELETE FROM __diesel_schema_migrations WHERE version = ?",
        &["20261201001400"],
    );
    srv.start_again();
    let r = search(&bob, json!({"search_term": "brown fox"}));
    assert_eq!(
        sorted(result_ids(&r)),
        sorted(vec![fox, foxes]),
        "after the refill: {r}"
    );
    assert_eq!(
        search(&bob, json!({"search_term": "lazy"}))["count"],
        0,
        "redacted stays out"
    );
    assert_eq!(
        search(&bob, json!({"search_term": "chatter"}))["count"],
        noise.len()
    );
    srv.assert_no_panics();
}

fn search_bad_input(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let post = |body: Value| alice.post("/search", &body);
    let re = |v: Value| json!({"search_categories": {"room_events": v}});
    post(json!({})).expect_err(400, "M_MISSING_PARAM");
    post(json!({"search_categories": {"nonsense": {}}})).expect_err(400, "M_INVALID_PARAM");
    post(json!({"search_categories": "room_events"})).expect_err(400, "M_BAD_JSON");
    post(re(json!({}))).expect_err(400, "M_MISSING_PARAM");
    post(re(json!({"search_term": ["x"]}))).expect_err(400, "M_BAD_JSON");
    post(re(json!({"search_term": "x".repeat(10_000)}))).expect_err(400, "M_INVALID_PARAM");
    post(re(
        json!({"search_term": "a b c d e f g h i j k l m n o p q r"}),
    ))
    .expect_err(400, "M_INVALID_PARAM");
    post(re(json!({"search_term": "x", "keys": ["content.url"]})))
        .expect_err(400, "M_INVALID_PARAM");
    post(re(json!({"search_term": "x", "order_by": "oldest"}))).expect_err(400, "M_INVALID_PARAM");
    post(re(json!({"search_term": "x", "filter": {"limit": -3}}))).expect_err(400, "M_BAD_JSON");
    post(re(
        json!({"search_term": "x", "event_context": {"before_limit": "many"}}),
    ))
    .expect_err(400, "M_BAD_JSON");
    post(re(
        json!({"search_term": "x", "groupings": {"group_by": [{"key": "type"}]}}),
    ))
    .expect_err(400, "M_INVALID_PARAM");
    alice
        .post("/search?next_batch=zzz", &re(json!({"search_term": "x"})))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .raw("POST", "/search", Some(b"{not json".to_vec()))
        .expect_err(400, "M_NOT_JSON");
    srv.anonymous()
        .post("/search", &re(json!({"search_term": "x"})))
        .expect_err(401, "M_MISSING_TOKEN");
    // A term with no words is no error: nothing matches it.
    let r = post(re(json!({"search_term": "  ?! "}))).ok();
    assert_eq!(r["search_categories"]["room_events"]["count"], 0);

    let dir = |body: Value| alice.post("/user_directory/search", &body);
    dir(json!({})).expect_err(400, "M_MISSING_PARAM");
    dir(json!({"search_term": 7})).expect_err(400, "M_BAD_JSON");
    dir(json!({"search_term": "x", "limit": "ten"})).expect_err(400, "M_BAD_JSON");
    dir(json!({"search_term": "x", "limit": 0})).expect_err(400, "M_INVALID_PARAM");
    dir(json!({"search_term": "x".repeat(10_000)})).expect_err(400, "M_INVALID_PARAM");
    srv.anonymous()
        .post("/user_directory/search", &json!({"search_term": "x"}))
        .expect_err(401, "M_MISSING_TOKEN");
    srv.assert_no_panics();
}

fn found(c: &Client, term: &str) -> Vec<String> {
    let r = c
        .post(
            "/user_directory/search",
            &json!({"search_term": term, "limit": 50}),
        )
        .ok();
    r["results"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|u| u["user_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn user_directory_search(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let carol = srv.register("carol");
    let dave = srv.register("dave");
    let eve = srv.register("eve");
    bob.put(
        "/profile/@bob:weft.test/displayname",
        &json!({"displayname": "Bobby Tables"}),
    )
    .ok();

    // alice and bob share a private room; carol is in a published room; eve shares nothing.
    let private = alice.create_room(&json!({"preset": "private_chat"}));
    alice.invite(&private, "@bob:weft.test").ok();
    bob.join(&private).ok();
    let public = dave.create_room(&json!({"preset": "public_chat", "visibility": "public"}));
    carol.join(&public).ok();

    assert_eq!(found(&alice, "bob"), vec!["@bob:weft.test"], "by user ID");
    assert_eq!(
        found(&alice, "tables"),
        vec!["@bob:weft.test"],
        "by display name"
    );
    assert_eq!(
        found(&alice, "bobby tab"),
        vec!["@bob:weft.test"],
        "every word"
    );
    assert_eq!(
        found(&alice, "carol"),
        vec!["@carol:weft.test"],
        "member of a public room"
    );
    assert_eq!(found(&alice, "eve"), Vec::<String>::new(), "shares no room");
    assert_eq!(
        found(&eve, "bob"),
        Vec::<String>::new(),
        "eve shares nothing with bob"
    );
    let r = alice
        .post("/user_directory/search", &json!({"search_term": "tables"}))
        .ok();
    assert_eq!(r["results"][0]["display_name"], "Bobby Tables");
    assert_eq!(r["limited"], false);

    // limit and limited.
    let r = alice
        .post(
            "/user_directory/search",
            &json!({"search_term": "weft", "limit": 2}),
        )
        .ok();
    assert_eq!(r["results"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(r["limited"], true);

    // A new name shows at once; the old one finds nobody.
    bob.put(
        "/profile/@bob:weft.test/displayname",
        &json!({"displayname": "Robert"}),
    )
    .ok();
    assert_eq!(found(&alice, "robert"), vec!["@bob:weft.test"]);
    assert_eq!(found(&alice, "tables"), Vec::<String>::new());

    // Joins and leaves: eve joins the public room and is found; bob leaves and is not.
    eve.join(&public).ok();
    assert_eq!(found(&alice, "eve"), vec!["@eve:weft.test"]);
    bob.leave(&private).ok();
    assert_eq!(found(&alice, "robert"), Vec::<String>::new());

    // Deactivation: carol is gone from the directory.
    carol
        .post(
            "/account/deactivate",
            &json!({"auth": {"type": "m.login.password", "password": "pw-carol",
                             "identifier": {"type": "m.id.user", "user": "carol"}}}),
        )
        .ok();
    assert_eq!(found(&alice, "carol"), Vec::<String>::new());
    srv.assert_no_panics();
}

/// With a real Synapse: a Synapse user's message is found by `/search` on weft, and the
/// Synapse user by weft's user directory, under the name their member event carries (a
/// remote profile), following a rename.
#[test]
fn search_and_directory_with_synapse() {
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
    alice
        .put(
            &format!("/profile/{}/displayname", enc(&alice.user_id)),
            &json!({"displayname": "Alice Faraway"}),
        )
        .ok();
    let room = alice.create_room(&json!({"preset": "private_chat", "invite": [bob.user_id]}));
    wait_invite(&bob, &room);
    join_via(&bob, &room, &syn.server_name());
    let msg = alice.send_text(&room, "federated kumquat harvest");
    wait_bodies(&bob, &room, &["federated kumquat harvest"]);

    let r = search(&bob, json!({"search_term": "kumquat"}));
    assert_eq!(result_ids(&r), vec![msg], "{r}");
    assert_eq!(r["results"][0]["result"]["sender"], alice.user_id.as_str());

    let hit = bob
        .post("/user_directory/search", &json!({"search_term": "faraway"}))
        .ok();
    assert_eq!(
        hit["results"][0]["user_id"],
        alice.user_id.as_str(),
        "{hit}"
    );
    assert_eq!(hit["results"][0]["display_name"], "Alice Faraway");

    // A rename on Synapse reaches weft as a new member event.
    alice
        .put(
            &format!("/profile/{}/displayname", enc(&alice.user_id)),
            &json!({"displayname": "Alice Nearby"}),
        )
        .ok();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if found(&bob, "nearby") == vec![alice.user_id.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "weft's directory did not follow the rename"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(found(&bob, "faraway"), Vec::<String>::new());
    w.assert_no_panics();
}
