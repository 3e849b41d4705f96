//! Password hashing under attack: a flood of logins and registrations meets the bounded
//! pool (`src/passwords.rs`). The pool is made deliberately small here (one thread, two
//! queue slots) so that a few dozen concurrent requests overflow it on any machine; what is
//! asserted is correctness (every answer is 403, 429 with `retry_after_ms`, or success;
//! nothing is a 500; other requests are still served; the server recovers), never timing.
//! Memory and latency under a 500 + 500 flood are measured by `tools/loadgen`'s
//! `weft-login-flood` (docs/BENCHMARKS.md), not here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::Client;
use crate::harness::{Backend, Options, Server};

both_backends!(
    login_flood_is_refused_with_429_not_500,
    unknown_users_queue_like_known_ones,
    outdated_hashes_are_upgraded_on_login,
);

/// A small pool whose hashes take a noticeable time, so concurrent requests overflow it.
const SMALL_POOL: &str = "[passwords]\nthreads = 1\nqueue = 2\nmemory_kib = 8192\niterations = 4\n";

fn small_pool_server(backend: Backend) -> Server {
    Server::start_with(
        backend,
        Options {
            extra_toml: SMALL_POOL.into(),
            ..Options::default()
        },
    )
}

fn login_body(user: &str, password: &str) -> Value {
    json!({"type": "m.login.password",
           "identifier": {"type": "m.id.user", "user": user},
           "password": password})
}

/// Fires `n` copies of a request from `n` threads released together; returns each answer's
/// status and body.
fn burst(server: &Server, n: usize, make: impl Fn(usize) -> (String, Value)) -> Vec<(u16, Value)> {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (path, body) = make(i);
            let client = server.anonymous();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let r = client.post(&path, &body);
                (r.status, r.body)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("request thread"))
        .collect()
}

fn assert_429_shape(body: &Value) {
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
    let retry = body["retry_after_ms"].as_u64().unwrap_or(0);
    assert!(retry >= 100, "retry_after_ms missing or too small: {body}");
}

fn login_flood_is_refused_with_429_not_500(backend: Backend) {
    let server = small_pool_server(backend);
    let mut alice = server.register("alice");
    let room = alice.create_room(&json!({}));

    // Meanwhile, another client keeps using the server until the flood is over.
    let other = alice.clone_session();
    let room2 = room.clone();
    let flood_over = Arc::new(AtomicBool::new(false));
    let over = flood_over.clone();
    let watcher = thread::spawn(move || {
        let mut sent = 0;
        loop {
            other.get("/_matrix/client/versions").ok();
            other.send_text(&room2, &format!("during the flood {sent}"));
            sent += 1;
            if over.load(Ordering::Relaxed) {
                return sent;
            }
        }
    });

    let logins = burst(&server, 40, |_| {
        ("/login".into(), login_body("alice", "wrong password"))
    });
    let registrations = burst(&server, 40, |i| {
        (
            "/register".into(),
            json!({"username": format!("flood{i}"), "password": "pw",
                   "auth": {"type": "m.login.dummy"}}),
        )
    });
    flood_over.store(true, Ordering::Relaxed);
    let sent = watcher
        .join()
        .expect("requests during the flood were answered");

    let mut refused = 0;
    for (status, body) in &logins {
        match status {
            403 => assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}"),
            429 => {
                assert_429_shape(body);
                refused += 1;
            }
            other => panic!("login answered {other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "40 concurrent logins never overflowed a 1-thread, 2-slot pool"
    );
    let mut registered = 0;
    for (status, body) in &registrations {
        match status {
            200 => registered += 1,
            429 => assert_429_shape(body),
            other => panic!("registration answered {other}: {body}"),
        }
    }
    assert!(registered > 0, "no registration got through");

    // Every message sent during the flood is there.
    let during = alice
        .all_messages(&room, 100, 100)
        .iter()
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("during the flood"))
        })
        .count();
    assert_eq!(during, sent);

    // The pool drains: the right password works again, a wrong one is still refused.
    let mut again = server.anonymous();
    again.login("alice", "pw-alice");
    assert!(!again.user_id.is_empty());
    server
        .anonymous()
        .post("/login", &login_body("alice", "wrong"))
        .expect_err(403, "M_FORBIDDEN");
    alice.login("alice", "pw-alice");
    server.assert_no_panics();
}

/// A login for a user that does not exist must wait in the same queue as a real check: a
/// flood of them overflows the pool just the same (and is never answered faster than a
/// check would take, which is what would let an attacker tell accounts apart).
fn unknown_users_queue_like_known_ones(backend: Backend) {
    let server = small_pool_server(backend);
    let answers = burst(&server, 40, |i| {
        ("/login".into(), login_body(&format!("nobody{i}"), "pw"))
    });
    let mut refused = 0;
    for (status, body) in &answers {
        match status {
            403 => assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}"),
            429 => {
                assert_429_shape(body);
                refused += 1;
            }
            other => panic!("login answered {other}: {body}"),
        }
    }
    assert!(
        refused > 0,
        "logins of unknown users never reached the password pool"
    );
    server.assert_no_panics();
}

/// A hash made with other parameters keeps working, and is replaced by one with the
/// configured parameters at the next successful login.
fn outdated_hashes_are_upgraded_on_login(backend: Backend) {
    let mut server = Server::start_with(
        backend,
        Options {
            extra_toml: "[passwords]\nmemory_kib = 1024\niterations = 1\n".into(),
            ..Options::default()
        },
    );
    server.register("carol");
    let carol = format!("@carol:{}", server.server_name);
    // Raise the parameters and restart: the old hash must still log in.
    server.stop();
    server.set_extra_toml("[passwords]\nmemory_kib = 2048\niterations = 2\n");
    server.start_again();
    let before = server.password_hash(&carol);
    assert!(before.contains("m=1024,t=1"), "{before}");
    let mut c = Client::new(&server.base);
    c.login("carol", "pw-carol");
    let after = server.password_hash(&carol);
    assert!(after.contains("m=2048,t=2"), "not upgraded: {after}");
    c.login("carol", "pw-carol");
    server
        .anonymous()
        .post("/login", &login_body("carol", "wrong"))
        .expect_err(403, "M_FORBIDDEN");
}
