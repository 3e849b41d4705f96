//! `bench-ingest`: stored PDUs per second through `/send` from K origin servers at once.
//!
//! K peers (each its own `localhost:PORT` server name and its own ed25519 key) join R fresh
//! public rooms on each target (created there by a local user). Per run, every origin builds
//! and signs `txns` transactions of 50 `m.room.message` PDUs *before* the clock starts: PDU
//! n of an origin goes to room `n mod R`, on that origin's own chain in that room (each
//! origin's chain starts from the room's tip as the origin sees it, so with K > 1 the
//! chains are concurrent forks). Then the K origins send at once, each with **one
//! transaction in flight** (the next goes when the previous one is answered), as the spec
//! expects of a sending server.
//!
//! Measured: *acked* — until every origin's last answer; *stored* — until the newest PDU
//! of every (origin, room) chain is readable by the local user through the client API
//! (`GET /rooms/{room}/event/{id}`, which never fetches remotely), then every PDU of the
//! run is looked up and only the readable ones count. A server that answers 200 before it
//! stores (or drops part of a backlog) is measured by what it kept.
//!
//! Runs alternate between the targets so that load on the machine affects them alike.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ruma::OwnedEventId;
use serde_json::{Value, json};
use weft_protocol::builder::EventDraft;

use crate::bench::{
    SignedTxn, Target, join_senders, median, put_txn, readable_note, run_cell, wait_readable,
};
use crate::client::ClientApi;
use crate::peer::{FedClient, enc, now_ms};
use crate::{Error, Peer, PeerOptions, Result};

#[derive(Debug, Clone)]
pub struct Options {
    /// Origin servers (K), on ports `base_port..base_port + K`.
    pub origins: usize,
    pub base_port: u16,
    /// Rooms per setting (comma list on the command line, e.g. 1,100).
    pub rooms: Vec<usize>,
    /// Transactions per origin and run.
    pub txns: usize,
    pub pdus_per_txn: usize,
    pub runs: usize,
    pub timeout: Duration,
    pub poll_max: Duration,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub target: String,
    pub rooms: usize,
    pub run: usize,
    pub pdus: usize,
    pub acked: Duration,
    pub visible: Option<Duration>,
    pub stored: usize,
    pub retried_429: usize,
    pub failed: Option<String>,
}

impl Sample {
    pub fn stored_rate(&self) -> f64 {
        match (&self.failed, self.visible) {
            (None, Some(v)) => self.stored as f64 / v.as_secs_f64(),
            _ => 0.0,
        }
    }
    pub fn acked_rate(&self) -> f64 {
        match self.failed {
            None => self.pdus as f64 / self.acked.as_secs_f64(),
            Some(_) => 0.0,
        }
    }
    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target, "rooms": self.rooms, "run": self.run, "pdus": self.pdus,
            "acked_ms": self.acked.as_secs_f64() * 1000.0,
            "visible_ms": self.visible.map(|v| v.as_secs_f64() * 1000.0),
            "stored": self.stored, "stored_pdus_per_s": self.stored_rate(),
            "acked_pdus_per_s": self.acked_rate(), "retried_429": self.retried_429,
            "failed": self.failed,
        })
    }
}

/// One target with its rooms joined by every origin.
struct Joined {
    target: Target,
    rooms: Vec<String>,
    client: ClientApi,
    /// Per origin: its connection to the target.
    feds: Vec<FedClient>,
}

struct Txn {
    signed: SignedTxn,
    /// The room (index into [`Joined::rooms`]) of each of `signed.event_ids`.
    rooms: Vec<usize>,
}

/// Starts K peers.
pub fn start_origins(opts: &Options) -> Result<Vec<Peer>> {
    (0..opts.origins)
        .map(|i| {
            let port = opts
                .base_port
                .checked_add(i as u16)
                .ok_or_else(|| Error(format!("port {} + {i} is out of range", opts.base_port)))?;
            Peer::start_with(
                port,
                PeerOptions {
                    timeout: opts.timeout,
                },
            )
        })
        .collect()
}

