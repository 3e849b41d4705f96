//! Operating weft: `/health`, request IDs in logs, Prometheus metrics that move under load
//! (a room's mailbox under a burst; a stopped peer's backlog and failures), the admin API
//! (users, rooms, keys; admins only, read fresh), the admin commands run as the built
//! binary, a key rotation seen by a second weft, `weft db migrate` from SQLite into
//! PostgreSQL, and the status page in headless Chromium.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{Client, enc};
use crate::harness::{Backend, Federation, Options, Server, free_port};

const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` until it yields a value; panics with `what` after `within`.
#[track_caller]
fn wait<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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

fn federated(extra: &str) -> Options {
    Options {
        federation: Some(Federation::default()),
        extra_toml: extra.to_owned(),
        ..Default::default()
    }
}

/// An admin made with `weft user create --admin` (password on stdin), logged in.
fn admin(srv: &Server, localpart: &str) -> Client {
    let (ok, out, err) = srv.cli_input(
        &["user", "create", localpart, "--admin"],
        Some(&format!("pw-{localpart}\n")),
    );
    assert!(ok, "user create failed: {out} {err}");
    let mut c = srv.anonymous();
    c.login(localpart, &format!("pw-{localpart}"));
    c
}

/// GET of a path outside the client API (`/metrics`, `/health`), as text.
fn get_text(base: &str, path: &str) -> (u16, String) {
    let r = Client::new(base).get(path);
    (r.status, r.text)
}

fn scrape(srv: &Server) -> String {
    let (status, text) = get_text(&srv.base, "/metrics");
    assert_eq!(status, 200, "/metrics: {text}");
    text
}

/// Parses `name{a="b",...} value` lines into (labels, value).
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once("} ") else {
                continue;
            };
            (l, v)
        } else if let Some(v) = rest.strip_prefix(' ') {
            ("", v)
        } else {
            continue;
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once("=\"") {
                map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            out.push((map, v));
        }
    }
    out
}

/// Sum of the samples of `name` whose labels include all of `want`.
fn sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| {
            want.iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

fn has(text: &str, name: &str, want: &[(&str, &str)]) -> bool {
    samples(text, name).iter().any(|(l, _)| {
        want.iter()
            .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    })
}

// ---- 1. health and request IDs -------------------------------------------------------------

#[test]
fn health_and_request_ids() {
    let srv = Server::start(Backend::Sqlite);
    let c = srv.register("hana");
    let r = c.get("/health");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"status": "ok", "database": "ok", "writer": "ok"})
    );
    // Every response carries a request ID; a sane caller-supplied one is kept.
    let r = c.get("/account/whoami");
    let id = r.header("x-request-id").expect("x-request-id").to_owned();
    assert_eq!(id.len(), 16);
    let r = c.raw_with(
        "GET",
        "/_matrix/client/v3/account/whoami",
        None,
        c.token.as_deref(),
        &[("X-Request-Id", "trace-0123456789")],
    );
    assert_eq!(r.header("x-request-id"), Some("trace-0123456789"));
    // A hostile ID is replaced, not echoed.
    let r = c.raw_with(
        "GET",
        "/_matrix/client/v3/account/whoami",
        None,
        c.token.as_deref(),
        &[("X-Request-Id", "x\"; drop")],
    );
    assert_ne!(r.header("x-request-id"), Some("x\"; drop"));
    // A token in the query string works but never reaches the log.
    let token = c.token.clone().expect("token");
    let r = srv.anonymous().get(&format!(
        "/_matrix/client/v3/account/whoami?access_token={token}"
    ));
    assert_eq!(r.status, 200);
    let log = wait("the request IDs in the log", WAIT, || {
        let log = srv.log();
        log.contains("trace-0123456789").then_some(log)
    });
    assert!(log.contains(&id), "request ID {id} not in the log");
    assert!(
        log.contains("/_matrix/client/v3/account/whoami"),
        "the route is logged"
    );
    assert!(
        !log.contains(&token),
        "the access token leaked into the log"
    );
    assert!(
        log.contains("whoami?access_token=<redacted>"),
        "the query is logged blanked"
    );
    srv.assert_no_panics();
}

/// Readiness fails (503) when the database goes away, and says which part.
#[test]
fn health_reports_a_lost_database() {
    let mut srv = Server::start(Backend::Postgres);
    let c = srv.anonymous();
    c.get("/health").ok();
    srv.drop_database_now();
    let r = wait("/health to fail", WAIT, || {
        let r = c.get("/health");
        (r.status == 503).then_some(r)
    });
    assert_eq!(r.body["status"], "unavailable", "{}", r.text);
    assert_eq!(r.body["database"], "unreachable", "{}", r.text);
    assert!(
        srv.is_running(),
        "the server must survive a database outage"
    );
    srv.assert_no_panics();
}

// ---- 2. metrics ---------------------------------------------------------------------------

/// A burst of concurrent sends into one room: its mailbox depth and high-water mark rise
/// in scrapes taken during the burst; HTTP, batch and writer series move; labels carry
/// route patterns, not raw paths.
#[test]
fn metrics_move_under_a_burst() {
    let srv = Server::start(Backend::Sqlite);
    let owner = srv.register("mia");
    let room = owner.create_room(&json!({"preset": "public_chat"}));
    let before = scrape(&srv);
    assert!(has(&before, "weft_room_actors", &[]), "{before}");

    let senders: Vec<_> = (0..8)
        .map(|t| {
            let c = owner.clone_session();
            let room = room.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    c.send_text(&room, &format!("burst {t}/{i}"));
                }
            })
        })
        .collect();
    let mut max_depth = 0.0f64;
    let mut scrapes = 0;
    while senders.iter().any(|h| !h.is_finished()) {
        let text = scrape(&srv);
        scrapes += 1;
        max_depth = max_depth.max(sum(&text, "weft_room_mailbox_depth", &[("room", &room)]));
    }
    for h in senders {
        h.join().expect("sender thread");
    }
    let after = scrape(&srv);
    let high = sum(&after, "weft_room_mailbox_high_water", &[("room", &room)]);
    eprintln!("burst: {scrapes} scrapes, max depth seen {max_depth}, high-water {high}");
    assert!(
        max_depth >= 1.0,
        "no scrape saw the room's mailbox in use ({scrapes} scrapes)"
    );
    assert!(high >= 2.0, "high-water {high}: the burst never queued");
    assert!(high >= max_depth);
    let route = "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}";
    let sends = sum(
        &after,
        "weft_http_requests_total",
        &[("route", route), ("method", "PUT"), ("status", "200")],
    );
    assert!(sends >= 320.0, "sends counted: {sends}");
    assert!(has(
        &after,
        "weft_http_request_duration_seconds_bucket",
        &[("route", route)]
    ));
    assert!(
        !after.contains(&format!("route=\"/_matrix/client/v3/rooms/{room}")),
        "a raw path became a label"
    );
    let appended = sum(
        &after,
        "weft_room_events_appended_total",
        &[("origin", "local")],
    );
    assert!(appended >= 320.0, "events appended: {appended}");
    let batches = sum(&after, "weft_room_batch_size_events_count", &[]);
    assert!(batches >= 1.0 && batches <= appended, "batches {batches}");
    assert!(sum(&after, "weft_room_messages_handled_total", &[]) >= 320.0);
    assert!(sum(&after, "weft_db_commit_batch_size_jobs_count", &[]) >= 1.0);
    assert!(
        sum(
            &after,
            "weft_db_commit_duration_seconds_count",
            &[("kind", "durable")]
        ) >= 1.0
    );
    assert!(has(
        &after,
        "weft_db_writer_queue_depth",
        &[("writer", "0")]
    ));
    assert!(has(
        &after,
        "weft_db_read_pool_connections",
        &[("state", "idle")]
    ));
    // A made-up method cannot grow the label set.
    {
        use std::io::{Read, Write};
        let addr = srv.base.trim_start_matches("http://");
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(tcp, "BREW /_matrix/client/v3/account/whoami HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    }
    let text = scrape(&srv);
    assert!(
        has(&text, "weft_http_requests_total", &[("method", "other")]),
        "no method=other"
    );
    assert!(
        !text.contains("method=\"BREW\""),
        "a raw method became a label"
    );
    // A long-poll woken by a new message is measured.
    let since = owner.sync(None, 0, None)["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let poller = {
        let c = owner.clone_session();
        std::thread::spawn(move || c.sync(Some(&since), 20_000, None))
    };
    std::thread::sleep(Duration::from_millis(300));
    owner.send_text(&room, "wake up");
    poller.join().expect("poller");
    let text = scrape(&srv);
    assert!(
        sum(&text, "weft_sync_wakeup_duration_seconds_count", &[]) >= 1.0,
        "sync wake-ups not measured"
    );
    srv.assert_no_panics();
}

/// `/metrics` answers only allowed addresses, on the configured listener and path.
#[test]
fn metrics_access_is_configurable() {
    let port = free_port();
    let srv = Server::start_with(
        Backend::Sqlite,
        Options {
            extra_toml: format!("[metrics]\nlistener = \"127.0.0.1:{port}\"\npath = \"/prom\"\n"),
            ..Default::default()
        },
    );
    let own = reqwest_like(&format!("http://127.0.0.1:{port}/prom"));
    assert_eq!(own.0, 200, "{}", own.1);
    assert!(own.1.contains("weft_room_actors"), "{}", own.1);
    // Not on the client listener any more.
    let (status, _) = get_text(&srv.base, "/metrics");
    assert_eq!(status, 404);

    let refused = Server::start_with(
        Backend::Sqlite,
        Options {
            extra_toml: "[metrics]\nallowed = [\"10.0.0.0/8\"]\n".into(),
            ..Default::default()
        },
    );
    let r = refused.anonymous().get("/metrics");
    r.expect_err(403, "M_FORBIDDEN");
    assert!(!r.text.contains("weft_"), "metrics leaked: {}", r.text);
    srv.assert_no_panics();
    refused.assert_no_panics();
}

/// A plain GET of any URL: (status, body).
fn reqwest_like(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

/// A peer that stops: our backlog and failure count for it rise; when it returns they fall
/// back to zero (a second weft as the peer). The peer counts the PDUs it accepted.
#[test]
fn stopped_peer_backlog_and_failures() {
    let a = Server::start_with(Backend::Sqlite, federated(""));
    let mut b = Server::start_with(Backend::Sqlite, federated(""));
    let anna = a.register("anna");
    let bert = b.register("bert");
    let room = anna.create_room(&json!({"preset": "public_chat"}));
    let r = bert.post(
        &format!("/join/{}?server_name={}", enc(&room), enc(&a.server_name)),
        &json!({}),
    );
    assert_eq!(r.status, 200, "join: {}", r.text);
    anna.send_text(&room, "before the outage");
    let dest = b.server_name.clone();
    wait("b accepted our PDUs", WAIT, || {
        (sum(
            &scrape(&b),
            "weft_federation_inbound_pdus_total",
            &[("outcome", "accepted")],
        ) >= 1.0)
            .then_some(())
    });
    wait("a delivered to b", WAIT, || {
        let t = scrape(&a);
        (sum(
            &t,
            "weft_federation_transactions_total",
            &[("destination", &dest), ("result", "ok")],
        ) >= 1.0)
            .then_some(())
    });

    b.stop();
    for i in 0..5 {
        anna.send_text(&room, &format!("during the outage {i}"));
    }
    let down = wait("backlog and failures for the stopped peer", WAIT, || {
        let t = scrape(&a);
        let backlog = sum(
            &t,
            "weft_federation_destination_backlog",
            &[("destination", &dest)],
        );
        let failures = sum(
            &t,
            "weft_federation_destination_consecutive_failures",
            &[("destination", &dest)],
        );
        let errors = sum(
            &t,
            "weft_federation_transactions_total",
            &[("destination", &dest), ("result", "error")],
        );
        (backlog >= 1.0 && failures >= 1.0 && errors >= 1.0).then_some((backlog, failures))
    });
    eprintln!("peer down: backlog {}, failures {}", down.0, down.1);
    assert!(has(
        &scrape(&a),
        "weft_federation_destination_backoff_seconds",
        &[("destination", &dest)]
    ));

    b.start_again();
    wait("backlog and failures back to zero", WAIT, || {
        let t = scrape(&a);
        let backlog = sum(
            &t,
            "weft_federation_destination_backlog",
            &[("destination", &dest)],
        );
        let failures = sum(
            &t,
            "weft_federation_destination_consecutive_failures",
            &[("destination", &dest)],
        );
        (backlog == 0.0 && failures == 0.0).then_some(())
    });
    a.assert_no_panics();
    b.assert_no_panics();
}

// ---- 3. admin API -------------------------------------------------------------------------

const V1: &str = "/_weft/admin/v1";

#[test]
fn admin_api_users() {
    let srv = Server::start(Backend::Sqlite);
    let root = admin(&srv, "root");
    let mut eve = srv.register("eve");
    let room = eve.create_room(&json!({"preset": "public_chat"}));

    // Without a token, with a non-admin's, every endpoint refuses with a Matrix error.
    let paths = [
        ("GET", format!("{V1}/users")),
        ("POST", format!("{V1}/users")),
        ("GET", format!("{V1}/users/{}", enc(&eve.user_id))),
        (
            "POST",
            format!("{V1}/users/{}/deactivate", enc(&root.user_id)),
        ),
        (
            "POST",
            format!("{V1}/users/{}/password", enc(&root.user_id)),
        ),
        ("PUT", format!("{V1}/users/{}/admin", enc(&eve.user_id))),
        ("GET", format!("{V1}/rooms")),
        ("GET", format!("{V1}/rooms/{}", enc(&room))),
        ("DELETE", format!("{V1}/rooms/{}", enc(&room))),
        ("POST", format!("{V1}/rooms/{}/purge", enc(&room))),
        ("GET", format!("{V1}/server/keys")),
        ("GET", format!("{V1}/status")),
        ("GET", format!("{V1}/linearized")),
    ];
    for (m, p) in &paths {
        let body = (*m != "GET").then(|| {
            b"{\"admin\": true, \"password\": \"x\", \"username\": \"z\", \"before_ts\": 1}"
                .to_vec()
        });
        let r = eve.raw(m, p, body.clone());
        assert_eq!(
            (r.status, r.errcode()),
            (403, "M_FORBIDDEN"),
            "{m} {p} as a non-admin: {}",
            r.text
        );
        let r = srv.anonymous().raw(m, p, body);
        assert_eq!(
            (r.status, r.errcode()),
            (401, "M_MISSING_TOKEN"),
            "{m} {p} without a token: {}",
            r.text
        );
    }

    // List and show.
    let users = root.get(&format!("{V1}/users")).ok();
    let ids: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"@root:weft.test") && ids.contains(&"@eve:weft.test"),
        "{users}"
    );
    let shown = root.get(&format!("{V1}/users/{}", enc(&eve.user_id))).ok();
    assert_eq!(shown["admin"], false);
    assert_eq!(shown["joined_rooms"], json!([room]));
    assert_eq!(shown["devices"], 1);
    root.get(&format!("{V1}/users/{}", enc("@nobody:weft.test")))
        .expect_err(404, "M_NOT_FOUND");
    root.get(&format!("{V1}/users/{}", enc("@x:elsewhere.example")))
        .expect_err(400, "M_INVALID_PARAM");

    // Create.
    let made = root
        .post(
            &format!("{V1}/users"),
            &json!({"username": "finn", "password": "pw-finn"}),
        )
        .ok();
    assert_eq!(made["user_id"], "@finn:weft.test");
    let mut finn = srv.anonymous();
    finn.login("finn", "pw-finn");
    root.post(
        &format!("{V1}/users"),
        &json!({"username": "finn", "password": "x"}),
    )
    .expect_err(400, "M_USER_IN_USE");
    root.post(
        &format!("{V1}/users"),
        &json!({"username": "Bad Name", "password": "x"}),
    )
    .expect_err(400, "M_INVALID_USERNAME");
    root.post(&format!("{V1}/users"), &json!({"username": "gus"}))
        .expect_err(400, "M_BAD_JSON");
    root.raw("POST", &format!("{V1}/users"), Some(b"{not json".to_vec()))
        .expect_err(400, "M_NOT_JSON");

    // Reset a password: the old one and the old sessions stop working.
    root.post(
        &format!("{V1}/users/{}/password", enc(&finn.user_id)),
        &json!({"password": "new-finn"}),
    )
    .ok();
    finn.get("/account/whoami")
        .expect_err(401, "M_UNKNOWN_TOKEN");
    srv.anonymous()
        .post("/login", &json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "finn"}, "password": "pw-finn"}))
        .expect_err(403, "M_FORBIDDEN");
    finn.login("finn", "new-finn");

    // Grant and revoke admin: read fresh, so the revocation counts at once.
    root.put(
        &format!("{V1}/users/{}/admin", enc(&finn.user_id)),
        &json!({"admin": true}),
    )
    .ok();
    finn.get(&format!("{V1}/users")).ok();
    root.put(
        &format!("{V1}/users/{}/admin", enc(&finn.user_id)),
        &json!({"admin": false}),
    )
    .ok();
    finn.get(&format!("{V1}/users"))
        .expect_err(403, "M_FORBIDDEN");
    root.put(
        &format!("{V1}/users/{}/admin", enc(&finn.user_id)),
        &json!({"admin": "yes"}),
    )
    .expect_err(400, "M_BAD_JSON");

    // Deactivate: sessions end, the user cannot log in, their rooms are left.
    let done = root
        .post(
            &format!("{V1}/users/{}/deactivate", enc(&eve.user_id)),
            &json!({}),
        )
        .ok();
    assert_eq!(done["left_rooms"], json!([room]));
    eve.get("/account/whoami")
        .expect_err(401, "M_UNKNOWN_TOKEN");
    srv.anonymous()
        .post("/login", &json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "eve"}, "password": "pw-eve"}))
        .expect_err(403, "M_FORBIDDEN");
    let detail = root.get(&format!("{V1}/rooms/{}", enc(&room))).ok();
    assert!(
        detail["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["user_id"] == eve.user_id.as_str() && m["membership"] == "leave"),
        "eve still in the room: {detail}"
    );
    let shown = root.get(&format!("{V1}/users/{}", enc(&eve.user_id))).ok();
    assert_eq!(shown["deactivated"], true);
    assert_eq!(shown["joined_rooms"], json!([]));
    root.post(
        &format!("{V1}/users/{}/password", enc(&eve.user_id)),
        &json!({"password": "again"}),
    )
    .expect_err(400, "M_BAD_STATE");
    let _ = &mut eve;
    srv.assert_no_panics();
}

#[test]
fn admin_api_rooms_and_keys() {
    let srv = Server::start(Backend::Sqlite);
    let root = admin(&srv, "root");
    let ivy = srv.register("ivy");
    let jay = srv.register("jay");
    let room = ivy.create_room(
        &json!({"preset": "public_chat", "room_alias_name": "lounge", "name": "Lounge"}),
    );
    jay.join(&room).ok();
    let old: Vec<String> = (0..5)
        .map(|i| ivy.send_text(&room, &format!("old {i}")))
        .collect();
    let cut = ivy.send_text(&room, "the cut");
    ivy.send_text(&room, "new 1");

    let list = root.get(&format!("{V1}/rooms")).ok();
    let line = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["room_id"] == room.as_str())
        .cloned()
        .expect("the room is listed");
    assert_eq!(line["joined_members"], 2);
    assert_eq!(line["local_members"], 2);
    assert!(line["state_events"].as_i64().unwrap() >= 6, "{line}");
    let events_before = line["events"].as_i64().unwrap();
    assert!(events_before >= 13, "{line}");
    let detail = root.get(&format!("{V1}/rooms/{}", enc(&room))).ok();
    assert_eq!(detail["aliases"], json!(["#lounge:weft.test"]));
    assert_eq!(detail["members"].as_array().unwrap().len(), 2);
    root.get(&format!("{V1}/rooms/{}", enc("!nope:weft.test")))
        .expect_err(404, "M_NOT_FOUND");
    root.get(&format!("{V1}/rooms/{}", enc("not-a-room")))
        .expect_err(400, "M_INVALID_PARAM");

    // Purge history before an event: the old messages are gone, state and later events stay.
    let p = format!("{V1}/rooms/{}/purge", enc(&room));
    root.post(&p, &json!({})).expect_err(400, "M_MISSING_PARAM");
    root.post(&p, &json!({"before_ts": 1, "before_event_id": cut}))
        .expect_err(400, "M_MISSING_PARAM");
    root.post(&p, &json!({"before_event_id": "$unknown"}))
        .expect_err(404, "M_NOT_FOUND");
    root.post(
        &format!("{V1}/rooms/{}/purge", enc("!nope:weft.test")),
        &json!({"before_ts": 1}),
    )
    .expect_err(404, "M_NOT_FOUND");
    let old_words = json!({"search_categories": {"room_events": {"search_term": "old"}}});
    let before = ivy.post("/search", &old_words).ok();
    assert_eq!(
        before["search_categories"]["room_events"]["count"], 5,
        "{before}"
    );
    let purged = root.post(&p, &json!({"before_event_id": cut})).ok();
    assert!(purged["purged_events"].as_u64().unwrap() >= 5, "{purged}");
    for id in &old {
        ivy.get(&format!("/rooms/{}/event/{}", enc(&room), enc(id)))
            .expect_err(404, "M_NOT_FOUND");
    }
    ivy.get(&format!("/rooms/{}/event/{}", enc(&room), enc(&cut)))
        .ok();
    let msgs = ivy.messages(&room, None, "b", 100);
    let bodies: Vec<&str> = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert!(
        bodies.contains(&"the cut") && bodies.contains(&"new 1"),
        "{bodies:?}"
    );
    assert!(!bodies.iter().any(|b| b.starts_with("old ")), "{bodies:?}");
    // Nor does the search index keep their words (nor the relations index their links).
    let found = ivy.post("/search", &old_words).ok();
    assert_eq!(
        found["search_categories"]["room_events"]["count"], 0,
        "{found}"
    );
    assert_eq!(
        srv.query_text(
            "SELECT event_id AS v FROM event_search WHERE room_id = ? AND value LIKE 'old %'",
            &room
        ),
        Vec::<String>::new()
    );
    let after = root.get(&format!("{V1}/rooms/{}", enc(&room))).ok();
    assert!(after["events"].as_i64().unwrap() <= events_before - 5);
    assert_eq!(
        after["state_events"], line["state_events"],
        "state survives a purge"
    );
    ivy.send_text(&room, "still works");

    // Delete: every local member leaves, the alias and directory entry go.
    let gone = root
        .raw(
            "DELETE",
            &format!("{V1}/rooms/{}", enc(&room)),
            Some(b"{\"purge\": true}".to_vec()),
        )
        .ok();
    let mut left: Vec<&str> = gone["left"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["@ivy:weft.test", "@jay:weft.test"]);
    assert_eq!(gone["aliases_removed"], json!(["#lounge:weft.test"]));
    ivy.get(&format!("/directory/room/{}", enc("#lounge:weft.test")))
        .expect_err(404, "M_NOT_FOUND");
    ivy.send_txn(
        &room,
        "m.room.message",
        "after-delete",
        &json!({"msgtype": "m.text", "body": "x"}),
    )
    .expect_err(403, "M_FORBIDDEN");
    let pubs = ivy.get("/publicRooms").ok();
    assert!(!pubs.to_string().contains(&room), "still published: {pubs}");

    // Keys: ours, as the key endpoint serves it.
    let keys = root.get(&format!("{V1}/server/keys")).ok();
    let served = srv.anonymous().get("/_matrix/key/v2/server").ok();
    assert_eq!(keys["verify_keys"], served["verify_keys"]);
    assert_eq!(keys["old_verify_keys"], json!({}));
    srv.assert_no_panics();
}

// ---- 4. the admin commands ----------------------------------------------------------------

#[test]
fn admin_commands() {
    let srv = Server::start(Backend::Sqlite);
    // check-config: this configuration is fine; a broken one is refused with a message.
    let (ok, out, err) = srv.cli(&["check-config"]);
    assert!(ok, "check-config: {out} {err}");
    assert!(
        out.contains("configuration OK") && out.contains("weft.test"),
        "{out}"
    );
    let bad = std::env::temp_dir().join(format!("weft-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "server_name = \"not a name\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("server_name"),
        "{out:?}"
    );

    // Passwords never come from argv.
    let (ok, _, err) = srv.cli(&["user", "create", "kim", "--password", "pw"]);
    assert!(!ok && err.contains("--password"), "{err}");
    // Create (stdin), list, show, promote, reset-password — while the server runs.
    let (ok, out, err) = srv.cli_input(&["user", "create", "kim"], Some("pw-kim\n"));
    assert!(ok, "{out} {err}");
    assert_eq!(out.trim(), "@kim:weft.test");
    let (ok, _, err) = srv.cli_input(&["user", "create", "kim"], Some("pw\n"));
    assert!(!ok && err.contains("taken"), "{err}");
    let (ok, _, err) = srv.cli_input(&["user", "create", "lee"], Some("\n"));
    assert!(!ok && err.contains("empty"), "{err}");
    let mut kim = srv.anonymous();
    kim.login("kim", "pw-kim");
    let room = kim.create_room(&json!({"preset": "public_chat"}));
    for i in 0..4 {
        kim.send_text(&room, &format!("cli {i}"));
    }
    let (ok, out, _) = srv.cli(&["user", "list"]);
    assert!(ok && out.contains("@kim:weft.test\tuser"), "{out}");
    let (ok, out, _) = srv.cli(&["user", "show", "kim"]);
    assert!(ok, "{out}");
    let shown: Value = serde_json::from_str(&out).expect("user show prints JSON");
    assert_eq!(shown["joined_rooms"], json!([room]));
    let (ok, _, err) = srv.cli(&["user", "show", "@ghost:weft.test"]);
    assert!(!ok && err.contains("no such user"), "{err}");
    let (ok, out, _) = srv.cli(&["user", "promote", "kim"]);
    assert!(ok, "{out}");
    // The running server sees the new admin at once (admin status is read fresh).
    kim.get(&format!("{V1}/users")).ok();
    let (ok, _, _) = srv.cli(&["user", "promote", "kim", "--revoke"]);
    assert!(ok);
    kim.get(&format!("{V1}/users"))
        .expect_err(403, "M_FORBIDDEN");

    // Rooms: list with counts, purge before a time.
    let (ok, out, _) = srv.cli(&["room", "list"]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&room))
        .unwrap_or_else(|| panic!("{out}"));
    let cols: Vec<&str> = line.split('\t').collect();
    assert_eq!(cols[2], "1", "joined: {line}");
    let events: i64 = cols[4].parse().unwrap();
    let cut_ts = crate_now_ms();
    std::thread::sleep(Duration::from_millis(20));
    kim.send_text(&room, "after the cut");
    let (ok, out, err) = srv.cli(&["room", "purge", &room, "--before-ts", &cut_ts.to_string()]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("4 events purged"), "{out}");
    let (_, out, _) = srv.cli(&["room", "list"]);
    let line = out.lines().find(|l| l.starts_with(&room)).unwrap();
    let now_events: i64 = line.split('\t').nth(4).unwrap().parse().unwrap();
    assert_eq!(now_events, events + 1 - 4, "{line}");
    let (ok, _, err) = srv.cli(&["room", "purge", &room]);
    assert!(!ok && err.contains("--before"), "{err}");

    // Backup while running: a consistent copy that opens and holds the users.
    let backup = std::env::temp_dir().join(format!(
        "weft-backup-{}-{}.db",
        std::process::id(),
        crate_now_ms()
    ));
    let (ok, out, err) = srv.cli(&["db", "backup", "--to", backup.to_str().unwrap()]);
    assert!(ok, "{out} {err}");
    {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = diesel::SqliteConnection::establish(backup.to_str().unwrap()).unwrap();
        let n: N = diesel::sql_query("SELECT COUNT(*) AS n FROM users")
            .get_result(&mut c)
            .unwrap();
        assert_eq!(n.n, 1);
    }
    let (ok, _, err) = srv.cli(&["db", "backup", "--to", backup.to_str().unwrap()]);
    assert!(!ok && err.contains("exists"), "{err}");
    let _ = std::fs::remove_file(&backup);

    // Reset a password: old sessions end.
    let (ok, out, err) = srv.cli_input(&["user", "reset-password", "kim"], Some("new-kim\n"));
    assert!(ok, "{out} {err}");
    wait("kim's old session to end", WAIT, || {
        (kim.get("/account/whoami").status == 401).then_some(())
    });
    kim.login("kim", "new-kim");

    // Deactivate from the command line while the server runs: the session ends at once
    // and the server makes kim leave the room within seconds.
    let (ok, out, err) = srv.cli(&["user", "deactivate", "kim"]);
    assert!(ok, "{out} {err}");
    wait("kim's session to end", WAIT, || {
        (kim.get("/account/whoami").status == 401).then_some(())
    });
    let (_, out, _) = srv.cli(&["user", "show", "kim"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["deactivated"], true);
    wait("kim to leave the room", WAIT, || {
        let (_, out, _) = srv.cli(&["user", "show", "kim"]);
        let v: Value = serde_json::from_str(&out).ok()?;
        (v["joined_rooms"] == json!([])).then_some(())
    });
    srv.anonymous()
        .post("/login", &json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "kim"}, "password": "new-kim"}))
        .expect_err(403, "M_FORBIDDEN");

    // Keys: show.
    let (ok, out, _) = srv.cli(&["keys", "show"]);
    assert!(ok, "{out}");
    let keys: Value = serde_json::from_str(&out).unwrap();
    let served = srv.anonymous().get("/_matrix/key/v2/server").ok();
    assert_eq!(keys["verify_keys"], served["verify_keys"]);
    srv.assert_no_panics();
}

fn crate_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `weft keys rotate`: the server signs with a new key; events signed with the old one
/// still verify on a second weft that joins afterwards (it fetches `old_verify_keys`).
#[test]
fn key_rotation_keeps_old_events_verifiable() {
    let mut a = Server::start_with(Backend::Sqlite, federated(""));
    let anna = a.register("anna");
    let room = anna.create_room(&json!({"preset": "public_chat", "name": "before rotation"}));
    anna.send_text(&room, "signed with the old key");
    let old_key = a.anonymous().get("/_matrix/key/v2/server").ok();
    let old_id = old_key["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();

    a.stop();
    let (ok, out, err) = a.cli(&["keys", "rotate"]);
    assert!(ok, "{out} {err}");
    assert!(out.contains(&old_id), "{out}");
    a.start_again();
    let served = a.anonymous().get("/_matrix/key/v2/server").ok();
    assert!(
        served["verify_keys"].get(&old_id).is_none(),
        "still signing with {old_id}: {served}"
    );
    let old = &served["old_verify_keys"][&old_id];
    assert_eq!(old["key"], old_key["verify_keys"][&old_id]["key"]);
    assert!(old["expired_ts"].as_i64().unwrap() > 0);
    let (_, out, _) = a.cli(&["keys", "show"]);
    assert!(out.contains(&old_id), "{out}");

    // A second weft, which never saw the old key, joins: the room's old events (create,
    // membership, the message) are signed with it and must verify there.
    let b = Server::start_with(Backend::Sqlite, federated(""));
    let bert = b.register("bert");
    let r = bert.post(
        &format!("/join/{}?server_name={}", enc(&room), enc(&a.server_name)),
        &json!({}),
    );
    assert_eq!(r.status, 200, "join after the rotation: {}", r.text);
    anna.send_text(&room, "signed with the new key");
    wait("bert sees old and new messages", WAIT, || {
        let msgs = bert.messages(&room, None, "b", 50);
        let bodies: Vec<String> = msgs["chunk"]
            .as_array()?
            .iter()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect();
        (bodies.iter().any(|b| b == "signed with the new key")).then_some(())
    });
    let name = bert
        .get(&format!("/rooms/{}/state/m.room.name", enc(&room)))
        .ok();
    assert_eq!(name["name"], "before rotation");
    a.assert_no_panics();
    b.assert_no_panics();
}

// ---- 4b. SQLite → PostgreSQL ---------------------------------------------------------------

/// A populated SQLite installation (rooms and messages, E2EE device and one-time keys, an
/// outbound queue for a peer that is down) moves into PostgreSQL with `weft db migrate`;
/// weft then serves the same rooms, `/sync`, keys and queue from PostgreSQL.
#[test]
fn db_migrate_sqlite_to_postgres() {
    let dead = format!("localhost:{}", free_port());
    let mut srv = Server::start_with(Backend::Sqlite, federated(""));
    let mut olga = srv.register("olga");
    let pete = srv.register("pete");
    let room = olga.create_room(&json!({"preset": "public_chat", "name": "moving house"}));
    pete.join(&room).ok();
    for i in 0..30 {
        olga.send_text(&room, &format!("msg {i}"));
    }
    pete.post(
        "/keys/upload",
        &json!({
            "device_keys": {"user_id": pete.user_id, "device_id": pete.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {format!("curve25519:{}", pete.device_id): "curve-p", format!("ed25519:{}", pete.device_id): "ed-p"},
                "signatures": {}},
            "one_time_keys": {"signed_curve25519:AAAA": {"key": "k1", "signatures": {}},
                              "signed_curve25519:AAAB": {"key": "k2", "signatures": {}}},
        }),
    )
    .ok();
    // A to-device message for a server that is down stays in the outbound queue.
    olga.put(
        &format!("/sendToDevice/m.test/{}", olga.next_txn()),
        &json!({"messages": {format!("@x:{dead}"): {"DEV": {"hello": "there"}}}}),
    )
    .ok();
    let before_sync = olga.sync(None, 0, None);
    let before_bodies = crate::client::bodies(olga.all_messages(&room, 100, 10).iter());
    srv.stop();

    let (name, url) = srv.new_pg_database();
    let (ok, out, err) = srv.cli(&["db", "migrate", "--to", &url]);
    assert!(ok, "migrate failed:\n{out}\n{err}");
    assert!(out.contains("verified:"), "{out}");
    for table in [
        "events",
        "users",
        "e2e_device_keys",
        "e2e_one_time_keys",
        "outbound_queue",
        "current_state",
        "event_search",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{table}\t")))
            .unwrap_or_else(|| panic!("no count for {table}:\n{out}"));
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols[1], cols[2], "{line}");
        assert_ne!(cols[1], "0", "{table} was empty: {line}");
    }
    // Migrating into a database that holds data is refused.
    let (ok, _, err) = srv.cli(&["db", "migrate", "--to", &url]);
    assert!(!ok && err.contains("already holds data"), "{err}");

    srv.use_postgres(&name);
    srv.start_again();
    let (ok, out, _) = srv.cli(&["check-config"]);
    assert!(ok && out.contains("Postgres"), "{out}");
    olga.login("olga", "pw-olga");
    let after = olga.sync(None, 0, None);
    assert_eq!(
        after["rooms"]["join"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
        before_sync["rooms"]["join"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
    );
    let after_bodies = crate::client::bodies(olga.all_messages(&room, 100, 10).iter());
    assert_eq!(after_bodies, before_bodies);
    let q = olga
        .post("/keys/query", &json!({"device_keys": {&pete.user_id: []}}))
        .ok();
    assert_eq!(
        q["device_keys"][&pete.user_id][&pete.device_id]["keys"]
            [format!("curve25519:{}", pete.device_id)],
        "curve-p"
    );
    let claim = olga
        .post(
            "/keys/claim",
            &json!({"one_time_keys": {&pete.user_id: {&pete.device_id: "signed_curve25519"}}}),
        )
        .ok();
    assert!(
        claim["one_time_keys"][&pete.user_id][&pete.device_id]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "{claim}"
    );
    // The search index moved too (SQLite's FTS5 tables are not copied: PostgreSQL
    // indexes the copied rows itself).
    let found = olga
        .post(
            "/search",
            &json!({"search_categories": {"room_events": {"search_term": "msg"}}}),
        )
        .ok();
    assert_eq!(
        found["search_categories"]["room_events"]["count"], 30,
        "{found}"
    );
    // New events go on from where SQLite stopped, and sync still works incrementally.
    let since = after["next_batch"].as_str().unwrap().to_owned();
    olga.send_text(&room, "on postgres");
    let inc = olga.sync(Some(&since), 10_000, None);
    assert!(inc.to_string().contains("on postgres"), "{inc}");
    // The queued delivery moved too.
    let root = admin(&srv, "root");
    let st = root.get(&format!("{V1}/status")).ok();
    let d = st["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == dead.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{st}"));
    assert!(d["backlog"].as_i64().unwrap() >= 1, "{d}");
    srv.assert_no_panics();
}

// ---- 5. the status page ------------------------------------------------------------------

/// Runs headless Chromium on a URL (bounded), returning the DOM after the page's scripts
/// ran for about `ms` of page time; with `shot`, also writes a screenshot there.
fn chromium(url: &str, ms: u64, shot: Option<&std::path::Path>) -> String {
    let dir = std::env::temp_dir().join(format!(
        "weft-chromium-{}-{}",
        std::process::id(),
        crate_now_ms()
    ));
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1280,900",
    ])
    .arg(format!("--user-data-dir={}", dir.display()))
    .arg(format!("--virtual-time-budget={ms}"));
    match shot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let mut child = cmd
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chromium (Debian package chromium)");
    let mut out = String::new();
    let reader = {
        let mut so = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    out.push_str(&reader.join().unwrap_or_default());
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// The text of the `<td class="... {class} ...">` cell in the row with `attr="value"`.
fn cell(dom: &str, attr: &str, value: &str, class: &str) -> Option<String> {
    let start = dom.find(&format!("{attr}=\"{value}\""))?;
    let row = &dom[start..start + dom[start..].find("</tr>")?];
    let at = row.find(&format!(" {class}"))?;
    let text = &row[at..];
    let open = text.find('>')? + 1;
    let close = text[open..].find('<')?;
    Some(text[open..open + close].trim().to_owned())
}

#[test]
fn status_page_in_chromium() {
    let dead = format!("localhost:{}", free_port());
    let srv = Server::start_with(Backend::Sqlite, federated(""));
    let root = admin(&srv, "root");
    let user = srv.register("quinn");
    let room = user.create_room(&json!({"preset": "public_chat"}));
    user.send_text(&room, "hello");
    // A destination with a backlog: a to-device message for a server that is down.
    let edu = |c: &Client| {
        c.put(
            &format!("/sendToDevice/m.test/{}", c.next_txn()),
            &json!({"messages": {format!("@x:{dead}"): {"DEV": {"n": 1}}}}),
        )
        .ok();
    };
    edu(&user);
    let token = root.token.clone().unwrap();
    let url = format!("{}/_weft/admin/status#access_token={token}", srv.base);

    let first = chromium(&url, 5000, None);
    assert!(first.contains("weft status"), "{first}");
    let events1: u64 = cell(&first, "data-room", &room, "events")
        .unwrap_or_else(|| panic!("no row for the room:\n{first}"))
        .parse()
        .unwrap();
    let backlog1: u64 = cell(&first, "data-destination", &dead, "backlog")
        .unwrap_or_else(|| panic!("no row for {dead}:\n{first}"))
        .parse()
        .unwrap();
    let updates: u64 = first
        .split("id=\"updates\">")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(updates >= 2, "the page did not poll: {updates} updates");

    // Live numbers move: more events in the room, more queued for the dead server.
    for i in 0..5 {
        user.send_text(&room, &format!("more {i}"));
    }
    edu(&user);
    let second = chromium(&url, 5000, None);
    let events2: u64 = cell(&second, "data-room", &room, "events")
        .unwrap()
        .parse()
        .unwrap();
    let backlog2: u64 = cell(&second, "data-destination", &dead, "backlog")
        .unwrap()
        .parse()
        .unwrap();
    assert!(events2 >= events1 + 5, "events {events1} → {events2}");
    assert!(backlog2 > backlog1, "backlog {backlog1} → {backlog2}");
    let failures = cell(&second, "data-destination", &dead, "failures").unwrap();
    assert_ne!(failures, "0", "the dead server shows failures");

    // Two screenshots differ (the numbers changed).
    let dir = std::env::temp_dir();
    let (s1, s2) = (
        dir.join(format!("weft-status-1-{}.png", std::process::id())),
        dir.join(format!("weft-status-2-{}.png", std::process::id())),
    );
    chromium(&url, 4000, Some(&s1));
    user.send_text(&room, "between the screenshots");
    edu(&user);
    chromium(&url, 4000, Some(&s2));
    let (b1, b2) = (
        std::fs::read(&s1).expect("screenshot 1"),
        std::fs::read(&s2).expect("screenshot 2"),
    );
    assert!(b1.starts_with(b"\x89PNG") && b2.starts_with(b"\x89PNG"));
    assert_ne!(b1, b2, "the two screenshots are identical");
    if let Ok(keep) = std::env::var("WEFT_STATUS_SCREENSHOT") {
        let _ = std::fs::copy(&s2, keep);
    }
    let _ = (std::fs::remove_file(&s1), std::fs::remove_file(&s2));

    // A non-admin is refused, and sees no data.
    let other = chromium(
        &format!(
            "{}/_weft/admin/status#access_token={}",
            srv.base,
            user.token.clone().unwrap()
        ),
        3000,
        None,
    );
    assert!(other.contains("Refused (403 M_FORBIDDEN)"), "{other}");
    assert!(
        !other.contains(&format!("data-room=\"{room}\"")),
        "a non-admin saw rooms"
    );
    // Without a token the page asks for a sign-in.
    let anon = chromium(&format!("{}/_weft/admin/status", srv.base), 2000, None);
    assert!(
        anon.contains("id=\"login\" style=\"display: block;\""),
        "{anon}"
    );
    srv.assert_no_panics();
}
