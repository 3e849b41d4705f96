//! Catching peers up after outages (issue 15, and the bounded-queue part of issue 9):
//!
//! * real Synapse stopped for 240 s while weft sends, restarted: everything arrives within
//!   5 s of its return, found by weft's liveness probe (Synapse never contacts weft first);
//! * 200 dead destinations (loopback listeners that count connections) cost at most the
//!   probe budget over a minute; the operator's view and reset (admins only);
//! * a weft peer restarted after an outage gets the backlog within 1 s of its first request
//!   (probes off: the sign of life alone wakes the queue); idle destination actors stop and
//!   restart on demand;
//! * catch-up mode: a queue past its bound is compacted to the latest event per room and
//!   the peer pulls the rest with `get_missing_events`.
//!
//! The two long tests (240 s, 60 s) run concurrently with the rest of the suite.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::{Client, enc};
use crate::harness::{Backend, Federation, Options, Server};
use crate::synapse::Synapse;

const WAIT: Duration = Duration::from_secs(60);

both_backends!(catch_up_mode_bounds_the_queue_and_loses_nothing);

/// Production retry timings (the harness default retries every ≤2 s, which would hide
/// any backoff cliff).
const PRODUCTION_RETRIES: &str = "retry_min_ms = 2000\nretry_max_ms = 600000\n\
                                  retry_multiplier = 2.0\nrequest_timeout_ms = 30000\n";

fn weft_with(settings: &str, extra_toml: &str) -> Server {
    weft_on(Backend::Sqlite, settings, extra_toml)
}

fn weft_on(backend: Backend, settings: &str, extra_toml: &str) -> Server {
    Server::start_with(
        backend,
        Options {
            federation: Some(Federation {
                settings: settings.to_owned(),
                ..Default::default()
            }),
            extra_toml: extra_toml.to_owned(),
            ..Default::default()
        },
    )
}

