//! Bad input gets a Matrix error (status + `errcode` + `error`), never a panic: malformed and
//! mistyped JSON, oversized bodies, unknown rooms/events/endpoints, bad or missing tokens,
//! forbidden actions, unsupported room versions, bad query strings and paths. Afterwards the
//! server still answers and its log shows no panic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;

use crate::both_backends;
use crate::client::{Client, Resp, enc};
use crate::harness::{Backend, Server};

both_backends!(bad_input_gets_matrix_errors);

/// Body limit configured for this test (small, so oversized bodies are cheap to send).
const LIMIT: usize = 64 * 1024;

/// Sends a request with a body of `len` bytes over a raw connection and returns the status
/// line and body of the answer. With `chunked`, the body goes without a Content-Length. The
/// server may answer (and close) before it has read everything; write errors after that are
/// expected and ignored.
fn raw_oversized(base: &str, path: &str, token: &str, len: usize, chunked: bool) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\n".to_owned()
    } else {
        format!("Content-Length: {len}\r\n")
    };
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{framing}Connection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("write head");
    // A JSON object with one long string, written in pieces until the server stops reading.
    let mut body = b"{\"body\":\"".to_vec();
    body.resize(len - 2, b'x');
    body.extend_from_slice(b"\"}");
    for piece in body.chunks(16 * 1024) {
        let write = if chunked {
            let mut c = format!("{:x}\r\n", piece.len()).into_bytes();
            c.extend_from_slice(piece);
            c.extend_from_slice(b"\r\n");
            s.write_all(&c)
        } else {
            s.write_all(piece)
        };
        if write.is_err() {
            break;
        }
    }
    if chunked {
        let _ = s.write_all(b"0\r\n\r\n");
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to an oversized body: {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[track_caller]
fn expect(r: Resp, status: u16, errcode: &str) {
    r.expect_err(status, errcode);
}

fn bad_input_gets_matrix_errors(backend: Backend) {
    let mut srv = Server::start_with(
        backend,
        crate::harness::Options {
            extra_toml: format!("[limits]\nmax_body_bytes = {LIMIT}\n"),
            ..Default::default()
        },
    );
    let alice = srv.register("alice");
    let bob = srv.register("bob");
    let anon = srv.anonymous();
    let room = alice.create_room(&json!({"preset": "private_chat"}));
    let msg = alice.send_text(&room, "hello");
    let send_path = |r: &str, txn: &str| format!("/rooms/{}/send/m.room.message/{txn}", enc(r));
    let raw = |c: &Client, method: &str, path: &str, body: &[u8]| {
        c.raw(method, path, Some(body.to_vec()))
    };

    // ---- malformed JSON -> 400 M_NOT_JSON
    for body in [
        &b"{not json"[..],
        b"{\"msgtype\": \"m.text\", \"body\": ",
        b"\xff\xfe\x00garbage",
        b"[1, 2,]",
        b"{\"a\": 1}{\"b\": 2}",
    ] {
        expect(
            raw(&alice, "PUT", &send_path(&room, "nj"), body),
            400,
            "M_NOT_JSON",
        );
    }
    expect(raw(&alice, "POST", "/createRoom", b"{"), 400, "M_NOT_JSON");
    expect(
        raw(&anon, "POST", "/login", b"user=alice&password=x"),
        400,
        "M_NOT_JSON",
    );
    // Nesting deep enough to overflow a naive recursive parser (but under the body limit).
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    expect(
        raw(&alice, "PUT", &send_path(&room, "deep"), deep.as_bytes()),
        400,
        "M_NOT_JSON",
    );

    // ---- well-formed JSON of the wrong shape -> 400 M_BAD_JSON
    expect(
        alice.post("/createRoom", &json!({"name": 5})),
        400,
        "M_BAD_JSON",
    );
    expect(
        alice.post("/createRoom", &json!({"invite": "not-a-list"})),
        400,
        "M_BAD_JSON",
    );
    expect(alice.post("/createRoom", &json!([1, 2])), 400, "M_BAD_JSON");
    expect(anon.post("/login", &json!({"type": 1})), 400, "M_BAD_JSON");
    expect(
        alice.put(&send_path(&room, "arr"), &json!([1, 2])),
        400,
        "M_BAD_JSON",
    );
    expect(
        alice.put(&send_path(&room, "str"), &json!("text")),
        400,
        "M_BAD_JSON",
    );
    expect(
        alice.post(
            &format!("/rooms/{}/invite", enc(&room)),
            &json!({"user_id": 7}),
        ),
        400,
        "M_BAD_JSON",
    );
    // Numbers canonical JSON cannot carry (events are signed in canonical JSON).
    expect(
        alice.put(&send_path(&room, "float"), &json!({"n": 1.5})),
        400,
        "M_BAD_JSON",
    );
    expect(
        alice.put(&send_path(&room, "big"), &json!({"n": 9007199254740992u64})),
        400,
        "M_BAD_JSON",
    );
    expect(
        alice.put_state(&room, "m.room.topic", "", &json!("not an object")),
        400,
        "M_BAD_JSON",
    );

    // ---- bodies over the limit -> 413 M_TOO_LARGE (with and without Content-Length)
    let token = alice.token.clone().unwrap();
    let path = format!("/_matrix/client/v3{}", send_path(&room, "huge"));
    for chunked in [false, true] {
        let (status, body) = raw_oversized(&srv.base, &path, &token, LIMIT * 4, chunked);
        assert_eq!(status, 413, "chunked={chunked}: {body}");
        assert!(body.contains("M_TOO_LARGE"), "chunked={chunked}: {body}");
    }
    // ---- unknown rooms and events
    let nowhere = "!nowhere:weft.test";
    expect(
        alice.put(&send_path(nowhere, "x"), &json!({"body": "x"})),
        404,
        "M_NOT_FOUND",
    );
    expect(
        alice.get(&format!("/rooms/{}/messages", enc(nowhere))),
        403,
        "M_FORBIDDEN",
    );
    expect(alice.join(nowhere), 404, "M_NOT_FOUND");
    expect(alice.join("#nowhere:weft.test"), 404, "M_NOT_FOUND");
    expect(
        alice.get(&format!("/rooms/{}/event/{}", enc(&room), enc("$nope"))),
        404,
        "M_NOT_FOUND",
    );
    expect(
        alice.get(&format!("/rooms/{}/context/{}", enc(&room), enc("$nope"))),
        404,
        "M_NOT_FOUND",
    );
    expect(
        alice.get(&format!("/rooms/{}/state/m.room.nothing/", enc(&room))),
        404,
        "M_NOT_FOUND",
    );
    expect(
        alice.put(
            &format!("/rooms/{}/redact/{}/r", enc(&room), enc("$nope")),
            &json!({}),
        ),
        404,
        "M_NOT_FOUND",
    );
    expect(
        alice.get(&format!("/directory/room/{}", enc("#nope:weft.test"))),
        404,
        "M_NOT_FOUND",
    );
    expect(alice.get("/profile/@nobody:weft.test"), 404, "M_NOT_FOUND");
    // Malformed identifiers in the path.
    expect(
        alice.put(&send_path("not-a-room", "x"), &json!({})),
        400,
        "M_INVALID_PARAM",
    );
    expect(alice.join("neither"), 400, "M_INVALID_PARAM");
    expect(
        alice.get(&format!("/rooms/{}/event/%FF%FE", enc(&room))),
        404,
        "M_NOT_FOUND",
    );

    // ---- tokens
    for path in ["/sync", "/account/whoami", "/joined_rooms"] {
        expect(anon.get(path), 401, "M_MISSING_TOKEN");
        let r = anon.raw_with("GET", path, None, Some("wft_not_a_token"), &[]);
        r.expect_err(401, "M_UNKNOWN_TOKEN");
        let r = anon.raw_with("GET", path, None, Some(""), &[]);
        assert_eq!(r.status, 401, "{path} with an empty token: {}", r.text);
    }
    expect(
        anon.get("/sync?access_token=wft_nope"),
        401,
        "M_UNKNOWN_TOKEN",
    );
    expect(
        anon.put(&send_path(&room, "t"), &json!({})),
        401,
        "M_MISSING_TOKEN",
    );
    let r = anon.raw_with(
        "GET",
        "/sync",
        None,
        None,
        &[("Authorization", "Basic YTpi")],
    );
    r.expect_err(401, "M_MISSING_TOKEN");

    // ---- unknown endpoints -> 404 M_UNRECOGNIZED (405 for a known path with another method)
    expect(alice.get("/no/such/endpoint"), 404, "M_UNRECOGNIZED");
    expect(anon.get("/_matrix/client/v9/sync"), 404, "M_UNRECOGNIZED");
    expect(anon.get("/_matrix/nothing"), 404, "M_UNRECOGNIZED");
    expect(
        anon.get("/_matrix/client/unstable/org.matrix.msc2697.v2/dehydrated_device"),
        404,
        "M_UNRECOGNIZED",
    );
    let r = alice.raw("DELETE", "/sync", None);
    assert!(
        matches!(r.status, 404 | 405) && r.errcode() == "M_UNRECOGNIZED",
        "DELETE /sync: {} {}",
        r.status,
        r.text
    );
    let long = format!("/{}", "a".repeat(20_000));
    let r = alice.get(&long);
    assert!(
        (400..500).contains(&r.status),
        "very long path: {} {}",
        r.status,
        r.text
    );

    // ---- forbidden actions -> 403 M_FORBIDDEN
    expect(
        bob.put(&send_path(&room, "b1"), &json!({"body": "hi"})),
        403,
        "M_FORBIDDEN",
    );
    expect(bob.join(&room), 403, "M_FORBIDDEN"); // invite-only, not invited
    expect(
        bob.get(&format!("/rooms/{}/messages", enc(&room))),
        403,
        "M_FORBIDDEN",
    );
    expect(
        bob.get(&format!("/rooms/{}/event/{}", enc(&room), enc(&msg))),
        403,
        "M_FORBIDDEN",
    );
    expect(
        bob.get(&format!("/rooms/{}/state", enc(&room))),
        403,
        "M_FORBIDDEN",
    );
    let public = alice.create_room(&json!({"preset": "public_chat"}));
    bob.join(&public).ok();
    let kick = |c: &Client, target: &str| {
        c.post(
            &format!("/rooms/{}/kick", enc(&public)),
            &json!({"user_id": target}),
        )
    };
    expect(kick(&bob, &alice.user_id), 403, "M_FORBIDDEN");
    expect(
        bob.post(
            &format!("/rooms/{}/ban", enc(&public)),
            &json!({"user_id": alice.user_id}),
        ),
        403,
        "M_FORBIDDEN",
    );
    expect(
        bob.put_state(&public, "m.room.power_levels", "", &json!({"users": {}})),
        403,
        "M_FORBIDDEN",
    );
    expect(
        bob.put_state(&public, "m.room.name", "", &json!({"name": "mine"})),
        403,
        "M_FORBIDDEN",
    );
    let alice_msg = alice.send_text(&public, "not yours");
    expect(
        bob.put(
            &format!("/rooms/{}/redact/{}/r", enc(&public), enc(&alice_msg)),
            &json!({}),
        ),
        403,
        "M_FORBIDDEN",
    );
    expect(
        bob.put(
            "/profile/@alice:weft.test/displayname",
            &json!({"displayname": "pwned"}),
        ),
        403,
        "M_FORBIDDEN",
    );
    expect(
        bob.post("/user/@alice:weft.test/filter", &json!({})),
        403,
        "M_FORBIDDEN",
    );
    expect(
        alice.put_state(&public, "m.room.create", "", &json!({})),
        403,
        "M_FORBIDDEN",
    );
    // Another user's membership cannot be set by sending a member event with their key.
    expect(
        bob.put_state(
            &public,
            "m.room.member",
            &alice.user_id,
            &json!({"membership": "leave"}),
        ),
        403,
        "M_FORBIDDEN",
    );

    // ---- room versions
    for v in ["99", "0", "foo", "13", ""] {
        expect(
            alice.post("/createRoom", &json!({"room_version": v})),
            400,
            "M_UNSUPPORTED_ROOM_VERSION",
        );
    }

    // ---- accounts
    expect(
        anon.post(
            "/register",
            &json!({"username": "Bad Name!", "password": "x", "auth": {"type": "m.login.dummy"}}),
        ),
        400,
        "M_INVALID_USERNAME",
    );
    expect(
        anon.post(
            "/register",
            &json!({"username": "alice", "password": "x", "auth": {"type": "m.login.dummy"}}),
        ),
        400,
        "M_USER_IN_USE",
    );
    expect(
        anon.post(
            "/login",
            &json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong"}),
        ),
        403,
        "M_FORBIDDEN",
    );
    expect(
        anon.post(
            "/login",
            &json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "x"}),
        ),
        403,
        "M_FORBIDDEN",
    );

    // ---- query strings
    expect(alice.get("/sync?timeout=abc"), 400, "M_INVALID_PARAM");
    expect(alice.get("/sync?since=garbage"), 400, "M_INVALID_PARAM");
    expect(alice.get("/sync?filter=%7Bnope"), 400, "M_BAD_JSON");
    expect(alice.get("/sync?filter=999999"), 404, "M_NOT_FOUND");
    let messages = format!("/rooms/{}/messages", enc(&room));
    expect(
        alice.get(&format!("{messages}?dir=x")),
        400,
        "M_INVALID_PARAM",
    );
    expect(
        alice.get(&format!("{messages}?limit=-1")),
        400,
        "M_INVALID_PARAM",
    );
    expect(
        alice.get(&format!("{messages}?from=zzz")),
        400,
        "M_INVALID_PARAM",
    );
    expect(
        alice.get(&format!("{messages}?filter=%5B")),
        400,
        "M_BAD_JSON",
    );

    // ---- numbers and tokens at the edges of what the server would index, add or slice
    // with (the unwrap audit of the dups branch): clamped or refused, never a panic.
    // A typing timeout of u64::MAX ms would overflow `Instant + Duration` unclamped.
    let typing = format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    alice
        .put(&typing, &json!({"typing": true, "timeout": u64::MAX}))
        .ok();
    alice.put(&typing, &json!({"typing": false})).ok();
    // Sliding-sync ranges past the end, reversed, or at u64::MAX index nothing.
    let sliding = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0";
    let v = alice
        .post(
            sliding,
            &json!({"lists": {"l": {
                "ranges": [[5, 1], [u64::MAX, u64::MAX], [1000, u64::MAX]],
                "timeline_limit": 1,
            }}}),
        )
        .ok();
    assert!(
        v["lists"]["l"]["ops"].as_array().is_none_or(|ops| ops
            .iter()
            .all(|o| o["room_ids"].as_array().is_none_or(|ids| ids.is_empty()))),
        "windows past the end of the list hold no rooms: {v}"
    );
    expect(
        alice.post(
            sliding,
            &json!({"lists": {"l": {"ranges": [[-1, 3]], "timeline_limit": 1}}}),
        ),
        400,
        "M_BAD_JSON",
    );
    // A search cursor is sliced after its first byte: a multi-byte first character, or the
    // bare prefix, is a bad token.
    for token in ["é1", "r", "s", "r-1", "\u{1F600}"] {
        expect(
            alice.post(
                &format!("/search?next_batch={}", enc(token)),
                &json!({"search_categories": {"room_events": {"search_term": "hello"}}}),
            ),
            400,
            "M_INVALID_PARAM",
        );
    }
    // A sync filter's timeline limit beyond the server's cap is honoured as the cap.
    let f = json!({"room": {"timeline": {"limit": u64::MAX}}}).to_string();
    alice.get(&format!("/sync?filter={}", enc(&f))).ok();

    // ---- still alive, nothing panicked
    assert!(srv.is_running(), "the server exited:\n{}", srv.log());
    let v = anon.get("/_matrix/client/versions").ok();
    assert!(v["versions"].as_array().is_some_and(|a| !a.is_empty()));
    alice.send_text(&room, "still here");
    srv.assert_no_panics();
}

