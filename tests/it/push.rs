//! Push over HTTP. Rules: the spec's defaults (from ruma), creating a keyword rule placed
//! with `before`/`after`, enabling and disabling, changing actions, deleting, the change
//! reaching `/sync` as `m.push_rules` account data, and malformed rules refused.
//! Evaluation and counts: a keyword rule raises the highlight count in `/sync` and sliding
//! sync, a receipt clears it (threads counted apart, cleared by threaded receipts),
//! `/notifications` lists it. Pushers: set, listed, deleted, refused when malformed or aimed
//! at a refused address; pushes reach a fake gateway on loopback (both formats), survive a
//! restart while the gateway fails, and a `rejected` pushkey loses its pusher; a pusher
//! goes (with its queued pushes) when the device whose token set it logs out or is deleted.
//! Evaluation uses the state at each event (member count, display names, the room's name),
//! not the room's state when the worker gets to it, and a state change reaches the very
//! next evaluation although the worker keeps rooms' contexts between batches.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{Client, enc, q};
use crate::harness::{Backend, Options, Server};

both_backends!(
    push_rules,
    counts_receipts_and_notifications,
    pushers_and_gateway,
    gateway_retry_across_restart,
    bad_pushers,
    pushers_go_with_their_device,
    evaluated_at_the_state_of_the_event,
    a_live_state_change_reaches_the_next_evaluation,
);

