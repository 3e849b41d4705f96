//! weft-loadgen: measures a running homeserver over its Client-Server API.
//!
//! 1. **Send throughput** of one client (one user, one device, one access token) into one
//!    room: `--messages` `PUT /send` requests issued one after another on one connection
//!    ("sequential"), then the same number with `--in-flight` requests outstanding at any time
//!    (that many threads, each with its own connection, sharing the token). Each request
//!    counts when the server has acknowledged it (weft acknowledges only once the event is
//!    durable). Reports messages/s and the per-request latency p50/p99.
//! 2. **Wake-up latency**: a second user long-polls `/sync` (30 s timeout) in a loop; the
//!    first user sends `--samples` messages, one at a time with a short pause so the
//!    long-poll is parked again. Latency is from just before the send request is issued to
//!    the moment the long-poll returns with that message. Reports p50/p99.
//!
//! The server must allow registration (`m.login.dummy`); each run registers two fresh users
//! and creates a fresh room. Loopback only: the tool refuses non-loopback URLs. Every wait is
//! bounded. `tools/bench.sh` starts a release weft and runs this several times.
//!
//! With `--rooms N` it measures instead sends spread over many rooms and over the nodes of
//! a cluster (`rooms.rs`; `tools/bench_cluster.sh` runs it against one node and three).

mod rooms;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Send throughput and send->/sync wake-up latency against a homeserver")]
struct Args {
    /// Homeserver base URL (loopback only), e.g. http://127.0.0.1:38008; with `--rooms`, a
    /// comma list of the cluster's nodes.
    #[arg(long)]
    hs: String,
    /// Many-rooms mode: this many rooms, sends spread over them and over the `--hs` nodes.
    #[arg(long, default_value_t = 0)]
    rooms: usize,
    /// Many-rooms mode: measured phases of `--messages` sends each.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Many-rooms mode: the nodes' process IDs (comma list, in `--hs` order), for CPU time.
    #[arg(long, default_value = "")]
    pids: String,
    /// Many-rooms mode: seconds of an idle phase measured before the runs (0: none).
    #[arg(long, default_value_t = 0)]
    idle_secs: u64,
    /// Messages per throughput phase.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Requests outstanding at once in the concurrent phase.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Wake-up latency samples.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Pause between wake-up samples, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pause_ms: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

type Res<T> = Result<T, String>;

static TXN: AtomicU64 = AtomicU64::new(0);

#[derive(Clone)]
struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into()
}

fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Res<Value> {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if !token.is_empty() {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req.body(body).map_err(|e| e.to_string())?;
    let mut resp = agent.run(req).map_err(|e| format!("{method} {url}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{method} {url}: {e}"))?;
    if status != 200 {
        return Err(format!("{method} {url}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{method} {url}: {e}"))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    fn register(base: &str, localpart: &str) -> Res<Self> {
        let agent = agent();
        let v = call(
            &agent,
            "POST",
            &format!("{base}/_matrix/client/v3/register"),
            "",
            Some(
                &json!({"username": localpart, "password": format!("pw-{localpart}"),
                         "auth": {"type": "m.login.dummy"}}),
            ),
        )?;
        Ok(Self {
            agent,
            base: base.to_owned(),
            token: v["access_token"]
                .as_str()
                .ok_or("no access_token")?
                .to_owned(),
        })
    }

    /// The same session on its own connection.
    fn fork(&self) -> Self {
        Self {
            agent: agent(),
            ..self.clone()
        }
    }

    fn req(&self, method: &str, path: &str, body: Option<&Value>) -> Res<Value> {
        call(
            &self.agent,
            method,
            &format!("{}/_matrix/client/v3{path}", self.base),
            &self.token,
            body,
        )
    }

    fn send(&self, room: &str, body: &str) -> Res<String> {
        let txn = TXN.fetch_add(1, Ordering::Relaxed);
        let v = self.req(
            "PUT",
            &format!("/rooms/{}/send/m.room.message/lg{txn}", enc(room)),
            Some(&json!({"msgtype": "m.text", "body": body})),
        )?;
        Ok(v["event_id"].as_str().ok_or("no event_id")?.to_owned())
    }

    fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Res<Value> {
        let mut path = format!("/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={}", enc(s)));
        }
        self.req("GET", &path, None)
    }
}

