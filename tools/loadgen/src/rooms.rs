//! Many-rooms mode (`--rooms N`): client sends spread over many rooms and over one or more
//! homeserver nodes (`--hs` takes a comma list: the nodes of one weft cluster, which share
//! one database, so one access token works on each).
//!
//! Set-up (not measured): one user registers on the first node and creates the rooms, the
//! creations spread round-robin over the nodes; one warm-up message per room (actors loaded,
//! leases taken). Then `--runs` measured phases, each `--messages` sends with `--in-flight`
//! senders: sender `t` talks to node `t mod nodes`, message `i` goes to room `i mod rooms`.
//! Around each phase the tool reads, for every node, the process's CPU time
//! (`/proc/<pid>/stat`, the pids given with `--pids` in node order) and its `/metrics`
//! counters, and reports per phase: messages/s, send latency p50/p99, CPU per message (per
//! node and in all), and the cluster's own work per message (NATS forwards, sequence calls,
//! NATS publications) and per second (lease renewal rounds, leases renewed). An idle phase
//! (`--idle-secs`) measures the same counters with no load: what the cluster machinery
//! costs a node by itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Client, Res, agent, enc, pct};

/// The counters read from each node's `/metrics` (summed over their labels).
const COUNTERS: &[&str] = &[
    "weft_cluster_forwards_total",
    "weft_cluster_forwards_served_total",
    "weft_cluster_lease_renewals_total",
    "weft_cluster_leases_renewed_total",
    "weft_cluster_lease_acquisitions_total",
    "weft_cluster_nats_published_total",
    "weft_cluster_sequence_calls_total",
    "weft_room_events_appended_total",
];

pub struct Opts<'a> {
    pub nodes: &'a [String],
    pub pids: &'a [u32],
    pub rooms: usize,
    pub messages: usize,
    pub in_flight: usize,
    pub runs: usize,
    pub idle_secs: u64,
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// User + system CPU of a process, in milliseconds.
fn cpu_ms(pid: u32) -> Res<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unreadable /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, utime 14, stime 15 (1-based in proc(5)) -> 11, 12 here.
    let num = |i: usize| -> Res<f64> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| "unreadable /proc stat".to_owned())
    };
    Ok((num(11)? + num(12)?) * 1000.0 / ticks_per_second())
}

/// The named counters of a node's `/metrics`, each summed over its label sets.
fn counters(base: &str) -> Res<BTreeMap<String, f64>> {
    let agent = agent();
    let mut resp = agent
        .get(format!("{base}/metrics"))
        .call()
        .map_err(|e| format!("{base}/metrics: {e}"))?;
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{base}/metrics: {e}"))?;
    let mut out: BTreeMap<String, f64> = COUNTERS.iter().map(|c| (c.to_string(), 0.0)).collect();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or("");
        if let Some(v) = out.get_mut(name)
            && let Some(x) = line.rsplit(' ').next().and_then(|x| x.parse::<f64>().ok())
        {
            *v += x;
        }
    }
    Ok(out)
}

struct Snap {
    at: Instant,
    cpu: Vec<f64>,
    counters: Vec<BTreeMap<String, f64>>,
}

fn snap(o: &Opts<'_>) -> Res<Snap> {
    let cpu = o.pids.iter().map(|p| cpu_ms(*p)).collect::<Res<Vec<_>>>()?;
    let counters = o
        .nodes
        .iter()
        .map(|n| counters(n))
        .collect::<Res<Vec<_>>>()?;
    Ok(Snap {
        at: Instant::now(),
        cpu,
        counters,
    })
}

/// What changed between two snapshots, `messages` sends apart (0: idle).
fn delta(a: &Snap, b: &Snap, messages: usize) -> Value {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let cpu: Vec<f64> = a.cpu.iter().zip(&b.cpu).map(|(x, y)| y - x).collect();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut per_node = Vec::new();
    for (x, y) in a.counters.iter().zip(&b.counters) {
        let mut node = serde_json::Map::new();
        for (k, v) in y {
            let d = v - x.get(k).copied().unwrap_or(0.0);
            *sums.entry(k.clone()).or_default() += d;
            node.insert(k.clone(), json!(d));
        }
        per_node.push(Value::Object(node));
    }
    let total_cpu: f64 = cpu.iter().sum();
    let per_msg = |v: f64| {
        if messages > 0 {
            v / messages as f64
        } else {
            f64::NAN
        }
    };
    let get = |k: &str| sums.get(k).copied().unwrap_or(0.0);
    json!({
        "seconds": secs,
        "cpu_ms_per_node": cpu,
        "cpu_ms_total": total_cpu,
        "cpu_ms_per_message": per_msg(total_cpu),
        "cpu_ms_per_second_per_node": cpu.iter().map(|c| c / secs).collect::<Vec<_>>(),
        "forwards_per_message": per_msg(get("weft_cluster_forwards_total")),
        "sequence_calls_per_message": per_msg(get("weft_cluster_sequence_calls_total")),
        "nats_publications_per_message": per_msg(get("weft_cluster_nats_published_total")),
        "events_appended": get("weft_room_events_appended_total"),
        "renewal_rounds_per_second": get("weft_cluster_lease_renewals_total") / secs,
        "leases_renewed_per_second": get("weft_cluster_leases_renewed_total") / secs,
        "nats_publications_per_second": get("weft_cluster_nats_published_total") / secs,
        "counters_per_node": per_node,
    })
}

