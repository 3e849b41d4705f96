//! `bench-send`: signed PDUs per second accepted through `/send` into one room.
//!
//! For each setting (mode × in-flight) and each target server: a local user (given by
//! access token) creates a fresh public room, the peer joins it over federation, one
//! warm-up transaction is sent (the server fetches the peer's key on the first), and then,
//! per run, K transactions of 50 `m.room.message` PDUs are built and signed *before* the
//! clock starts and sent one after the other.
//!
//! Two sending modes:
//! * **open**: the next transaction goes as soon as the previous one is answered (200, no
//!   per-PDU error) — "as fast as the server answers". Measured: until the last answer
//!   (*acked*) and until the newest PDU is readable by the local user (*tip visible*);
//!   afterwards every PDU of the run is looked up and the *persisted* share reported. A
//!   server may answer before it has authorised and stored the PDUs (Synapse stages them,
//!   answers, processes them in the background, and prunes its staging queue when it holds
//!   100 or more events of a room, pulling the gap back with `get_missing_events`): then
//!   acked ≠ ingested.
//! * **closed**: the next transaction goes once the previous one's last PDU is readable
//!   through the client API. Every PDU is stored before more arrive, so the rate is what
//!   the server really ingests. Polling starts at once and backs off from 2 ms to at most
//!   `poll_max` (default 50 ms), so a run may be over-measured by up to that much per
//!   transaction. With N lanes a server may still hold N transactions at once.
//!
//! Visibility is checked with `GET /rooms/{room}/event/{id}` as the local user, which never
//! makes a server fetch anything remotely.
//!
//! With `inflight = N > 1`, the PDUs form N chains (lanes) forked from the room's tip and
//! each lane keeps one transaction in flight on its own connection. A server may refuse
//! concurrent transactions from one origin (429); those are retried after 10 ms and
//! counted. Runs alternate between the targets so that background load on the machine
//! affects them alike.
//!
//! A run that fails (a refused transaction or PDU, an error) or times out is not dropped:
//! it is kept as a sample with rate 0 in the medians, and the summary lists how many runs of
//! each setting failed. *Stored* PDUs are distinct event IDs of the run readable afterwards,
//! so a PDU counts once however often it was sent or answered.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ruma::OwnedEventId;
use serde_json::{Value, json};
use weft_protocol::builder::EventDraft;

use crate::client::ClientApi;
use crate::peer::{FedClient, enc, now_ms, pdu_results};
use crate::{Error, Peer, Result};

/// A server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// A label (`weft`, `synapse`).
    pub name: String,
    /// Its server name, `localhost:PORT` (federation over TLS on that port).
    pub server_name: String,
    /// Its client API, `http://127.0.0.1:PORT`.
    pub client_base: String,
    /// An access token of a local user (creates the room, reads it).
    pub token: String,
}

impl Target {
    /// Parses `NAME,SERVER_NAME,CLIENT_BASE,TOKEN`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.splitn(4, ',').collect();
        let [name, server_name, client_base, token] = parts.as_slice() else {
            return Err(Error(format!(
                "target {s:?}: expected NAME,SERVER_NAME,CLIENT_BASE,TOKEN"
            )));
        };
        Ok(Self {
            name: (*name).to_owned(),
            server_name: (*server_name).to_owned(),
            client_base: (*client_base).to_owned(),
            token: (*token).to_owned(),
        })
    }
}

/// How transactions follow each other (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Next transaction when the previous one is answered.
    Open,
    /// Next transaction when the previous one's PDUs are readable.
    Closed,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            other => Err(Error(format!("unknown mode {other:?} (open or closed)"))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Transactions per run (K).
    pub txns: usize,
    /// PDUs per transaction (the spec's maximum is 50).
    pub pdus_per_txn: usize,
    /// Measured runs per target and setting.
    pub runs: usize,
    /// In-flight settings to measure (1 = one transaction at a time).
    pub inflight: Vec<usize>,
    /// Modes to measure.
    pub modes: Vec<Mode>,
    /// Bound on any single request and on any wait for a PDU to become readable.
    pub timeout: Duration,
    /// Longest pause between two readability checks (they start at 2 ms and grow by half).
    pub poll_max: Duration,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub target: String,
    pub mode: Mode,
    pub inflight: usize,
    pub run: usize,
    pub pdus: usize,
    /// Until the last transaction was answered.
    pub acked: Duration,
    /// Until the newest PDU of every lane was readable (`None`: not within the timeout).
    pub visible: Option<Duration>,
    /// PDUs of the run readable afterwards.
    pub persisted: usize,
    /// 429 answers retried.
    pub retried_429: usize,
    /// Why the run failed (`None`: it completed; a timeout shows as `visible == None`).
    pub failed: Option<String>,
}