/// p-th percentile (nearest rank) of sorted durations, in milliseconds.
fn pct(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (sorted.len() * p).div_ceil(100).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

struct Phase {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn summarize(n: usize, elapsed: Duration, mut lat: Vec<Duration>) -> Phase {
    lat.sort();
    Phase {
        rate: n as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(&lat, 50),
        p99_ms: pct(&lat, 99),
    }
}

fn sequential(c: &Client, room: &str, n: usize) -> Res<Phase> {
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        c.send(room, &format!("seq {i}"))?;
        lat.push(t.elapsed());
    }
    Ok(summarize(n, t0.elapsed(), lat))
}

fn concurrent(c: &Client, room: &str, n: usize, in_flight: usize) -> Res<Phase> {
    let in_flight = in_flight.max(1);
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let results: Vec<Res<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..in_flight)
            .map(|_| {
                let c = c.fork();
                let next = Arc::clone(&next);
                s.spawn(move || {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= n {
                            return Ok(lat);
                        }
                        let t = Instant::now();
                        c.send(room, &format!("conc {i}"))?;
                        lat.push(t.elapsed());
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("sender thread panicked".into()))
            })
            .collect()
    });
    let elapsed = t0.elapsed();
    let mut lat = Vec::with_capacity(n);
    for r in results {
        lat.extend(r?);
    }
    Ok(summarize(n, elapsed, lat))
}

/// Send -> /sync wake-up latency.
fn wakeup(
    sender: &Client,
    receiver: &Client,
    room: &str,
    samples: usize,
    pause: Duration,
) -> Res<Phase> {
    let mut since = receiver.sync(None, 0)?["next_batch"]
        .as_str()
        .ok_or("no next_batch")?
        .to_owned();
    // The poller reports (body, instant the sync returned) for every message it sees.
    let (tx, rx) = mpsc::channel::<Res<(String, Instant)>>();
    let stop = Arc::new(AtomicU64::new(0));
    let poller = {
        let receiver = receiver.fork();
        let room = room.to_owned();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while stop.load(Ordering::Relaxed) == 0 {
                let r = match receiver.sync(Some(&since), 30_000) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let at = Instant::now();
                if let Some(n) = r["next_batch"].as_str() {
                    since = n.to_owned();
                }
                if let Some(events) = r["rooms"]["join"][&room]["timeline"]["events"].as_array() {
                    for e in events {
                        if let Some(b) = e["content"]["body"].as_str() {
                            let _ = tx.send(Ok((b.to_owned(), at)));
                        }
                    }
                }
            }
        })
    };
    let mut lat = Vec::with_capacity(samples);
    let t0 = Instant::now();
    let mut outcome = Ok(());
    for i in 0..samples {
        std::thread::sleep(pause);
        let body = format!("wake {i}");
        let sent_at = Instant::now();
        if let Err(e) = sender.send(room, &body) {
            outcome = Err(e);
            break;
        }
        // Wait (bounded) for the poller to report this message.
        let deadline = sent_at + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok((b, at))) if b == body => {
                    lat.push(at.saturating_duration_since(sent_at));
                    break;
                }
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => {
                    outcome = Err(e);
                    break;
                }
                Err(_) => {
                    outcome = Err(format!("message {i} never reached the long-poll in 30 s"));
                    break;
                }
            }
        }
        if outcome.is_err() {
            break;
        }
    }
    let elapsed = t0.elapsed();
    // Stop the poller: flag it, then wake its long-poll with one more message.
    stop.store(1, Ordering::Relaxed);
    let _ = sender.send(room, "stop");
    let _ = poller.join();
    outcome?;
    Ok(summarize(samples, elapsed, lat))
}