/// Sends `n` messages, `in_flight` at a time, spread over rooms and nodes.
fn phase(
    clients: &[Client],
    rooms: &[String],
    n: usize,
    in_flight: usize,
    tag: &str,
) -> Res<Value> {
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let results: Vec<Res<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..in_flight.max(1))
            .map(|t| {
                let c = clients[t % clients.len()].fork();
                let next = Arc::clone(&next);
                s.spawn(move || {
                    let mut lat = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= n {
                            return Ok(lat);
                        }
                        let t = Instant::now();
                        c.send(&rooms[i % rooms.len()], &format!("{tag} {i}"))?;
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
    lat.sort();
    Ok(json!({
        "msgs_per_s": n as f64 / elapsed.as_secs_f64(),
        "send_p50_ms": pct(&lat, 50),
        "send_p99_ms": pct(&lat, 99),
    }))
}

pub fn run(o: &Opts<'_>) -> Res<Value> {
    if !o.pids.is_empty() && o.pids.len() != o.nodes.len() {
        return Err("--pids must name one process per node, in node order".into());
    }
    let nonce = std::process::id();
    let first = Client::register(&o.nodes[0], &format!("lgr{nonce}"))?;
    // The same session on every node (the nodes share the database).
    let clients: Vec<Client> = o
        .nodes
        .iter()
        .map(|base| Client {
            agent: agent(),
            base: base.clone(),
            token: first.token.clone(),
        })
        .collect();
    let t = Instant::now();
    let mut rooms = Vec::with_capacity(o.rooms);
    for i in 0..o.rooms {
        let c = &clients[i % clients.len()];
        let room = c.req(
            "POST",
            "/createRoom",
            Some(&json!({"preset": "private_chat", "name": format!("bench {i}")})),
        )?["room_id"]
            .as_str()
            .ok_or("no room_id")?
            .to_owned();
        rooms.push(room);
    }
    let created_s = t.elapsed().as_secs_f64();
    // Warm-up: every room's actor loaded (and leased) once, every connection open.
    phase(&clients, &rooms, rooms.len(), o.in_flight, "warm")?;
    let idle = if o.idle_secs > 0 && !o.pids.is_empty() {
        let a = snap(o)?;
        std::thread::sleep(Duration::from_secs(o.idle_secs));
        let b = snap(o)?;
        delta(&a, &b, 0)
    } else {
        Value::Null
    };
    let mut runs = Vec::new();
    for r in 0..o.runs {
        let a = if o.pids.is_empty() {
            None
        } else {
            Some(snap(o)?)
        };
        let mut v = phase(
            &clients,
            &rooms,
            o.messages,
            o.in_flight,
            &format!("run{r}"),
        )?;
        if let Some(a) = a {
            let b = snap(o)?;
            if let (Value::Object(m), Value::Object(d)) = (&mut v, delta(&a, &b, o.messages)) {
                m.extend(d);
            }
        }
        runs.push(v);
    }
    // A room the senders used, checked: the messages are readable (through the last node).
    let check = clients[clients.len() - 1].req(
        "GET",
        &format!("/rooms/{}/messages?dir=b&limit=5", enc(&rooms[0])),
        None,
    )?;
    if check["chunk"].as_array().is_none_or(|c| c.is_empty()) {
        return Err(format!("{} has no messages after the runs", rooms[0]));
    }
    Ok(json!({
        "mode": "rooms",
        "nodes": o.nodes.len(),
        "rooms": o.rooms,
        "messages": o.messages,
        "in_flight": o.in_flight,
        "rooms_created_s": created_s,
        "idle": idle,
        "runs": runs,
    }))
}