impl Sample {
    /// A run that could not complete.
    fn failure(target: &str, mode: Mode, inflight: usize, run: usize, why: String) -> Self {
        Sample {
            target: target.to_owned(),
            mode,
            inflight,
            run,
            pdus: 0,
            acked: Duration::ZERO,
            visible: None,
            persisted: 0,
            retried_429: 0,
            failed: Some(why),
        }
    }

    /// Failed or timed out: the newest PDUs never became readable.
    pub fn is_failure(&self) -> bool {
        self.failed.is_some() || self.visible.is_none()
    }

    /// The rate that goes into the medians: 0 for a failed or timed-out run.
    fn stored_rate_or_zero(&self) -> f64 {
        if self.is_failure() {
            0.0
        } else {
            self.stored_rate()
        }
    }

    fn acked_rate_or_zero(&self) -> f64 {
        if self.failed.is_some() {
            0.0
        } else {
            self.acked_rate()
        }
    }

    pub fn acked_rate(&self) -> f64 {
        self.pdus as f64 / self.acked.as_secs_f64()
    }
    pub fn visible_rate(&self) -> f64 {
        self.visible
            .map(|v| self.pdus as f64 / v.as_secs_f64())
            .unwrap_or(f64::NAN)
    }
    /// PDUs the server stored, per second until the newest ones were readable.
    pub fn stored_rate(&self) -> f64 {
        self.visible
            .map(|v| self.persisted as f64 / v.as_secs_f64())
            .unwrap_or(f64::NAN)
    }
    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "mode": self.mode.as_str(),
            "inflight": self.inflight,
            "run": self.run,
            "pdus": self.pdus,
            "acked_ms": self.acked.as_secs_f64() * 1000.0,
            "visible_ms": self.visible.map(|v| v.as_secs_f64() * 1000.0),
            "persisted": self.persisted,
            "acked_pdus_per_s": self.acked_rate(),
            "visible_pdus_per_s": self.visible.map(|_| self.visible_rate()),
            "stored_pdus_per_s": self.visible.map(|_| self.stored_rate()),
            "retried_429": self.retried_429,
            "failed": self.failed,
        })
    }
}

/// The median of some numbers (mean of the middle two for an even count); NaNs are
/// ignored.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One lane's connections: federation (sending) and client (readability checks).
struct Lane {
    fed: FedClient,
    reader: ClientApi,
}

/// A target after setup: its room, joined.
struct Joined {
    target: Target,
    room_id: String,
    client: ClientApi,
    /// Opened before any timing.
    lanes: Vec<Lane>,
}

/// A signed `/send` transaction ready to go: request target, `Authorization`, body bytes
/// and the event IDs of its PDUs (bench-send and bench-ingest both build them).
pub(crate) struct SignedTxn {
    pub(crate) path: String,
    pub(crate) auth: String,
    pub(crate) body: Vec<u8>,
    pub(crate) event_ids: Vec<OwnedEventId>,
}

fn message_draft(peer: &Peer, lane: usize, n: usize) -> EventDraft {
    let mut d = EventDraft::new(
        "m.room.message",
        peer.user("bench"),
        json!({"msgtype": "m.text", "body": format!("bench lane {lane} message {n}")}),
    );
    d.origin_server_ts = now_ms();
    d
}