fn setup(
    peers: &[Peer],
    target: &Target,
    rooms: usize,
    opts: &Options,
    log: &mut impl FnMut(&str),
) -> Result<Joined> {
    let started = Instant::now();
    let mut client = ClientApi::new(&target.client_base, opts.timeout)?.with_token(&target.token);
    let mut feds: Vec<FedClient> = peers
        .iter()
        .map(|p| p.client(&target.server_name))
        .collect::<Result<_>>()?;
    let mut ids = Vec::with_capacity(rooms);
    for r in 0..rooms {
        let room_id = client.create_room(&json!({
            "preset": "public_chat",
            "name": format!("fedpeer ingest {} {r}", target.name),
        }))?;
        let mut last_join = None;
        for (peer, fed) in peers.iter().zip(feds.iter_mut()) {
            last_join = Some(peer.join(fed, &room_id, "ingest")?);
        }
        if let Some(join) = last_join {
            let deadline = Instant::now() + opts.timeout;
            if !wait_readable(
                &mut client,
                &room_id,
                join.event_id().as_str(),
                deadline,
                opts.poll_max,
            )? {
                return Err(Error(format!(
                    "{}: a join never became readable",
                    target.name
                )));
            }
        }
        ids.push(room_id);
    }
    log(&format!(
        "{}: {rooms} rooms created and joined by {} origins in {:.1} s",
        target.name,
        peers.len(),
        started.elapsed().as_secs_f64()
    ));
    let mut joined = Joined {
        target: target.clone(),
        rooms: ids,
        client,
        feds,
    };
    // Warm-up, not measured: every origin sends one transaction (the target fetches each
    // origin's key here).
    let warm = run_once(
        peers,
        &mut joined,
        &Options {
            txns: 1,
            ..opts.clone()
        },
        0,
    )?;
    log(&format!(
        "{}: warm-up of {} PDUs stored {}/{}",
        target.name, warm.pdus, warm.stored, warm.pdus
    ));
    Ok(joined)
}

/// The newest PDU of one chain: its room and event ID.
type Tip = (String, OwnedEventId);

/// Builds and signs one origin's transactions for a run.
fn prepare(
    peer: &Peer,
    fed: &FedClient,
    rooms: &[String],
    opts: &Options,
    tag: &str,
    counter: &mut usize,
) -> Result<(Vec<Txn>, Vec<Tip>)> {
    let origin = peer.server_name().to_owned();
    let mut tips: Vec<Option<OwnedEventId>> = vec![None; rooms.len()];
    let mut txns = Vec::with_capacity(opts.txns);
    for t in 0..opts.txns {
        let mut pdus = Vec::with_capacity(opts.pdus_per_txn);
        let mut ids = Vec::with_capacity(opts.pdus_per_txn);
        let mut in_rooms = Vec::with_capacity(opts.pdus_per_txn);
        for _ in 0..opts.pdus_per_txn {
            let r = *counter % rooms.len();
            *counter += 1;
            let mut draft = EventDraft::new(
                "m.room.message",
                peer.user("ingest"),
                json!({"msgtype": "m.text", "body": format!("ingest {origin} {t} {counter}")}),
            );
            draft.origin_server_ts = now_ms();
            let prevs: Option<Vec<OwnedEventId>> = tips[r].clone().map(|t| vec![t]);
            let pdu = peer
                .with_room(&rooms[r], |room| {
                    let pdu = room.build(&draft, prevs.as_deref(), &origin, peer.key())?;
                    room.append(pdu.clone());
                    Ok::<_, String>(pdu)
                })?
                .map_err(Error)?;
            tips[r] = Some(pdu.owned_event_id());
            ids.push(pdu.owned_event_id());
            in_rooms.push(r);
            pdus.push(pdu.to_federation_value());
        }
        let body = fed.transaction_body(pdus, Vec::new());
        let path = format!("/_matrix/federation/v1/send/{}", enc(&format!("{tag}-{t}")));
        let auth = fed.authorization("PUT", &path, Some(&body))?;
        txns.push(Txn {
            signed: SignedTxn {
                path,
                auth,
                body: body.to_string().into_bytes(),
                event_ids: ids,
            },
            rooms: in_rooms,
        });
    }
    let tips = tips
        .into_iter()
        .enumerate()
        .filter_map(|(r, t)| t.map(|t| (rooms[r].clone(), t)))
        .collect();
    Ok((txns, tips))
}

/// Sends one origin's transactions, one in flight; returns the 429s retried.
fn send_all(fed: &mut FedClient, txns: &[Txn], deadline: Instant) -> Result<usize> {
    let mut retried = 0;
    for txn in txns {
        retried += put_txn(fed, &txn.signed, deadline)?;
    }
    Ok(retried)
}

fn run_once(peers: &[Peer], joined: &mut Joined, opts: &Options, run: usize) -> Result<Sample> {
    let tag = format!("ingest{}-{}-{run}", now_ms(), joined.rooms.len());
    let mut all: Vec<Vec<Txn>> = Vec::new();
    let mut tips: Vec<Tip> = Vec::new();
    for (i, (peer, fed)) in peers.iter().zip(joined.feds.iter()).enumerate() {
        // Each origin starts at another room, so the first PDUs of a run spread out.
        let mut counter = i;
        let (txns, t) = prepare(peer, fed, &joined.rooms, opts, &tag, &mut counter)?;
        all.push(txns);
        tips.extend(t);
    }
    let deadline = Instant::now() + opts.timeout;
    let start = Instant::now();
    let retried = std::thread::scope(|s| {
        let handles: Vec<_> = joined
            .feds
            .iter_mut()
            .zip(all.iter())
            .map(|(fed, txns)| s.spawn(move || send_all(fed, txns, deadline)))
            .collect();
        join_senders(handles)
    });
    let acked = start.elapsed();
    let retried = retried?;
    let mut all_visible = true;
    for (room, tip) in &tips {
        all_visible &= wait_readable(
            &mut joined.client,
            room,
            tip.as_str(),
            deadline,
            opts.poll_max,
        )?;
    }
    let visible = all_visible.then(|| start.elapsed());
    // Outside the timing: which PDUs can the local user read (each event ID once)?
    let mut stored = 0;
    let mut seen = HashSet::new();
    for txn in all.iter().flatten() {
        for (id, &r) in txn.signed.event_ids.iter().zip(&txn.rooms) {
            if seen.insert(id.clone())
                && joined
                    .client
                    .event(&joined.rooms[r], id.as_str())?
                    .is_some()
            {
                stored += 1;
            }
        }
    }
    Ok(Sample {
        target: joined.target.name.clone(),
        rooms: joined.rooms.len(),
        run,
        pdus: seen.len(),
        acked,
        visible,
        stored,
        retried_429: retried,
        failed: None,
    })
}