/// A base URL, checked to be plain HTTP on loopback.
fn loopback(url: &str) -> Res<&str> {
    let url = url.trim_end_matches('/');
    let host = url
        .strip_prefix("http://")
        .ok_or("only plain http:// URLs on loopback")?
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    if host != "localhost" && !host.starts_with("127.") {
        return Err(format!("refusing non-loopback host {host:?}"));
    }
    Ok(url)
}

fn run(a: &Args) -> Res<Value> {
    if a.rooms > 0 {
        let nodes =
            a.hs.split(',')
                .map(|u| loopback(u).map(str::to_owned))
                .collect::<Res<Vec<_>>>()?;
        let pids = a
            .pids
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.trim()
                    .parse::<u32>()
                    .map_err(|e| format!("--pids {p:?}: {e}"))
            })
            .collect::<Res<Vec<_>>>()?;
        return rooms::run(&rooms::Opts {
            nodes: &nodes,
            pids: &pids,
            rooms: a.rooms,
            messages: a.messages,
            in_flight: a.in_flight,
            runs: a.runs,
            idle_secs: a.idle_secs,
        });
    }
    let url = loopback(&a.hs)?;
    let nonce = std::process::id();
    let alice = Client::register(url, &format!("lg{nonce}a"))?;
    let bob = Client::register(url, &format!("lg{nonce}b"))?;
    let room = alice.req(
        "POST",
        "/createRoom",
        Some(&json!({"preset": "public_chat"})),
    )?["room_id"]
        .as_str()
        .ok_or("no room_id")?
        .to_owned();
    bob.req("POST", &format!("/join/{}", enc(&room)), Some(&json!({})))?;
    // Warm-up: connections, the room actor, the database pages.
    for i in 0..50 {
        alice.send(&room, &format!("warm {i}"))?;
    }
    let seq = sequential(&alice, &room, a.messages)?;
    let conc = concurrent(&alice, &room, a.messages, a.in_flight)?;
    let wake = wakeup(
        &alice,
        &bob,
        &room,
        a.samples,
        Duration::from_millis(a.pause_ms),
    )?;
    Ok(json!({
        "messages": a.messages,
        "in_flight": a.in_flight,
        "samples": a.samples,
        "sequential_msgs_per_s": seq.rate,
        "sequential_send_p50_ms": seq.p50_ms,
        "sequential_send_p99_ms": seq.p99_ms,
        "concurrent_msgs_per_s": conc.rate,
        "concurrent_send_p50_ms": conc.p50_ms,
        "concurrent_send_p99_ms": conc.p99_ms,
        "wakeup_p50_ms": wake.p50_ms,
        "wakeup_p99_ms": wake.p99_ms,
    }))
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    match run(&a) {
        Ok(v) if a.json || a.rooms > 0 => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Ok(v) => {
            println!(
                "sequential: {:.0} msg/s (send p50 {:.2} ms, p99 {:.2} ms)\n\
                 {} in flight: {:.0} msg/s (send p50 {:.2} ms, p99 {:.2} ms)\n\
                 send -> /sync wake-up: p50 {:.2} ms, p99 {:.2} ms ({} samples)",
                v["sequential_msgs_per_s"].as_f64().unwrap_or(0.0),
                v["sequential_send_p50_ms"].as_f64().unwrap_or(0.0),
                v["sequential_send_p99_ms"].as_f64().unwrap_or(0.0),
                a.in_flight,
                v["concurrent_msgs_per_s"].as_f64().unwrap_or(0.0),
                v["concurrent_send_p50_ms"].as_f64().unwrap_or(0.0),
                v["concurrent_send_p99_ms"].as_f64().unwrap_or(0.0),
                v["wakeup_p50_ms"].as_f64().unwrap_or(0.0),
                v["wakeup_p99_ms"].as_f64().unwrap_or(0.0),
                a.samples,
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
