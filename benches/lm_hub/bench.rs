//! The Linearized Matrix hub benchmark (docs/BENCHMARKS.md, "Linearized Matrix hub"),
//! a benchmark target, never part of the test suite:
//!
//! ```text
//! cargo bench --bench lm_hub
//! ```
//!
//! * **Fan-out**: a weft hub and N fake participants ([`super::peer`]), each with one joined
//!   user. Hub users send M messages (8 senders at once); the clock runs from the first send
//!   until every participant has received every message. Reported: events/s through the
//!   hub and PDUs/s delivered (N × M / time). Two kinds of participant: like the reference
//!   implementation (`m.linearized`: one PDU per transaction) and like a full server
//!   (batched, up to 50 PDUs per transaction).
//! * **Catch-up**: one participant is down (answers 503) while the hub orders K events; it
//!   comes back and contacts the hub (a signed request, which ends the hub's backoff); the
//!   clock runs from that contact until it has received all K.
//!
//! Medians of 5 rounds.

use std::time::{Duration, Instant};

use crate::harness::Backend;
use crate::linearized::harness::{User, Weft, enc};
use crate::linearized::peer::{Peers, UNSTABLE};

const ROUNDS: usize = 5;
const SENDERS: usize = 8;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A hub room with `n` fake participants joined; the hub's senders.
fn setup(n: usize, linearized_only: bool) -> (Weft, Peers, Vec<User>, String) {
    let hub = Weft::start(Backend::Sqlite);
    let peers = Peers::start(n, linearized_only);
    let senders: Vec<User> = (0..SENDERS)
        .map(|i| hub.register(&format!("sender{i}")))
        .collect();
    let room = senders[0].create_lm_room(&[], "public_chat");
    for s in &senders[1..] {
        s.join(&room);
    }
    for name in &peers.names {
        let user = format!("@p:{name}");
        peers.join(name, &hub.name, hub.fed_port, &room, &user);
    }
    (hub, peers, senders, room)
}

/// Waits until each of `names` has received `want` distinct PDUs (duplicates do not count).
fn wait_counts(peers: &Peers, names: &[String], want: &[usize], limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if names.iter().zip(want).all(|(n, w)| peers.distinct(n) >= *w) {
            return Instant::now();
        }
        let have: Vec<usize> = names.iter().map(|n| peers.distinct(n)).collect();
        assert!(
            Instant::now() < deadline,
            "deliveries stalled: have {have:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn fanout(n: usize, linearized_only: bool, m: usize) -> (f64, f64) {
    let (_hub, peers, senders, room) = setup(n, linearized_only);
    let mut event_rates = Vec::new();
    let mut delivery_rates = Vec::new();
    for round in 0..ROUNDS {
        // Let the joins' own fan-out settle.
        std::thread::sleep(Duration::from_millis(300));
        let before: Vec<usize> = peers.names.iter().map(|p| peers.distinct(p)).collect();
        let want: Vec<usize> = before.iter().map(|b| b + m).collect();
        let start = Instant::now();
        std::thread::scope(|s| {
            for (i, u) in senders.iter().enumerate() {
                let room = &room;
                s.spawn(move || {
                    for k in (i..m).step_by(SENDERS) {
                        u.say(room, &format!("r{round} m{k}"));
                    }
                });
            }
        });
        let done = wait_counts(&peers, &peers.names, &want, Duration::from_secs(600));
        let secs = (done - start).as_secs_f64();
        event_rates.push(m as f64 / secs);
        delivery_rates.push((m * n) as f64 / secs);
    }
    (median(event_rates), median(delivery_rates))
}

fn catch_up(linearized_only: bool, k: usize) -> f64 {
    let (hub, peers, senders, room) = setup(10, linearized_only);
    let down = peers.names[0].clone();
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(300));
        let target = peers.distinct(&down) + k;
        let others: Vec<String> = peers.names[1..].to_vec();
        let others_want: Vec<usize> = others.iter().map(|o| peers.distinct(o) + k).collect();
        peers.set_down(&down, true);
        std::thread::scope(|s| {
            for (i, u) in senders.iter().enumerate() {
                let room = &room;
                s.spawn(move || {
                    for j in (i..k).step_by(SENDERS) {
                        u.say(room, &format!("outage {round} {j}"));
                    }
                });
            }
        });
        // Every other participant has received all k: the hub owes only the one that is
        // down, which has received none of them (else the outage was not one).
        wait_counts(&peers, &others, &others_want, Duration::from_secs(600));
        assert_eq!(
            peers.distinct(&down),
            target - k,
            "the participant that is down received events"
        );
        peers.set_down(&down, false);
        let start = Instant::now();
        // Coming back: any signed request tells the hub we are up.
        let path = format!("{UNSTABLE}/backfill/{}?v=%24none&limit=1", enc(&room));
        peers.request(&down, &hub.name, hub.fed_port, "GET", &path, None);
        let done = wait_counts(
            &peers,
            std::slice::from_ref(&down),
            &[target],
            Duration::from_secs(600),
        );
        times.push((done - start).as_secs_f64());
    }
    median(times)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpu}, {cores} cores")
}

/// `WEFT_LM_BENCH_SCALE` (default 1) multiplies the sizes, for quick checks.
fn scaled(n: usize) -> usize {
    let scale: f64 = std::env::var("WEFT_LM_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * scale) as usize).max(1)
}

pub fn bench_hub_fanout() {
    let m = scaled(400);
    println!("machine: {}", machine());
    println!(
        "| participants | participant kind | events | events/s through the hub | PDUs/s delivered |"
    );
    println!("|---|---|---|---|---|");
    for n in [10, 50] {
        for (kind, lin) in [
            ("reference-like (1 PDU/txn)", true),
            ("batching (≤50 PDUs/txn)", false),
        ] {
            let (events, deliveries) = fanout(n, lin, m);
            println!("| {n} | {kind} | {m} | {events:.0} | {deliveries:.0} |");
        }
    }
}

pub fn bench_catch_up() {
    let k = scaled(1000);
    println!("machine: {}", machine());
    println!("| backlog | participant kind | catch-up time (s) | PDUs/s |");
    println!("|---|---|---|---|");
    for (kind, lin) in [
        ("reference-like (1 PDU/txn)", true),
        ("batching (≤50 PDUs/txn)", false),
    ] {
        let t = catch_up(lin, k);
        println!("| {k} | {kind} | {t:.2} | {:.0} |", k as f64 / t);
    }
}