/// Runs every setting against every target; runs interleaved across targets.
pub fn run(
    peers: &[Peer],
    targets: &[Target],
    opts: &Options,
    mut log: impl FnMut(&str),
) -> Result<Vec<Sample>> {
    if opts.pdus_per_txn == 0 || opts.pdus_per_txn > 50 || opts.txns == 0 || opts.runs == 0 {
        return Err(Error(
            "need 1..=50 PDUs per transaction, txns > 0, runs > 0".into(),
        ));
    }
    if peers.is_empty() || opts.rooms.contains(&0) {
        return Err(Error("need at least one origin and one room".into()));
    }
    let mut samples = Vec::new();
    for &rooms in &opts.rooms {
        let mut joined = Vec::new();
        for t in targets {
            joined.push(setup(peers, t, rooms, opts, &mut log)?);
        }
        for run in 1..=opts.runs {
            for j in joined.iter_mut() {
                let s = run_once(peers, j, opts, run).unwrap_or_else(|e| {
                    log(&format!(
                        "{} rooms={rooms} run {run}: FAILED: {e}",
                        j.target.name
                    ));
                    Sample {
                        target: j.target.name.clone(),
                        rooms,
                        run,
                        pdus: 0,
                        acked: Duration::ZERO,
                        visible: None,
                        stored: 0,
                        retried_429: 0,
                        failed: Some(e.to_string()),
                    }
                });
                if s.failed.is_none() {
                    log(&format!(
                        "{} origins={} rooms={rooms} run {run}: {} PDUs acked in {:.0} ms, readable {}, stored {}/{}, 429s {}",
                        s.target,
                        peers.len(),
                        s.pdus,
                        s.acked.as_secs_f64() * 1000.0,
                        readable_note(s.visible, s.stored_rate()),
                        s.stored,
                        s.pdus,
                        s.retried_429
                    ));
                }
                samples.push(s);
            }
        }
    }
    Ok(samples)
}

/// A markdown table: medians per room count and target, and the first target's ratio to
/// each other one.
pub fn summary(samples: &[Sample], targets: &[Target], opts: &Options) -> String {
    let mut out = format!(
        "{} origins, one transaction in flight each; {} runs x {} transactions x {} PDUs per origin; medians\n\n",
        opts.origins, opts.runs, opts.txns, opts.pdus_per_txn
    );
    out.push_str("| rooms | server | stored/s | acked/s | stored/s per run | stored PDUs | 429s retried | failed runs |\n|---|---|---|---|---|---|---|---|\n");
    let mut ratios = Vec::new();
    for &rooms in &opts.rooms {
        let mut medians = Vec::new();
        for t in targets {
            let mine: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.target == t.name && s.rooms == rooms)
                .collect();
            let stored: Vec<f64> = mine.iter().map(|s| s.stored_rate()).collect();
            let acked: Vec<f64> = mine.iter().map(|s| s.acked_rate()).collect();
            let per_run: Vec<String> = mine
                .iter()
                .map(|s| run_cell(&s.failed, s.visible, s.stored_rate()))
                .collect();
            let failed = mine
                .iter()
                .filter(|s| s.failed.is_some() || s.visible.is_none())
                .count();
            out.push_str(&format!(
                "| {rooms} | {} | {:.0} | {:.0} | {} | {}/{} | {} | {failed}/{} |\n",
                t.name,
                median(&stored),
                median(&acked),
                per_run.join(", "),
                mine.iter().map(|s| s.stored).sum::<usize>(),
                mine.iter().map(|s| s.pdus).sum::<usize>(),
                mine.iter().map(|s| s.retried_429).sum::<usize>(),
                mine.len()
            ));
            medians.push((t.name.clone(), median(&stored)));
        }
        if let Some((first, v0)) = medians.first().cloned() {
            for (name, v) in medians.iter().skip(1) {
                ratios.push(format!(
                    "{rooms} rooms: {first}/{name} = {:.1}x stored/s",
                    v0 / v
                ));
            }
        }
    }
    out.push('\n');
    for r in ratios {
        out.push_str(&format!("- {r}\n"));
    }
    out
}