both_backends!(oversized_events_are_refused);

/// The spec caps a PDU at 64 KiB; an event whose request body is within the HTTP limit but
/// whose PDU is over it is refused with 413 M_TOO_LARGE, and nothing is stored.
fn oversized_events_are_refused(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let room = alice.create_room(&json!({}));
    let body = "x".repeat(70 * 1024);
    let r = alice.send_txn(
        &room,
        "m.room.message",
        "big",
        &json!({"msgtype": "m.text", "body": body}),
    );
    r.expect_err(413, "M_TOO_LARGE");
    let r = alice.put_state(&room, "org.example.big", "", &json!({"v": body}));
    r.expect_err(413, "M_TOO_LARGE");
    // Type and state key are limited to 255 bytes each.
    let long = "t".repeat(256);
    alice
        .send_txn(&room, &long, "lt", &json!({}))
        .expect_err(413, "M_TOO_LARGE");
    alice
        .put_state(&room, &long, "", &json!({}))
        .expect_err(413, "M_TOO_LARGE");
    alice
        .put_state(&room, "org.example.k", &long, &json!({}))
        .expect_err(413, "M_TOO_LARGE");
    alice
        .put_state(&room, "org.example.k", &long[..255], &json!({}))
        .ok();
    let all = alice.all_messages(&room, 50, 5);
    assert!(
        all.iter().all(|e| e["type"] != "m.room.message"
            && e["type"] != "org.example.big"
            && e["type"] != long.as_str()),
        "an oversized event was stored"
    );
    // Just under the limit goes through.
    let ok = "y".repeat(60 * 1024);
    alice.send_text(&room, &ok);
    srv.assert_no_panics();
}