/// Builds and signs a run's transactions: `txns` transactions over `lanes` chains, each
/// chain starting from the room's current forward extremities. The PDUs are appended to
/// the peer's view of the room as they are built.
fn prepare(
    peer: &Peer,
    joined: &Joined,
    txns: usize,
    per_txn: usize,
    lanes: usize,
    tag: &str,
) -> Result<Vec<Vec<SignedTxn>>> {
    let start = peer.with_room(&joined.room_id, |r| r.extremities().to_vec())?;
    let mut out: Vec<Vec<SignedTxn>> = (0..lanes).map(|_| Vec::new()).collect();
    let mut tips: Vec<Vec<OwnedEventId>> = vec![start; lanes];
    let origin = peer.server_name().to_owned();
    for t in 0..txns {
        let lane = t % lanes;
        let mut pdus = Vec::with_capacity(per_txn);
        let mut ids = Vec::with_capacity(per_txn);
        for i in 0..per_txn {
            let draft = message_draft(peer, lane, t * per_txn + i);
            let prevs = tips[lane].clone();
            let pdu = peer
                .with_room(&joined.room_id, |r| {
                    let pdu = r.build(&draft, Some(&prevs), &origin, peer.key())?;
                    r.append(pdu.clone());
                    Ok::<_, String>(pdu)
                })?
                .map_err(Error)?;
            tips[lane] = vec![pdu.owned_event_id()];
            ids.push(pdu.owned_event_id());
            pdus.push(pdu.to_federation_value());
        }
        let fed = &joined.lanes[lane].fed;
        let body = fed.transaction_body(pdus, Vec::new());
        let path = format!("/_matrix/federation/v1/send/{}", enc(&format!("{tag}-{t}")));
        let auth = fed.authorization("PUT", &path, Some(&body))?;
        out[lane].push(SignedTxn {
            path,
            auth,
            body: body.to_string().into_bytes(),
            event_ids: ids,
        });
    }
    Ok(out)
}

/// Polls until an event is readable: at once, then after 2 ms, the pause growing by half
/// each time up to `poll_max`.
pub fn wait_readable(
    reader: &mut ClientApi,
    room_id: &str,
    event_id: &str,
    deadline: Instant,
    poll_max: Duration,
) -> Result<bool> {
    let mut step = Duration::from_millis(2).min(poll_max);
    loop {
        if reader.event(room_id, event_id)?.is_some() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(step);
        step = (step * 3 / 2).min(poll_max);
    }
}