fn ids(rules: &Value, kind: &str) -> Vec<String> {
    rules[kind]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|r| r["rule_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn global(c: &Client) -> Value {
    c.get("/pushrules/").ok()["global"].clone()
}

fn push_rules(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let rules = global(&alice);
    // Every kind is listed, as an array even when empty (clients index them directly).
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(rules[kind].is_array(), "{kind}: {rules}");
    }
    let overrides = ids(&rules, "override");
    assert_eq!(
        overrides.first().map(String::as_str),
        Some(".m.rule.master")
    );
    assert!(
        overrides.iter().any(|r| r == ".m.rule.suppress_edits"),
        "{overrides:?}"
    );
    assert!(
        ids(&rules, "underride")
            .iter()
            .any(|r| r == ".m.rule.message")
    );
    assert_eq!(alice.get("/pushrules/global/").ok(), rules);

    // A keyword rule, then a second one placed before it.
    let kw = json!({"pattern": "cheese", "actions": ["notify", {"set_tweak": "highlight"}]});
    alice.put("/pushrules/global/content/cheese", &kw).ok();
    alice
        .put(
            "/pushrules/global/content/wine?before=cheese",
            &json!({"pattern": "wine", "actions": ["notify"]}),
        )
        .ok();
    let content = ids(&global(&alice), "content");
    let w = content.iter().position(|r| r == "wine").expect("wine");
    let c = content.iter().position(|r| r == "cheese").expect("cheese");
    assert!(w < c, "{content:?}");
    let rule = alice.get("/pushrules/global/content/cheese").ok();
    assert_eq!(rule["pattern"], "cheese");
    assert_eq!(rule["enabled"], true);

    // Enabled and actions, also on a server-default rule.
    alice
        .put(
            "/pushrules/global/content/cheese/enabled",
            &json!({"enabled": false}),
        )
        .ok();
    assert_eq!(
        alice.get("/pushrules/global/content/cheese/enabled").ok()["enabled"],
        false
    );
    alice
        .put(
            "/pushrules/global/underride/.m.rule.message/actions",
            &json!({"actions": []}),
        )
        .ok();
    assert_eq!(
        alice
            .get("/pushrules/global/underride/.m.rule.message/actions")
            .ok()["actions"],
        json!([])
    );
    // The change reaches /sync as account data.
    let sync = alice.sync(None, 0, None);
    let pr = sync["account_data"]["events"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["type"] == "m.push_rules"))
        .cloned()
        .expect("m.push_rules in /sync");
    assert!(ids(&pr["content"]["global"], "content").contains(&"cheese".to_owned()));

    // Delete.
    alice.delete("/pushrules/global/content/wine").ok();
    assert!(!ids(&global(&alice), "content").contains(&"wine".to_owned()));
    // The stored rules, as /sync's account data shows them, keep every kind too.
    let stored = alice
        .get(&format!(
            "/user/{}/account_data/m.push_rules",
            enc(&alice.user_id)
        ))
        .ok();
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(stored["global"][kind].is_array(), "{kind}: {stored}");
    }
    alice
        .delete("/pushrules/global/content/wine")
        .expect_err(404, "M_NOT_FOUND");

    // Another user's rules are untouched.
    let bob = srv.register("bob");
    assert!(!ids(&global(&bob), "content").contains(&"cheese".to_owned()));

    // Malformed rules and forbidden changes.
    alice
        .put(
            "/pushrules/global/content/x",
            &json!({"actions": ["notify"]}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(
            "/pushrules/global/content/x",
            &json!({"pattern": "x", "actions": "notify"}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(
            "/pushrules/global/override/x",
            &json!({"actions": [], "conditions": [{"kind": 5}]}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(
            "/pushrules/global/override/.m.rule.mine",
            &json!({"actions": [], "conditions": []}),
        )
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(
            "/pushrules/global/content/y?before=nosuchrule",
            &json!({"pattern": "y", "actions": []}),
        )
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put("/pushrules/global/room/not-a-room", &json!({"actions": []}))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put("/pushrules/global/bogus/x", &json!({"actions": []}))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(
            "/pushrules/device/content/x",
            &json!({"pattern": "x", "actions": []}),
        )
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .delete("/pushrules/global/override/.m.rule.master")
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .get("/pushrules/global/content/nosuch")
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put(
            "/pushrules/global/content/nosuch/enabled",
            &json!({"enabled": true}),
        )
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put(
            "/pushrules/global/content/cheese/enabled",
            &json!({"enabled": "yes"}),
        )
        .expect_err(400, "M_BAD_JSON");
    // The refused requests changed nothing.
    assert!(ids(&global(&alice), "content").contains(&"cheese".to_owned()));
    srv.assert_no_panics();
}

/// Polls `f` until it gives a value; panics with `what` after `within`.
#[track_caller]
fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn room_counts(sync: &Value, room: &str) -> (u64, u64) {
    let u = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        u["notification_count"].as_u64().unwrap_or(u64::MAX),
        u["highlight_count"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Syncs (long-polling from the last token) until the room shows `want`.
#[track_caller]
fn until_counts(c: &Client, since: &mut Option<String>, room: &str, want: (u64, u64)) -> Value {
    c.sync_until(
        since,
        Duration::from_secs(20),
        &format!("counts {want:?}"),
        |s| s["rooms"]["join"].get(room).is_some() && room_counts(s, room) == want,
    )
}

fn receipt(c: &Client, room: &str, kind: &str, event: &str, body: &Value) {
    c.post(
        &format!("/rooms/{}/receipt/{kind}/{}", enc(room), enc(event)),
        body,
    )
    .ok();
}

/// Two users in one room; bob has a keyword rule for "cheese".
fn two_in_a_room(srv: &Server) -> (Client, Client, String) {
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let room = alice.create_room(&json!({"preset": "public_chat", "name": "Dairy"}));
    bob.join(&room).ok();
    bob.put(
        "/pushrules/global/content/cheese",
        &json!({"pattern": "cheese", "actions": ["notify", {"set_tweak": "highlight"}]}),
    )
    .ok();
    (alice, bob, room)
}

fn counts_receipts_and_notifications(backend: Backend) {
    let srv = Server::start(backend);
    let (alice, bob, room) = two_in_a_room(&srv);
    let mut since = None;
    until_counts(&bob, &mut since, &room, (0, 0));

    let plain = alice.send_text(&room, "good morning");
    let cheesy = alice.send_text(&room, "who ate the cheese?");
    let s = until_counts(&bob, &mut since, &room, (2, 1));
    assert_eq!(room_counts(&s, &room), (2, 1));
    // The sender is not notified of their own messages.
    let mine = alice.sync(None, 0, None);
    assert_eq!(room_counts(&mine, &room), (0, 0), "{mine}");

    // /notifications: newest first, the actions, unread; only=highlight; paging.
    let n = bob.get("/notifications").ok();
    let list = n["notifications"].as_array().expect("notifications");
    assert_eq!(list.len(), 2, "{n}");
    assert_eq!(list[0]["event"]["event_id"], cheesy.as_str());
    assert_eq!(list[0]["room_id"], room.as_str());
    assert_eq!(list[0]["read"], false);
    assert!(list[0]["ts"].as_i64().is_some_and(|t| t > 0));
    assert!(
        list[0]["actions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["set_tweak"] == "highlight")),
        "{n}"
    );
    assert_eq!(list[1]["event"]["event_id"], plain.as_str());
    assert!(n.get("next_token").is_none(), "{n}");
    let h = bob.get("/notifications?only=highlight").ok();
    assert_eq!(h["notifications"].as_array().map(Vec::len), Some(1), "{h}");
    assert_eq!(
        h["notifications"][0]["event"]["content"]["body"],
        "who ate the cheese?"
    );
    let p1 = bob.get("/notifications?limit=1").ok();
    assert_eq!(p1["notifications"][0]["event"]["event_id"], cheesy.as_str());
    let token = p1["next_token"].as_str().expect("next_token").to_owned();
    let p2 = bob
        .get(&format!("/notifications?limit=1&from={}", q(&token)))
        .ok();
    assert_eq!(p2["notifications"][0]["event"]["event_id"], plain.as_str());
    assert_eq!(alice.get("/notifications").ok()["notifications"], json!([]));

    // Sliding sync shows the same counts.
    let ss = bob
        .post(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0",
            &json!({"conn_id": "counts", "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1}}}),
        )
        .ok();
    assert_eq!(ss["rooms"][&room]["notification_count"], 2, "{ss}");
    assert_eq!(ss["rooms"][&room]["highlight_count"], 1, "{ss}");
    let pos = ss["pos"].as_str().expect("pos").to_owned();

    // A receipt on the first message clears it; one on the newest clears everything.
    receipt(&bob, &room, "m.read", &plain, &json!({}));
    until_counts(&bob, &mut since, &room, (1, 1));
    receipt(&bob, &room, "m.read.private", &cheesy, &json!({}));
    let own = until_counts(&bob, &mut since, &room, (0, 0));
    // A private receipt reaches its owner and nobody else.
    let private_of_bob = |s: &Value| {
        s["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .is_some_and(|l| {
                l.iter().any(|e| {
                    e["type"] == "m.receipt"
                        && e["content"][&cheesy]["m.read.private"][&bob.user_id].is_object()
                })
            })
    };
    assert!(private_of_bob(&own) || private_of_bob(&bob.sync(None, 0, None)));
    assert!(
        !private_of_bob(&alice.sync(None, 0, None)),
        "alice sees bob's private receipt"
    );
    let n = bob.get("/notifications").ok();
    assert!(
        n["notifications"]
            .as_array()
            .is_some_and(|l| l.len() == 2 && l.iter().all(|x| x["read"] == true)),
        "{n}"
    );
    // The incremental sliding sync answer carries the room again, with the new counts.
    let ss2 = bob
        .post(
            &format!(
                "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=5000&pos={}",
                q(&pos)
            ),
            &json!({"conn_id": "counts", "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1}}}),
        )
        .ok();
    assert_eq!(ss2["rooms"][&room]["notification_count"], 0, "{ss2}");
    assert_eq!(ss2["rooms"][&room]["highlight_count"], 0, "{ss2}");

    // Threads: with unread_thread_notifications the thread counts on its own, and a
    // threaded receipt clears only it.
    let filter = json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string();
    let root = cheesy.clone();
    let reply = alice.send(
        &room,
        "m.room.message",
        &json!({"msgtype": "m.text", "body": "cheese in a thread",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    );
    let main = alice.send_text(&room, "back in the main timeline");
    wait_for(Duration::from_secs(20), "thread counts", || {
        let s = bob.sync(None, 0, Some(&filter));
        let r = &s["rooms"]["join"][&room];
        (r["unread_thread_notifications"][&root]["highlight_count"] == 1
            && r["unread_notifications"]["notification_count"] == 1)
            .then_some(())
    });
    let threaded = bob.sync(None, 0, Some(&filter));
    let r = &threaded["rooms"]["join"][&room];
    assert_eq!(r["unread_notifications"]["notification_count"], 1, "{r}");
    assert_eq!(r["unread_notifications"]["highlight_count"], 0, "{r}");
    assert_eq!(
        r["unread_thread_notifications"][&root]["notification_count"], 1,
        "{r}"
    );
    assert_eq!(
        r["unread_thread_notifications"][&root]["highlight_count"], 1,
        "{r}"
    );
    // Without the switch the room counts everything.
    until_counts(&bob, &mut since, &room, (2, 1));
    receipt(&bob, &room, "m.read", &reply, &json!({"thread_id": root}));
    until_counts(&bob, &mut since, &room, (1, 0));
    let threaded = bob.sync(None, 0, Some(&filter));
    let r = &threaded["rooms"]["join"][&room];
    assert!(r.get("unread_thread_notifications").is_none(), "{r}");
    assert_eq!(r["unread_notifications"]["notification_count"], 1, "{r}");
    receipt(&bob, &room, "m.read", &main, &json!({"thread_id": "main"}));
    until_counts(&bob, &mut since, &room, (0, 0));

    // Bad queries.
    bob.get("/notifications?from=abc")
        .expect_err(400, "M_INVALID_PARAM");
    bob.get("/notifications?only=everything")
        .expect_err(400, "M_INVALID_PARAM");
    srv.assert_no_panics();
}

/// What the fake gateway answers: a status and a body.
type Answer = (u16, String);

/// A push gateway on loopback: records each request's JSON body and answers with what
/// `answer` holds at that moment. Stops with the test process (bounded to 5 minutes).
struct Gateway {
    port: u16,
    bodies: Arc<Mutex<Vec<Value>>>,
    answer: Arc<Mutex<Answer>>,
}

impl Gateway {
    fn start() -> Gateway {
        Self::on(TcpListener::bind("127.0.0.1:0").expect("bind gateway"))
    }

    fn on(l: TcpListener) -> Gateway {
        let port = l.local_addr().expect("addr").port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new((200, "{}".to_owned())));
        let (b, a) = (Arc::clone(&bodies), Arc::clone(&answer));
        l.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while Instant::now() < deadline {
                let Ok((mut conn, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let Some(body) = read_request(&mut conn) else {
                    continue;
                };
                b.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                let (status, text) = a.lock().unwrap().clone();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        Gateway {
            port,
            bodies,
            answer,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/_matrix/push/v1/notify", self.port)
    }

    fn answer(&self, status: u16, body: &str) {
        *self.answer.lock().unwrap() = (status, body.to_owned());
    }

    fn received(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Waits for a push about `event`.
    #[track_caller]
    fn wait_push(&self, event: &str) -> Value {
        wait_for(
            Duration::from_secs(30),
            &format!("a push of {event}"),
            || {
                self.received()
                    .into_iter()
                    .find(|b| b["notification"]["event_id"] == event)
            },
        )
    }
}

/// Reads one HTTP/1.1 request and answers its body (by Content-Length).
fn read_request(conn: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = conn.read(&mut chunk).ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf[end + 4..end + 4 + len].to_vec());
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn pusher(url: &str, pushkey: &str, format: Option<&str>) -> Value {
    let mut data = json!({"url": url});
    if let Some(f) = format {
        data["format"] = json!(f);
    }
    json!({
        "app_id": "org.example.weft.test", "pushkey": pushkey, "kind": "http",
        "app_display_name": "Test app", "device_display_name": "Bob's phone",
        "lang": "en", "data": data, "append": false,
    })
}

fn pushers_and_gateway(backend: Backend) {
    let srv = Server::start(backend);
    let (alice, bob, room) = two_in_a_room(&srv);
    let gw = Gateway::start();

    bob.post("/pushers/set", &pusher(&gw.url(), "key-full", None))
        .ok();
    let listed = bob.get("/pushers").ok();
    let list = listed["pushers"].as_array().expect("pushers");
    assert_eq!(list.len(), 1, "{listed}");
    assert_eq!(list[0]["pushkey"], "key-full");
    assert_eq!(list[0]["kind"], "http");
    assert_eq!(list[0]["data"]["url"], gw.url().as_str());
    assert_eq!(alice.get("/pushers").ok()["pushers"], json!([]));

    // The full format: content, sender, counts, the device with its tweaks.
    let ev = alice.send_text(&room, "cheese for everyone");
    let body = gw.wait_push(&ev);
    let n = &body["notification"];
    assert_eq!(n["room_id"], room.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], alice.user_id.as_str());
    assert_eq!(n["content"]["body"], "cheese for everyone");
    assert_eq!(n["room_name"], "Dairy");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"]["unread"], 1, "{body}");
    assert_eq!(n["devices"][0]["app_id"], "org.example.weft.test");
    assert_eq!(n["devices"][0]["pushkey"], "key-full");
    assert_eq!(n["devices"][0]["tweaks"]["highlight"], true);
    assert!(n["devices"][0]["data"].get("url").is_none(), "{body}");

    // event_id_only: IDs and counts only. The same pushkey under another app ID is another
    // pusher; `append: false` keeps this user's others.
    let mut slim = pusher(&gw.url(), "key-slim", Some("event_id_only"));
    slim["app_id"] = json!("org.example.weft.slim");
    bob.post("/pushers/set", &slim).ok();
    assert_eq!(
        bob.get("/pushers").ok()["pushers"].as_array().map(Vec::len),
        Some(2)
    );
    let ev2 = alice.send_text(&room, "just saying hi");
    wait_for(
        Duration::from_secs(30),
        "two pushes of the second event",
        || {
            let got: Vec<Value> = gw
                .received()
                .into_iter()
                .filter(|b| b["notification"]["event_id"] == ev2.as_str())
                .collect();
            (got.len() == 2).then_some(())
        },
    );
    let slim_push = gw
        .received()
        .into_iter()
        .find(|b| b["notification"]["devices"][0]["pushkey"] == "key-slim")
        .expect("event_id_only push");
    let n = &slim_push["notification"];
    assert_eq!(n["event_id"], ev2.as_str());
    assert!(
        n.get("content").is_none() && n.get("sender").is_none(),
        "{slim_push}"
    );
    assert_eq!(n["devices"][0]["data"]["format"], "event_id_only");
    assert!(n["devices"][0].get("tweaks").is_none(), "{slim_push}");
    // Two members: `.m.rule.room_one_to_one` asks for a sound, so the push is urgent.
    assert_eq!(n["prio"], "high");
    let full_push = gw
        .received()
        .into_iter()
        .find(|b| {
            b["notification"]["event_id"] == ev2.as_str()
                && b["notification"]["devices"][0]["pushkey"] == "key-full"
        })
        .expect("full push of the second event");
    assert_eq!(
        full_push["notification"]["devices"][0]["tweaks"]["sound"],
        "default"
    );

    // Deleting (kind null) removes one pusher.
    let mut del = slim.clone();
    del["kind"] = Value::Null;
    bob.post("/pushers/set", &del).ok();
    let left = bob.get("/pushers").ok();
    assert_eq!(left["pushers"].as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!(left["pushers"][0]["pushkey"], "key-full");

    // `append: false` from another user takes the pushkey over.
    let carol = srv.register("carol");
    carol
        .post("/pushers/set", &pusher(&gw.url(), "key-full", None))
        .ok();
    assert_eq!(bob.get("/pushers").ok()["pushers"], json!([]));
    assert_eq!(
        carol.get("/pushers").ok()["pushers"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    bob.post("/pushers/set", &pusher(&gw.url(), "key-full", None))
        .ok();

    // A pushkey the gateway rejects loses its pusher.
    gw.answer(200, r#"{"rejected": ["key-full"]}"#);
    let ev3 = alice.send_text(&room, "cheese again");
    gw.wait_push(&ev3);
    wait_for(Duration::from_secs(20), "the rejected pusher to go", || {
        (bob.get("/pushers").ok()["pushers"] == json!([])).then_some(())
    });
    srv.assert_no_panics();
}

fn gateway_retry_across_restart(backend: Backend) {
    let mut srv = Server::start_with(
        backend,
        Options {
            extra_toml: "[push]\nretry_min_ms = 200\nretry_max_ms = 400\n".into(),
            ..Default::default()
        },
    );
    let (alice, bob, room) = two_in_a_room(&srv);
    let gw = Gateway::start();
    gw.answer(503, r#"{"errcode": "M_UNKNOWN"}"#);
    bob.post("/pushers/set", &pusher(&gw.url(), "key-retry", None))
        .ok();
    let ev = alice.send_text(&room, "cheese while the gateway is down");
    // Tried, failed, tried again (the backoff retries).
    wait_for(Duration::from_secs(30), "two failed attempts", || {
        let n = gw
            .received()
            .iter()
            .filter(|b| b["notification"]["event_id"] == ev.as_str())
            .count();
        (n >= 2).then_some(())
    });
    srv.stop();
    let before = gw.received().len();
    gw.answer(200, "{}");
    srv.start_again();
    // Delivered after the restart, from the persisted queue; then no more attempts.
    wait_for(
        Duration::from_secs(30),
        "a delivery after the restart",
        || {
            gw.received()[before..]
                .iter()
                .any(|b| b["notification"]["event_id"] == ev.as_str())
                .then_some(())
        },
    );
    let delivered_at = gw.received().len();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        gw.received().len(),
        delivered_at,
        "delivered once, not retried after 200"
    );
    // The counts were not evaluated twice either.
    let mut since = None;
    until_counts(&bob, &mut since, &room, (1, 1));
    srv.assert_no_panics();
}

fn bad_pushers(backend: Backend) {
    let srv = Server::start(backend);
    let bob = srv.register("bob");
    let gw = Gateway::start();
    let good = pusher(&gw.url(), "k", None);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("app_id");
            }),
            400,
            "M_MISSING_PARAM",
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("pushkey");
            }),
            400,
            "M_MISSING_PARAM",
        ),
        (
            with(&|b| {
                b.as_object_mut().unwrap().remove("kind");
            }),
            400,
            "M_MISSING_PARAM",
        ),
        (
            with(&|b| {
                b["data"] = json!({});
            }),
            400,
            "M_MISSING_PARAM",
        ),
        (
            with(&|b| b["kind"] = json!("email")),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with(&|b| b["app_id"] = json!("a".repeat(65))),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with(&|b| b["pushkey"] = json!("k".repeat(513))),
            400,
            "M_INVALID_PARAM",
        ),
        (with(&|b| b["data"] = json!("nope")), 400, "M_INVALID_PARAM"),
        (
            with(&|b| b["data"]["format"] = json!("full")),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with(&|b| b["append"] = json!("yes")),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with(&|b| b["data"]["url"] = json!("not a url")),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with(&|b| b["data"]["url"] = json!("ftp://127.0.0.1/_matrix/push/v1/notify")),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with(&|b| b["data"]["url"] = json!(format!("http://127.0.0.1:{}/elsewhere", gw.port))),
            400,
            "M_INVALID_PARAM",
        ),
        // The address policy: private and link-local addresses not on the allow-list.
        (
            with(&|b| b["data"]["url"] = json!("http://10.1.2.3/_matrix/push/v1/notify")),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with(&|b| b["data"]["url"] = json!("http://169.254.169.254/_matrix/push/v1/notify")),
            400,
            "M_INVALID_PARAM",
        ),
        (
            with(&|b| b["data"]["url"] = json!("http://[fd00::1]:8080/_matrix/push/v1/notify")),
            400,
            "M_INVALID_PARAM",
        ),
        (json!([1, 2]), 400, "M_INVALID_PARAM"),
    ];
    for (body, status, code) in cases {
        let r = bob.post("/pushers/set", &body);
        assert_eq!(
            (r.status, r.errcode().to_owned()),
            (status, code.to_owned()),
            "{body}"
        );
    }
    bob.raw("POST", "/pushers/set", Some(b"{not json".to_vec()))
        .expect_err(400, "M_NOT_JSON");
    // Nothing was stored; deleting what does not exist is fine; the good one is taken.
    assert_eq!(bob.get("/pushers").ok()["pushers"], json!([]));
    let mut del = good.clone();
    del["kind"] = Value::Null;
    bob.post("/pushers/set", &del).ok();
    bob.post("/pushers/set", &good).ok();
    assert_eq!(
        bob.get("/pushers").ok()["pushers"].as_array().map(Vec::len),
        Some(1)
    );
    srv.assert_no_panics();
}

/// Pushers belong to the device whose access token set them: logging out or deleting that
/// device removes its pushers and what is queued for them, and leaves the others.
fn pushers_go_with_their_device(backend: Backend) {
    let srv = Server::start_with(
        backend,
        Options {
            extra_toml: "[push]\nretry_min_ms = 200\nretry_max_ms = 400\n".into(),
            ..Default::default()
        },
    );
    let (alice, laptop, room) = two_in_a_room(&srv);
    let mut phone = srv.anonymous();
    phone.login("bob", "pw-bob");
    let mut tablet = srv.anonymous();
    tablet.login("bob", "pw-bob");
    let gw = Gateway::start();
    gw.answer(503, r#"{"errcode": "M_UNKNOWN"}"#);
    for (c, key) in [
        (&laptop, "key-laptop"),
        (&phone, "key-phone"),
        (&tablet, "key-tablet"),
    ] {
        c.post("/pushers/set", &pusher(&gw.url(), key, None)).ok();
    }
    let keys = |c: &Client| -> Vec<String> {
        let mut k: Vec<String> = c.get("/pushers").ok()["pushers"]
            .as_array()
            .expect("pushers")
            .iter()
            .filter_map(|p| p["pushkey"].as_str().map(str::to_owned))
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&laptop), ["key-laptop", "key-phone", "key-tablet"]);
    let queued = || {
        let mut k = srv.query_text(
            "SELECT pushkey AS v FROM push_outbox WHERE user_id = ?",
            &laptop.user_id,
        );
        k.sort();
        k
    };

    // A push for each pusher, failing at the gateway, so all three stay queued.
    let ev = alice.send_text(&room, "cheese for every device");
    wait_for(Duration::from_secs(30), "a push to each device", || {
        let got: std::collections::HashSet<String> = gw
            .received()
            .iter()
            .filter(|b| b["notification"]["event_id"] == ev.as_str())
            .filter_map(|b| {
                b["notification"]["devices"][0]["pushkey"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        (got.len() == 3).then_some(())
    });
    assert_eq!(queued(), ["key-laptop", "key-phone", "key-tablet"]);

    // The phone logs out: its pusher and its queued push go.
    phone.post("/logout", &json!({})).ok();
    assert_eq!(keys(&laptop), ["key-laptop", "key-tablet"]);
    assert_eq!(queued(), ["key-laptop", "key-tablet"]);

    // The tablet is deleted from the laptop (user-interactive auth): the same.
    let path = format!("/devices/{}", enc(&tablet.device_id));
    let auth = json!({"auth": {"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw-bob"}});
    laptop
        .raw("DELETE", &path, Some(auth.to_string().into_bytes()))
        .ok();
    assert_eq!(keys(&laptop), ["key-laptop"]);
    assert_eq!(queued(), ["key-laptop"]);

    // The laptop's pusher still works: its queued push is delivered once the gateway is back.
    let before = gw.received().len();
    gw.answer(200, "{}");
    wait_for(
        Duration::from_secs(30),
        "the laptop's push delivered",
        || queued().is_empty().then_some(()),
    );
    let after: Vec<Value> = gw.received()[before..].to_vec();
    assert!(
        after
            .iter()
            .all(|b| b["notification"]["devices"][0]["pushkey"] == "key-laptop"),
        "only the laptop's pusher is pushed to: {after:?}"
    );
    assert!(
        after
            .iter()
            .any(|b| b["notification"]["event_id"] == ev.as_str()),
        "{after:?}"
    );
    srv.assert_no_panics();
}

/// The sound tweak of each of a user's notifications, by event ID.
fn sounds(c: &Client) -> std::collections::HashMap<String, Option<String>> {
    c.get("/notifications?limit=100").ok()["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|n| {
            let id = n["event"]["event_id"].as_str()?.to_owned();
            let sound = n["actions"].as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["set_tweak"] == "sound")
                    .and_then(|x| x["value"].as_str().map(str::to_owned))
            });
            Some((id, sound))
        })
        .collect()
}

/// Rules see the room as it was at the event: its member count, the user's display name
/// and the room's name then, not when the worker gets to it. The worker normally runs right
/// behind the events; here it is made to lag behind later state changes by rewinding it
/// over the whole history (as a crash before it saved its position would), with the
/// notifications it made the first time deleted, so they are made again after the changes.
fn evaluated_at_the_state_of_the_event(backend: Backend) {
    let mut srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let carol = srv.register("carol");
    let room = alice.create_room(&json!({"preset": "public_chat", "name": "Before"}));
    bob.join(&room).ok();
    let rename = |name: &str| {
        bob.put(
            &format!("/profile/{}/displayname", enc(&bob.user_id)),
            &json!({"displayname": name}),
        )
        .ok();
    };
    rename("Bobby");
    bob.put(
        "/pushrules/global/override/two",
        &json!({
            "conditions": [
                {"kind": "room_member_count", "is": "2"},
                {"kind": "event_match", "key": "content.body", "pattern": "count"},
            ],
            "actions": ["notify", {"set_tweak": "sound", "value": "two"}],
        }),
    )
    .ok();
    bob.put(
        "/pushrules/global/override/name",
        &json!({
            "conditions": [{"kind": "contains_display_name"}],
            "actions": ["notify", {"set_tweak": "sound", "value": "name"}],
        }),
    )
    .ok();
    let gw = Gateway::start();
    bob.post("/pushers/set", &pusher(&gw.url(), "key-state", None))
        .ok();

    // Two members, bob is "Bobby", the room is "Before".
    let m1 = alice.send_text(&room, "count me in");
    let m2 = alice.send_text(&room, "hello Bobby");
    wait_for(Duration::from_secs(30), "both evaluated", || {
        let s = sounds(&bob);
        (s.get(&m1) == Some(&Some("two".into())) && s.get(&m2) == Some(&Some("name".into())))
            .then_some(())
    });
    // Then three members, bob is "Robert", the room is "After".
    carol.join(&room).ok();
    rename("Robert");
    alice
        .put_state(&room, "m.room.name", "", &json!({"name": "After"}))
        .ok();
    let m3 = alice.send_text(&room, "count me in again, Bobby");
    wait_for(Duration::from_secs(30), "the third evaluated", || {
        sounds(&bob).contains_key(&m3).then_some(())
    });
    assert_eq!(sounds(&bob)[&m3], None, "neither rule applies any more");

    srv.stop();
    srv.execute("UPDATE push_progress SET stream = 0", &[]);
    srv.execute("DELETE FROM push_notifications", &[]);
    let before = gw.received().len();
    srv.start_again();
    let again = wait_for(Duration::from_secs(30), "all three evaluated again", || {
        let s = sounds(&bob);
        [&m1, &m2, &m3]
            .iter()
            .all(|m| s.contains_key(*m))
            .then_some(s)
    });
    assert_eq!(
        again[&m1],
        Some("two".into()),
        "two members at the first message"
    );
    assert_eq!(
        again[&m2],
        Some("name".into()),
        "bob was Bobby at the second"
    );
    assert_eq!(again[&m3], None, "three members and Robert at the third");
    // The pushes made again name the room as it was called at each event.
    let pushed = |ev: &str| {
        wait_for(Duration::from_secs(30), "a push made again", || {
            gw.received()[before..]
                .iter()
                .find(|b| b["notification"]["event_id"] == ev)
                .cloned()
        })
    };
    assert_eq!(pushed(&m1)["notification"]["room_name"], "Before");
    assert_eq!(pushed(&m3)["notification"]["room_name"], "After");
    // carol joined after the first two: only the third is hers.
    let carols = wait_for(Duration::from_secs(30), "carol's notification", || {
        let s = sounds(&carol);
        s.contains_key(&m3).then_some(s)
    });
    assert!(
        !carols.contains_key(&m1) && !carols.contains_key(&m2),
        "{carols:?}"
    );

    // A state group that cannot be read does not stall the worker: that event falls back to
    // the current state (where bob, renamed since, counts as a member from after it), the
    // events behind it are still evaluated at their own state. (Read from the table:
    // serving the event to clients needs its state too.)
    srv.stop();
    srv.execute(
        "UPDATE events SET state_before = 987654321 WHERE event_id = ?",
        &[&m1],
    );
    srv.execute("UPDATE push_progress SET stream = 0", &[]);
    srv.execute("DELETE FROM push_notifications", &[]);
    srv.start_again();
    let stored = || -> std::collections::HashMap<String, Value> {
        srv.query_text(
            "SELECT event_id || ' ' || actions AS v FROM push_notifications WHERE user_id = ?",
            &bob.user_id,
        )
        .into_iter()
        .filter_map(|r| {
            let (id, actions) = r.split_once(' ')?;
            Some((id.to_owned(), serde_json::from_str(actions).ok()?))
        })
        .collect()
    };
    let third = wait_for(
        Duration::from_secs(30),
        "the later two evaluated a third time",
        || {
            let s = stored();
            [&m2, &m3].iter().all(|m| s.contains_key(*m)).then_some(s)
        },
    );
    let sound = |ev: &str| {
        third[ev]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["set_tweak"] == "sound"))
            .map(|x| x["value"].clone())
    };
    assert_eq!(
        sound(&m2),
        Some(json!("name")),
        "the second, at its own state"
    );
    assert_eq!(sound(&m3), None, "the third, at its own state");
    assert!(
        srv.log()
            .contains("cannot read the state at an event; using the current state"),
        "the fallback is logged"
    );
    srv.assert_no_panics();
}

/// The worker keeps each room's current-state context between batches; a change of the
/// room's state (a rename, a join) must reach the next event it evaluates. Each message is
/// evaluated before the next change is made, so every one is read at the current state
/// (not through the event's own state group): a context kept past a change would give the
/// old name and member count.
fn a_live_state_change_reaches_the_next_evaluation(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let carol = srv.register("carol");
    let room = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&room).ok();
    let rename = |name: &str| {
        bob.put(
            &format!("/profile/{}/displayname", enc(&bob.user_id)),
            &json!({"displayname": name}),
        )
        .ok();
    };
    rename("Bobby");
    bob.put(
        "/pushrules/global/override/two",
        &json!({
            "conditions": [
                {"kind": "room_member_count", "is": "2"},
                {"kind": "event_match", "key": "content.body", "pattern": "count"},
            ],
            "actions": ["notify", {"set_tweak": "sound", "value": "two"}],
        }),
    )
    .ok();
    bob.put(
        "/pushrules/global/override/name",
        &json!({
            "conditions": [{"kind": "contains_display_name"}],
            "actions": ["notify", {"set_tweak": "sound", "value": "name"}],
        }),
    )
    .ok();
    let evaluated = |ev: &str| {
        wait_for(Duration::from_secs(30), "evaluated", || {
            sounds(&bob).get(ev).cloned()
        })
    };
    let m1 = alice.send_text(&room, "hello Bobby");
    assert_eq!(evaluated(&m1), Some("name".into()), "bob is Bobby");
    let m2 = alice.send_text(&room, "count me in");
    assert_eq!(evaluated(&m2), Some("two".into()), "two members");
    rename("Robert");
    let m3 = alice.send_text(&room, "hello Robert");
    assert_eq!(evaluated(&m3), Some("name".into()), "bob is Robert now");
    let m4 = alice.send_text(&room, "hello Bobby");
    wait_for(Duration::from_secs(30), "the fourth evaluated", || {
        sounds(&bob).contains_key(&m4).then_some(())
    });
    // Two members, no rule of bob's: the one-to-one default (its sound is "default").
    assert_eq!(
        sounds(&bob)[&m4],
        Some("default".into()),
        "Bobby is not his name any more"
    );
    carol.join(&room).ok();
    let m5 = alice.send_text(&room, "count me again");
    wait_for(Duration::from_secs(30), "the fifth evaluated", || {
        sounds(&bob).contains_key(&m5).then_some(())
    });
    assert_eq!(sounds(&bob)[&m5], None, "three members now");
    srv.assert_no_panics();
}