/// Polls `f` every 20 ms until it yields a value; panics with `what` after `within`.
#[track_caller]
fn wait<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wall-clock milliseconds (the servers' timestamps are on the same machine's clock).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Message bodies of a room, oldest first.
fn bodies(c: &Client, room: &str) -> Vec<String> {
    let r = c.get(&format!("/rooms/{}/messages?dir=b&limit=1000", enc(room)));
    let mut out: Vec<String> = r.body["chunk"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.reverse();
    out
}

fn has_all(c: &Client, room: &str, wanted: &[String]) -> bool {
    let have = bodies(c, room);
    wanted.iter().all(|w| have.contains(w))
}

fn membership(c: &Client, room: &str, user: &str) -> Option<String> {
    let r = c.get(&format!(
        "/rooms/{}/state/m.room.member/{}",
        enc(room),
        enc(user)
    ));
    (r.status == 200).then(|| r.body["membership"].as_str().unwrap_or("").to_owned())
}

/// A room on `host`'s server that `guest` (elsewhere) has joined.
fn shared_room(host: &Client, guest: &Client, via: &str) -> String {
    let room = host.create_room(&json!({"preset": "private_chat", "invite": [guest.user_id]}));
    wait("the invite", WAIT, || {
        let s = guest.sync(None, 0, None);
        s["rooms"]["invite"].get(&room).map(|_| ())
    });
    let r = guest.post(
        &format!("/join/{}?server_name={}", enc(&room), enc(via)),
        &json!({}),
    );
    assert_eq!(r.status, 200, "join: {}", r.text);
    wait("the join to reach the host", WAIT, || {
        (membership(host, &room, &guest.user_id).as_deref() == Some("join")).then_some(())
    });
    room
}

/// An admin of `w` (registered with the CLI, logged in over HTTP).
fn admin(w: &Server, localpart: &str) -> Client {
    let (ok, out, err) = w.cli_input(&["register-user", localpart, "--admin"], Some("pw-op\n"));
    assert!(ok, "register-user: {out}{err}");
    let mut c = Client::new(&w.base);
    c.login(localpart, "pw-op");
    c
}

fn destinations(op: &Client) -> Vec<Value> {
    let r = op.get("/_weft/admin/v1/destinations");
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["destinations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn destination(op: &Client, server: &str) -> Option<Value> {
    destinations(op)
        .into_iter()
        .find(|d| d["server_name"] == server)
}

/// Synapse stopped for 240 s while weft keeps sending (production backoff: by the end
/// weft's next full retry would be minutes away), then restarted: every event arrives
/// within 5 s of its return, and it was weft's probe that found it.
#[test]
fn synapse_caught_up_within_seconds_after_240s() {
    let mut syn = Synapse::start();
    let w = weft_with(PRODUCTION_RETRIES, "");
    let op = admin(&w, "operator");
    let alice = syn.register("alice");
    let bob = w.register("bob");
    let room = shared_room(&bob, &alice, &w.server_name);

    // After its restart Synapse must not contact weft first: it would refresh remote
    // profiles (user directory) and send presence, either of which weft rightly takes as
    // a sign of life. Off, so it is weft's probe that has to find it.
    syn.set_extra_yaml("user_directory: {enabled: false}\npresence: {enabled: false}\n");
    // The test reads what arrives through `/sync` (never `/messages`, which could make
    // Synapse backfill from weft: a request to weft, so a sign of life before the probe).
    let filter = json!({"room": {"timeline": {"limit": 100}}}).to_string();
    let mut since = alice.sync(None, 0, Some(&filter))["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    syn.stop();
    let down_at = Instant::now();
    let mut sent = Vec::new();
    // Sends spread over the outage, so failures (and the backoff) keep growing.
    for i in 0..12 {
        let body = format!("while synapse is down {i}");
        bob.send_text(&room, &body);
        sent.push(body);
        std::thread::sleep(Duration::from_secs(19));
    }
    let d = destination(&op, &syn.server_name()).expect("synapse in the destinations view");
    assert_eq!(d["down"], true, "{d}");
    assert!(d["failures"].as_u64().unwrap_or(0) >= 1, "{d}");
    assert!(d["backlog"].as_i64().unwrap_or(0) >= 12, "{d}");
    assert!(d["next_probe_ts"].is_i64(), "{d}");
    let outage = Duration::from_secs(240);
    if let Some(rest) = outage.checked_sub(down_at.elapsed()) {
        std::thread::sleep(rest);
    }
    syn.start_again();
    let back = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    wait("every event on Synapse", WAIT, || {
        let r = alice.sync(Some(&since), 500, Some(&filter));
        if let Some(next) = r["next_batch"].as_str() {
            since = next.to_owned();
        }
        for e in r["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(b) = e["content"]["body"].as_str() {
                seen.insert(b.to_owned());
            }
        }
        sent.iter().all(|b| seen.contains(b)).then_some(())
    });
    let took = back.elapsed();
    eprintln!(
        "synapse caught up {took:?} after its return (outage {:?})",
        down_at.elapsed() - took
    );
    assert!(
        took < Duration::from_secs(5),
        "caught up only after {took:?}"
    );
    let d = wait("the recovery to be recorded", WAIT, || {
        destination(&op, &syn.server_name()).filter(|d| d["failures"] == 0)
    });
    // weft's probe found Synapse by itself: not the backoff timer (10 minutes out), and not
    // a request from Synapse (its user directory and presence are off, and the test reads
    // through /sync, so nothing makes it call weft before weft calls it).
    assert_eq!(
        d["recovered_by"], "probe",
        "recovered by something other than weft's own probe: {d}"
    );
    eprintln!("recovered_by = {}", d["recovered_by"]);
    assert_eq!(d["backlog"], 0, "{d}");
    let since_probe =
        |k: &str| d[k].as_i64().unwrap_or(0) - d["recovery_signal_ts"].as_i64().unwrap_or(0);
    eprintln!(
        "after the probe answered: backlog sent {} ms later, delivered {} ms later",
        since_probe("recovery_sent_ts"),
        since_probe("recovered_ts"),
    );
    w.assert_no_panics();
}

/// Loopback listeners that accept and drop connections, counting them per listener.
struct DeadPeers {
    ports: Vec<u16>,
    counts: Arc<Vec<AtomicUsize>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeadPeers {
    fn start(n: usize) -> DeadPeers {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| {
                let l = TcpListener::bind("127.0.0.1:0").expect("bind");
                l.set_nonblocking(true).expect("nonblocking");
                l
            })
            .collect();
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        let counts: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&counts), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (i, l) in listeners.iter().enumerate() {
                    while let Ok((conn, _)) = l.accept() {
                        c[i].fetch_add(1, Ordering::Relaxed);
                        drop(conn);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        DeadPeers {
            ports,
            counts,
            stop,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for DeadPeers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// 200 destinations that never come back cost at most the probe budget: over a minute,
/// the connections they receive stay within `probe_per_second × 60` (and the prober does
/// spend its budget, spread over all of them). The operator's view lists them; its reset
/// is for admins and sends at once.
#[test]
fn dead_destinations_cost_only_the_probe_budget() {
    const N: usize = 200;
    const RATE: f64 = 2.0;
    let peers = DeadPeers::start(N);
    let w = weft_with(
        &format!(
            "{PRODUCTION_RETRIES}probe_per_second = {RATE}\nprobe_interval_ms = 1000\nprobe_timeout_ms = 1000\n"
        ),
        "",
    );
    let op = admin(&w, "operator");
    let bob = w.register("bob");
    // One to-device message to a user on each dead server queues an EDU for each.
    let mut messages = serde_json::Map::new();
    for p in &peers.ports {
        messages.insert(
            format!("@u:localhost:{p}"),
            json!({"*": {"hello": "anyone?"}}),
        );
    }
    let r = bob.put(
        &format!("/sendToDevice/org.weft.test/{}", bob.next_txn()),
        &json!({"messages": messages}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // Each destination's first transaction fails (the listener drops the connection).
    wait("all 200 destinations to be down", WAIT, || {
        let down = destinations(&op)
            .iter()
            .filter(|d| d["down"] == true)
            .count();
        (down == N).then_some(())
    });
    let before = peers.counts();
    let probes_before = op.get("/_weft/admin/v1/destinations").body["probes_sent"]
        .as_u64()
        .unwrap_or(0);
    let window = Duration::from_secs(60);
    std::thread::sleep(window);
    let after = peers.counts();
    let probes_after = op.get("/_weft/admin/v1/destinations").body["probes_sent"]
        .as_u64()
        .unwrap_or(0);
    let per_peer: Vec<usize> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: usize = per_peer.iter().sum();
    let budget = (RATE * window.as_secs_f64()) as usize;
    eprintln!(
        "{N} dead destinations: {total} connections in {window:?} (budget {budget}), \
         {} probes counted by weft, at most {} to one destination",
        probes_after - probes_before,
        per_peer.iter().max().unwrap_or(&0)
    );
    // Within the budget (one tick of slack at each end of the window)...
    assert!(total <= budget + 2, "{total} connections > budget {budget}");
    // ...and the budget is actually used (probes run), spread over the destinations.
    assert!(total >= budget / 2, "only {total} probes in {window:?}");
    assert!(
        per_peer.iter().all(|n| *n <= 2),
        "probes not spread: {per_peer:?}"
    );

    // The operator's view and reset: admins only, Matrix errors.
    let first = format!("localhost:{}", peers.ports[0]);
    let r = bob.get("/_weft/admin/v1/destinations");
    r.expect_err(403, "M_FORBIDDEN");
    let r = bob.post(
        &format!("/_weft/admin/v1/destinations/{}/reset", enc(&first)),
        &json!({}),
    );
    r.expect_err(403, "M_FORBIDDEN");
    let r = op.post(
        "/_weft/admin/v1/destinations/nowhere.invalid/reset",
        &json!({}),
    );
    r.expect_err(404, "M_NOT_FOUND");
    let r = op.post(
        &format!("/_weft/admin/v1/destinations/{}/reset", enc("not a name")),
        &json!({}),
    );
    r.expect_err(400, "M_INVALID_PARAM");
    let d = destination(&op, &first).expect("listed");
    assert_eq!(d["backlog"], 1, "{d}");
    let seen = peers.counts()[0];
    let r = op.post(
        &format!("/_weft/admin/v1/destinations/{}/reset", enc(&first)),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    // The reset sends at once (and fails again: the peer is still dead).
    wait(
        "the reset's transaction attempt",
        Duration::from_secs(10),
        || (peers.counts()[0] > seen).then_some(()),
    );
    w.assert_no_panics();
}

/// A weft peer restarted after an outage gets the backlog within 1 s of its first request
/// to us — with probes off and a backoff of minutes, so it is that request that wakes the
/// queue. Idle destination actors then stop, and restart when there is new work.
#[test]
fn restarted_weft_peer_gets_the_backlog_on_its_first_request() {
    let a = weft_with(
        "retry_min_ms = 120000\nretry_max_ms = 600000\nprobe_per_second = 0\n",
        "[actors]\ndestination_idle_secs = 1\n",
    );
    let mut b = weft_with("", "");
    let op = admin(&a, "operator");
    let alice = a.register("alice");
    let bob = b.register("bob");
    let room = shared_room(&alice, &bob, &a.server_name);

    b.stop();
    let sent: Vec<String> = (0..10).map(|i| format!("backlog {i}")).collect();
    for body in &sent {
        alice.send_text(&room, body);
    }
    wait("b to be down", WAIT, || {
        destination(&op, &b.server_name)
            .filter(|d| d["down"] == true && d["backlog"].as_i64() >= Some(10))
    });
    b.start_again();
    // b's first request to a: the transaction carrying bob's message.
    let first_request = Instant::now();
    bob.send_text(&room, "bob is back");
    wait("the backlog on b", WAIT, || {
        has_all(&bob, &room, &sent).then_some(())
    });
    let (arrived, total) = (wall_ms(), first_request.elapsed());
    let d = wait("the recovery to be recorded", WAIT, || {
        destination(&op, &b.server_name).filter(|d| d["failures"] == 0)
    });
    assert_eq!(d["recovered_by"], "contact", "{d}");
    // From b's first request reaching a (the sign of life a recorded) to the backlog
    // visible to b's client.
    let ms = |k: &str| d[k].as_i64().unwrap_or_else(|| panic!("{k} in {d}"));
    let signal = ms("recovery_signal_ts");
    let on_the_wire = Duration::from_millis((ms("recovery_sent_ts") - signal).max(0) as u64);
    let visible = Duration::from_millis((arrived - signal).max(0) as u64);
    eprintln!(
        "restarted peer: its first request reached us, {on_the_wire:?} later the 10-event \
         backlog was on its way, {visible:?} later its client saw all of it ({total:?} after \
         bob's send)"
    );
    // The sender's part: the whole backlog goes out at once. The receiver's part (checking
    // and storing 10 PDUs on a loaded debug build) gets a margin.
    assert!(
        on_the_wire < Duration::from_secs(1),
        "backlog sent after {on_the_wire:?}: {d}"
    );
    assert!(
        visible < Duration::from_secs(5),
        "backlog visible after {visible:?}: {d}"
    );

    // Idle: the actor stops (and is listed as inactive)...
    wait("b's destination actor to stop", WAIT, || {
        let v = op.get("/_weft/admin/v1/destinations").body;
        let listed = v["destinations"].as_array().and_then(|a| {
            a.iter()
                .find(|d| d["server_name"] == b.server_name.as_str())
                .cloned()
        });
        (listed.is_none_or(|d| d["active"] == false) && v["active_actors"] == 0).then_some(())
    });
    // ...and starts again for new work.
    alice.send_text(&room, "after the idle stop");
    wait("the message after the idle stop", WAIT, || {
        has_all(&bob, &room, &["after the idle stop".to_owned()]).then_some(())
    });
    a.assert_no_panics();
    b.assert_no_panics();
}

/// A destination whose queue passes `catchup_max_queue` switches to catch-up mode: its
/// queue shrinks to the latest event per room while it is away, and on its return it
/// pulls the rest with `get_missing_events`, so nothing is lost. (The queue's server on
/// both databases.)
fn catch_up_mode_bounds_the_queue_and_loses_nothing(backend: Backend) {
    let a = weft_on(
        backend,
        "catchup_max_queue = 10\nprobe_per_second = 20\nprobe_interval_ms = 300\n",
        "",
    );
    let mut b = weft_with("", "");
    let op = admin(&a, "operator");
    let alice = a.register("alice");
    let bob = b.register("bob");
    let room = shared_room(&alice, &bob, &a.server_name);

    b.stop();
    let sent: Vec<String> = (0..25).map(|i| format!("long outage {i}")).collect();
    for body in &sent {
        alice.send_text(&room, body);
    }
    let d = wait("catch-up mode with a compacted queue", WAIT, || {
        destination(&op, &b.server_name)
            .filter(|d| d["catch_up"] == true && d["backlog"].as_i64().is_some_and(|n| n <= 3))
    });
    eprintln!("in catch-up mode: {d}");
    b.start_again();
    wait(
        "every event on b, pulled with get_missing_events",
        WAIT,
        || has_all(&bob, &room, &sent).then_some(()),
    );
    let d = wait("catch-up mode to end", WAIT, || {
        destination(&op, &b.server_name).filter(|d| d["catch_up"] == false && d["backlog"] == 0)
    });
    assert_eq!(d["failures"], 0, "{d}");
    a.assert_no_panics();
    b.assert_no_panics();
}