/// PUTs one signed `/send` transaction (its path, `Authorization` header, body and the
/// event IDs of its PDUs), retrying 429s until `deadline`, and answers how
/// many it retried; an answer other than 200, or one that does not accept every PDU of
/// `event_ids`, is an error.
pub(crate) fn put_txn(fed: &mut FedClient, txn: &SignedTxn, deadline: Instant) -> Result<usize> {
    let (path, event_ids) = (&txn.path, &txn.event_ids);
    let mut retried = 0;
    loop {
        let r = fed.raw(
            "PUT",
            path,
            std::slice::from_ref(&txn.auth),
            Some(&txn.body),
        )?;
        if r.status == 429 && Instant::now() < deadline {
            retried += 1;
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if r.status != 200 {
            return Err(Error(format!("{path}: {} {}", r.status, r.text())));
        }
        let results = pdu_results(&r.json());
        let errors: Vec<String> = event_ids
            .iter()
            .filter_map(|id| match results.get(id) {
                Some(None) => None,
                Some(Some(e)) => Some(format!("{id}: {e}")),
                None => Some(format!("{id}: not in the answer")),
            })
            .collect();
        if let Some(first) = errors.first() {
            return Err(Error(format!(
                "{path}: {} of {} PDUs not accepted, first: {first}",
                errors.len(),
                event_ids.len(),
            )));
        }
        return Ok(retried);
    }
}

/// Waits for the sender threads of a run and adds up the 429s they retried (the first
/// failed sender's error, or a panicked one, fails the run).
pub(crate) fn join_senders(
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<usize>>>,
) -> Result<usize> {
    let mut retried = 0;
    for h in handles {
        retried += h
            .join()
            .unwrap_or_else(|_| Err(Error("sender thread panicked".into())))?;
    }
    Ok(retried)
}

/// How a run's log line tells when its newest PDUs became readable.
pub(crate) fn readable_note(visible: Option<Duration>, rate: f64) -> String {
    match visible {
        Some(v) => format!("in {:.0} ms ({rate:.0}/s)", v.as_secs_f64() * 1000.0),
        None => "never (timeout)".into(),
    }
}

/// A run's cell in a summary's "stored/s per run" column.
pub(crate) fn run_cell(failed: &Option<String>, visible: Option<Duration>, rate: f64) -> String {
    match (failed, visible) {
        (Some(_), _) => "failed".into(),
        (None, None) => "timeout".into(),
        (None, Some(_)) => format!("{rate:.0}"),
    }
}

/// Sends one lane's transactions in order; returns the number of 429s retried.
fn send_lane(
    lane: &mut Lane,
    room_id: &str,
    txns: &[SignedTxn],
    mode: Mode,
    deadline: Instant,
    poll_max: Duration,
) -> Result<usize> {
    let mut retried = 0;
    for txn in txns {
        retried += put_txn(&mut lane.fed, txn, deadline)?;
        if mode == Mode::Closed
            && let Some(last) = txn.event_ids.last()
            && !wait_readable(&mut lane.reader, room_id, last.as_str(), deadline, poll_max)?
        {
            return Err(Error(format!("{last} not readable before the deadline")));
        }
    }
    Ok(retried)
}

/// One measured run against one target.
fn run_once(
    peer: &Peer,
    joined: &mut Joined,
    opts: &Options,
    mode: Mode,
    inflight: usize,
    run: usize,
) -> Result<Sample> {
    let tag = format!("bench{}-{}-{inflight}-{run}", now_ms(), mode.as_str());
    let lanes = prepare(peer, joined, opts.txns, opts.pdus_per_txn, inflight, &tag)?;
    let tips: Vec<OwnedEventId> = lanes
        .iter()
        .filter_map(|l| l.last().and_then(|t| t.event_ids.last().cloned()))
        .collect();
    let deadline = Instant::now() + opts.timeout;
    let room_id = joined.room_id.clone();
    let start = Instant::now();
    let retried = std::thread::scope(|s| {
        let handles: Vec<_> = joined
            .lanes
            .iter_mut()
            .zip(lanes.iter())
            .map(|(lane, txns)| {
                let room_id = room_id.as_str();
                let poll_max = opts.poll_max;
                s.spawn(move || send_lane(lane, room_id, txns, mode, deadline, poll_max))
            })
            .collect();
        join_senders(handles)
    });
    let acked = start.elapsed();
    let retried = retried?;
    let mut all_visible = true;
    for tip in &tips {
        all_visible &= wait_readable(
            &mut joined.client,
            &room_id,
            tip.as_str(),
            deadline,
            opts.poll_max,
        )?;
    }
    let visible = all_visible.then(|| start.elapsed());
    // Outside the timing: which PDUs of the run can the local user read? (Each event ID
    // once.)
    let mut persisted = 0;
    let ids: HashSet<&OwnedEventId> = lanes
        .iter()
        .flatten()
        .flat_map(|t| t.event_ids.iter())
        .collect();
    for id in ids {
        if joined.client.event(&room_id, id.as_str())?.is_some() {
            persisted += 1;
        }
    }
    Ok(Sample {
        target: joined.target.name.clone(),
        mode,
        inflight,
        run,
        pdus: opts.txns * opts.pdus_per_txn,
        acked,
        visible,
        persisted,
        retried_429: retried,
        failed: None,
    })
}

fn setup(
    peer: &Peer,
    target: &Target,
    opts: &Options,
    lanes: usize,
    log: &mut impl FnMut(&str),
) -> Result<Joined> {
    let new_client = || {
        Ok::<_, Error>(ClientApi::new(&target.client_base, opts.timeout)?.with_token(&target.token))
    };
    let mut client = new_client()?;
    let room_id = client.create_room(&json!({
        "preset": "public_chat",
        "name": format!("fedpeer bench {}", target.name),
    }))?;
    let mut fed = peer.client(&target.server_name)?;
    let join = peer.join(&mut fed, &room_id, "bench")?;
    let deadline = Instant::now() + opts.timeout;
    if !wait_readable(
        &mut client,
        &room_id,
        join.event_id().as_str(),
        deadline,
        opts.poll_max,
    )? {
        return Err(Error(format!(
            "{}: our join never became readable",
            target.name
        )));
    }
    let version = peer.room_version(&room_id)?;
    log(&format!(
        "{}: joined {room_id} (room version {}) as {}",
        target.name,
        version.as_str(),
        peer.user("bench")
    ));
    let mut feds = vec![fed];
    while feds.len() < lanes {
        feds.push(peer.client(&target.server_name)?);
    }
    let mut lanes = Vec::new();
    // Open every connection before timing anything.
    for mut fed in feds {
        let r = fed.request("GET", "/_matrix/federation/v1/version", None)?;
        if r.status != 200 {
            return Err(Error(format!(
                "{}: /version answered {}",
                target.name, r.status
            )));
        }
        let mut reader = new_client()?;
        reader.event(&room_id, join.event_id().as_str())?;
        lanes.push(Lane { fed, reader });
    }
    let mut joined = Joined {
        target: target.clone(),
        room_id,
        client,
        lanes,
    };
    // Warm-up (the server fetches our key here): one transaction, closed, not measured.
    let warm = run_once(
        peer,
        &mut joined,
        &Options {
            txns: 1,
            ..opts.clone()
        },
        Mode::Closed,
        1,
        0,
    )?;
    log(&format!(
        "{}: warm-up transaction of {} PDUs readable after {:.0} ms",
        target.name,
        warm.pdus,
        warm.visible.unwrap_or(warm.acked).as_secs_f64() * 1000.0
    ));
    Ok(joined)
}

/// Runs the benchmark against every target, runs interleaved across targets.
pub fn run(
    peer: &Peer,
    targets: &[Target],
    opts: &Options,
    mut log: impl FnMut(&str),
) -> Result<Vec<Sample>> {
    if opts.pdus_per_txn == 0 || opts.pdus_per_txn > 50 || opts.txns == 0 || opts.runs == 0 {
        return Err(Error(
            "need 1..=50 PDUs per transaction, txns > 0, runs > 0".into(),
        ));
    }
    let mut samples = Vec::new();
    for &mode in &opts.modes {
        for &inflight in &opts.inflight {
            // A fresh room per setting, so that no setting inherits the DAG (forks, gaps)
            // an earlier one left behind.
            let lanes = inflight.max(1);
            let mut joined = Vec::new();
            for t in targets {
                joined.push(setup(peer, t, opts, lanes, &mut log)?);
            }
            for run in 1..=opts.runs {
                for j in joined.iter_mut() {
                    let s = match run_once(peer, j, opts, mode, lanes, run) {
                        Ok(s) => s,
                        Err(e) => {
                            log(&format!(
                                "{} {} inflight={lanes} run {run}: FAILED: {e}",
                                j.target.name,
                                mode.as_str()
                            ));
                            samples.push(Sample::failure(
                                &j.target.name,
                                mode,
                                lanes,
                                run,
                                e.to_string(),
                            ));
                            continue;
                        }
                    };
                    log(&format!(
                        "{} {} inflight={} run {run}: {} PDUs acked in {:.0} ms ({:.0}/s), newest readable {}, stored {}/{}, 429s retried: {}",
                        s.target,
                        mode.as_str(),
                        s.inflight,
                        s.pdus,
                        s.acked.as_secs_f64() * 1000.0,
                        s.acked_rate(),
                        readable_note(s.visible, s.visible_rate()),
                        s.persisted,
                        s.pdus,
                        s.retried_429
                    ));
                    samples.push(s);
                }
            }
        }
    }
    Ok(samples)
}

/// A markdown summary: medians per mode, in-flight setting and target, and the ratio of
/// the first target to each other one.
///
/// *stored/s* = PDUs of the run the local user can read afterwards ÷ time until the newest
/// PDU of every lane was readable; *acked/s* = PDUs ÷ time until the last answer.
pub fn summary(samples: &[Sample], targets: &[Target], opts: &Options) -> String {
    let mut out = format!(
        "{} runs x {} transactions x {} PDUs per target and setting; medians of the runs\n\n",
        opts.runs, opts.txns, opts.pdus_per_txn
    );
    out.push_str("| mode | in flight | server | stored/s | acked/s | stored/s per run | stored PDUs | 429s retried | failed runs |\n|---|---|---|---|---|---|---|---|---|\n");
    let mut ratios = Vec::new();
    for &mode in &opts.modes {
        for &inflight in &opts.inflight {
            let mut medians = Vec::new();
            for t in targets {
                let mine: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| {
                        s.target == t.name && s.mode == mode && s.inflight == inflight.max(1)
                    })
                    .collect();
                let stored: Vec<f64> = mine.iter().map(|s| s.stored_rate_or_zero()).collect();
                let ack: Vec<f64> = mine.iter().map(|s| s.acked_rate_or_zero()).collect();
                let runs: Vec<String> = mine
                    .iter()
                    .map(|s| run_cell(&s.failed, s.visible, s.stored_rate()))
                    .collect();
                let failed = mine.iter().filter(|s| s.is_failure()).count();
                let persisted: usize = mine.iter().map(|s| s.persisted).sum();
                let total: usize = mine.iter().map(|s| s.pdus).sum();
                let retried: usize = mine.iter().map(|s| s.retried_429).sum();
                out.push_str(&format!(
                    "| {} | {inflight} | {} | {:.0} | {:.0} | {} | {persisted}/{total} | {retried} | {failed}/{} |\n",
                    mode.as_str(),
                    t.name,
                    median(&stored),
                    median(&ack),
                    runs.join(", "),
                    mine.len()
                ));
                medians.push((t.name.clone(), median(&stored), median(&ack)));
            }
            if let Some((first, v0, a0)) = medians.first().cloned() {
                for (name, v, a) in medians.iter().skip(1) {
                    ratios.push(format!(
                        "{} mode, {inflight} in flight: {first}/{name} = {:.1}x stored/s, {:.1}x acked/s",
                        mode.as_str(),
                        v0 / v,
                        a0 / a
                    ));
                }
            }
        }
    }
    out.push('\n');
    for r in ratios {
        out.push_str(&format!("- {r}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_target_parsing() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let t = Target::parse("weft,localhost:21101,http://127.0.0.1:21100,tok,en").unwrap();
        assert_eq!(t.server_name, "localhost:21101");
        assert_eq!(t.token, "tok,en");
        assert!(Target::parse("weft,localhost:1").is_err());
    }

    fn sample(visible_ms: Option<u64>, failed: bool) -> Sample {
        Sample {
            target: "weft".into(),
            mode: Mode::Open,
            inflight: 1,
            run: 1,
            pdus: 100,
            acked: Duration::from_millis(100),
            visible: visible_ms.map(Duration::from_millis),
            persisted: 100,
            retried_429: 0,
            failed: failed.then(|| "refused".to_owned()),
        }
    }

    #[test]
    fn failed_and_timed_out_runs_count_in_the_summary() {
        let targets = [Target::parse("weft,localhost:1,http://127.0.0.1:2,t").unwrap()];
        let opts = Options {
            txns: 2,
            pdus_per_txn: 50,
            runs: 3,
            inflight: vec![1],
            modes: vec![Mode::Open],
            timeout: Duration::from_secs(1),
            poll_max: Duration::from_millis(50),
        };
        // 1000/s, a timeout and a failure: the median is 0, not 1000.
        let samples = [
            sample(Some(100), false),
            sample(None, false),
            sample(None, true),
        ];
        let text = summary(&samples, &targets, &opts);
        assert!(text.contains("| open | 1 | weft | 0 |"), "{text}");
        assert!(text.contains("1000, timeout, failed"), "{text}");
        assert!(text.contains("| 2/3 |"), "{text}");
    }
}
