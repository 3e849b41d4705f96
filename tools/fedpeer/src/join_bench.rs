//! `bench-join`: how long a local user of the server under test takes to join a big room
//! hosted by the peer (see [`crate::big_room`]), through its own client API.
//!
//! Every room is built and signed before any timing (one room per target and run, so every
//! join is into a room the target has never seen). Per run and target, in turn (runs
//! alternate between the targets so that background load affects them alike):
//!
//! * **join**: `POST /_matrix/client/v3/join/{room}?server_name=<peer>` until it answers
//!   200 (the target did `make_join`, `send_join`, checked and stored the answer);
//! * **send**: then `PUT /rooms/{room}/send/m.room.message/{txn}` until the first 200
//!   (retried every 5 ms while refused), counted from the start of the join;
//! * **full state**: then `GET /rooms/{room}/joined_members` until it lists every member
//!   (creator, N members, the joining user), counted from the start of the join (with a
//!   partial-state join the members arrive after the join answered);
//! * **delivered**: the message reached the peer (`/send` from the target), counted from
//!   the start of the join.
//!
//! A run that fails or times out is reported as failed, not dropped.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bench::{Target, median};
use crate::client::ClientApi;
use crate::peer::{enc, now_ms};
use crate::{Error, Peer, Result};

#[derive(Debug, Clone)]
pub struct Options {
    /// Joined members of each room (besides its creator).
    pub members: usize,
    /// Measured runs per target.
    pub runs: usize,
    /// Bound on each request and on each wait.
    pub timeout: Duration,
}

/// One measured join.
#[derive(Debug, Clone)]
pub struct Sample {
    pub target: String,
    pub run: usize,
    pub join: Option<Duration>,
    pub send: Option<Duration>,
    pub full_state: Option<Duration>,
    pub delivered: Option<Duration>,
    pub failed: Option<String>,
}

impl Sample {
    pub fn to_json(&self) -> Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        json!({
            "target": self.target,
            "run": self.run,
            "join_ms": ms(self.join),
            "send_ms": ms(self.send),
            "full_state_ms": ms(self.full_state),
            "delivered_ms": ms(self.delivered),
            "failed": self.failed,
        })
    }
}

fn joined_count(client: &mut ClientApi, room_id: &str) -> Result<Option<usize>> {
    let r = client.call(
        "GET",
        &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room_id)),
        None,
    )?;
    if r.status != 200 {
        return Ok(None);
    }
    Ok(r.json()
        .get("joined")
        .and_then(|j| j.as_object())
        .map(|j| j.len()))
}

fn join_once(
    peer: &Peer,
    target: &Target,
    room_id: &str,
    run: usize,
    opts: &Options,
    sample: &mut Sample,
) -> Result<()> {
    let mut client = ClientApi::new(&target.client_base, opts.timeout)?.with_token(&target.token);
    let deadline = Instant::now() + opts.timeout;
    let start = Instant::now();
    let r = client.call(
        "POST",
        &format!(
            "/_matrix/client/v3/join/{}?server_name={}",
            enc(room_id),
            enc(peer.server_name())
        ),
        Some(&json!({})),
    )?;
    if r.status != 200 {
        return Err(Error(format!("join: {} {}", r.status, r.text())));
    }
    sample.join = Some(start.elapsed());
    let event_id = loop {
        let r = client.call(
            "PUT",
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/bj{}-{run}",
                enc(room_id),
                now_ms()
            ),
            Some(&json!({"msgtype": "m.text", "body": "hello, big room"})),
        )?;
        if r.status == 200 {
            break r
                .json()
                .get("event_id")
                .and_then(|e| e.as_str())
                .and_then(|e| ruma::OwnedEventId::try_from(e).ok())
                .ok_or_else(|| Error("send answered without an event_id".into()))?;
        }
        if Instant::now() >= deadline {
            return Err(Error(format!("send: {} {}", r.status, r.text())));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    sample.send = Some(start.elapsed());
    let want = opts.members + 2;
    loop {
        if joined_count(&mut client, room_id)? == Some(want) {
            sample.full_state = Some(start.elapsed());
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error(format!("joined_members never listed {want} members")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    loop {
        if peer.with_room(room_id, |r| r.event(&event_id).is_some())? {
            sample.delivered = Some(start.elapsed());
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error(format!("{event_id} never reached the peer")));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Builds the rooms, then measures every target `opts.runs` times.
pub fn run(
    peer: &Peer,
    targets: &[Target],
    opts: &Options,
    log: impl Fn(&str),
) -> Result<Vec<Sample>> {
    let count = targets.len() * opts.runs;
    let built = Instant::now();
    let rooms = peer.create_big_rooms(count, opts.members)?;
    log(&format!(
        "built {count} rooms of {} members ({} signed events) in {:.1} s",
        opts.members,
        count * (opts.members + 6),
        built.elapsed().as_secs_f64()
    ));
    let mut samples = Vec::new();
    for run in 0..opts.runs {
        for (t, target) in targets.iter().enumerate() {
            let room_id = &rooms[run * targets.len() + t];
            let mut sample = Sample {
                target: target.name.clone(),
                run,
                join: None,
                send: None,
                full_state: None,
                delivered: None,
                failed: None,
            };
            if let Err(e) = join_once(peer, target, room_id, run, opts, &mut sample) {
                sample.failed = Some(e.to_string());
            }
            log(&format!("{}", sample.to_json()));
            samples.push(sample);
        }
    }
    Ok(samples)
}

/// The medians as a Markdown table, then the ratios of the first target to the others.
pub fn summary(samples: &[Sample], targets: &[Target], opts: &Options) -> String {
    let mut out = format!(
        "a local user joins a room of {} members hosted by fedpeer; {} runs per server; medians in ms from the start of the join\n\n",
        opts.members, opts.runs
    );
    out.push_str(
        "| server | join answered | first send accepted | full state listed | message at the host | join per run | failed runs |\n|---|---|---|---|---|---|---|\n",
    );
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN);
    let mut medians = Vec::new();
    for t in targets {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.target == t.name).collect();
        let col = |f: fn(&Sample) -> Option<Duration>| {
            median(&mine.iter().map(|s| ms(f(s))).collect::<Vec<_>>())
        };
        let per_run: Vec<String> = mine
            .iter()
            .map(|s| match (&s.failed, s.join) {
                (Some(_), _) | (None, None) => "failed".into(),
                (None, Some(j)) => format!("{:.0}", j.as_secs_f64() * 1000.0),
            })
            .collect();
        let failed = mine.iter().filter(|s| s.failed.is_some()).count();
        let join = col(|s| s.join);
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {failed}/{} |\n",
            t.name,
            join,
            col(|s| s.send),
            col(|s| s.full_state),
            col(|s| s.delivered),
            per_run.join(", "),
            mine.len()
        ));
        medians.push((t.name.clone(), col(|s| s.send)));
    }
    out.push('\n');
    if let Some((first, v0)) = medians.first().cloned() {
        for (name, v) in medians.iter().skip(1) {
            out.push_str(&format!(
                "- until the first send: {name}/{first} = {:.1}x\n",
                v / v0
            ));
        }
    }
    for s in samples.iter().filter(|s| s.failed.is_some()) {
        out.push_str(&format!(
            "- {} run {} failed: {}\n",
            s.target,
            s.run,
            s.failed.as_deref().unwrap_or_default()
        ));
    }
    out
}
