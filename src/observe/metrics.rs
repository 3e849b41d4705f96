//! The Prometheus metrics of weft: names, the recorder, and the recording calls.
//!
//! Names follow Prometheus conventions: a `weft_` prefix, base units in the name (`_seconds`,
//! `_bytes`), `_total` on counters, labels of small fixed vocabularies (route *patterns*,
//! never raw paths; destination server names and room IDs only on gauges of live things).
//! docs/OPERATING.md lists every series with its meaning.
//!
//! Callers use the small functions below (one line at the place where a thing happens), so
//! instrumentation never obscures the code it measures. Gauges of current state are set by
//! [`refresh`] from values gathered when `/metrics` is scraped.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

pub const HTTP_REQUESTS: &str = "weft_http_requests_total";
pub const HTTP_DURATION: &str = "weft_http_request_duration_seconds";
pub const ROOM_ACTORS: &str = "weft_room_actors";
pub const ROOM_MAILBOX_CAPACITY: &str = "weft_room_mailbox_capacity";
pub const ROOM_MAILBOX_DEPTH: &str = "weft_room_mailbox_depth";
pub const ROOM_MAILBOX_HIGH_WATER: &str = "weft_room_mailbox_high_water";
pub const ROOM_MESSAGES: &str = "weft_room_messages_handled_total";
pub const ROOM_EVENTS: &str = "weft_room_events_appended_total";
pub const ROOM_BATCH_SIZE: &str = "weft_room_batch_size_events";
pub const ROOM_SLOW_PATH: &str = "weft_room_slow_path_duration_seconds";
pub const ROOM_ADMISSION_PATH: &str = "weft_room_admission_path_total";
pub const PARTIAL_STATE: &str = "weft_partial_state_total";
pub const DEST_BACKLOG: &str = "weft_federation_destination_backlog";
pub const DEST_FAILURES: &str = "weft_federation_destination_consecutive_failures";
pub const DEST_BACKOFF: &str = "weft_federation_destination_backoff_seconds";
pub const DEST_IN_FLIGHT_AGE: &str = "weft_federation_destination_in_flight_age_seconds";
pub const DEST_CATCHING_UP: &str = "weft_federation_destination_catching_up";
pub const DEST_TRANSACTIONS: &str = "weft_federation_transactions_total";
pub const INBOUND_PDUS: &str = "weft_federation_inbound_pdus_total";
pub const KEY_FETCHES: &str = "weft_federation_key_fetches_total";
pub const DB_WRITER_QUEUE: &str = "weft_db_writer_queue_depth";
pub const DB_COMMIT_DURATION: &str = "weft_db_commit_duration_seconds";
pub const DB_BATCH_SIZE: &str = "weft_db_commit_batch_size_jobs";
pub const DB_COMMIT_FAILURES: &str = "weft_db_commit_failures_total";

pub const DB_COMMITS: &str = "weft_db_commits_total";
pub const INBOUND_TXN_RECORDS: &str = "weft_federation_txn_records_total";
pub const DB_POOL: &str = "weft_db_read_pool_connections";
pub const SYNC_WAKEUP: &str = "weft_sync_wakeup_duration_seconds";
pub const SYNC_WAKE_STAGE: &str = "weft_sync_wake_stage_seconds";
pub const SEND_STAGE: &str = "weft_federation_send_stage_seconds";
pub const SYNC_ANSWERS: &str = "weft_sync_woken_answers_total";
pub const RATE_LIMITED: &str = "weft_ratelimit_refusals_total";
pub const PUSH_EVENTS: &str = "weft_push_events_evaluated_total";
pub const PUSH_NOTIFICATIONS: &str = "weft_push_notifications_total";
pub const PUSH_DELIVERIES: &str = "weft_push_gateway_requests_total";
pub const CLUSTER_FORWARDS: &str = "weft_cluster_forwards_total";
pub const CLUSTER_SERVED: &str = "weft_cluster_forwards_served_total";
pub const CLUSTER_RENEWALS: &str = "weft_cluster_lease_renewals_total";
pub const CLUSTER_LEASES_RENEWED: &str = "weft_cluster_leases_renewed_total";
pub const CLUSTER_ACQUISITIONS: &str = "weft_cluster_lease_acquisitions_total";
pub const CLUSTER_RELEASES: &str = "weft_cluster_lease_releases_total";
pub const CLUSTER_PUBLISHED: &str = "weft_cluster_nats_published_total";
pub const CLUSTER_SEQUENCE_CALLS: &str = "weft_cluster_sequence_calls_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
/// Finer buckets for the stages of a wake-up (tens of microseconds to a few milliseconds).
const STAGE_BUCKETS: &[f64] = &[
    0.00002, 0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the process-wide recorder (once; later calls return the same handle).
pub fn install() -> Option<&'static PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Some(h);
    }
    let builder = PrometheusBuilder::new()
        // Gauges not refreshed for a while belong to rooms and peers no longer live.
        .idle_timeout(MetricKindMask::GAUGE, Some(Duration::from_secs(600)))
        .set_buckets(SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_events".into()), SIZE_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_jobs".into()), SIZE_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(SYNC_WAKE_STAGE.into()), STAGE_BUCKETS)
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SEND_STAGE.into()), STAGE_BUCKETS));
    match builder.and_then(|b| b.install_recorder()) {
        Ok(handle) => {
            describe();
            let _ = HANDLE.set(handle);
            HANDLE.get()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot install the metrics recorder");
            None
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by listener, method, route pattern and status"
    );
    describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency by listener, method and route pattern"
    );
    describe_gauge!(ROOM_ACTORS, "Room actors alive");
    describe_gauge!(
        ROOM_MAILBOX_CAPACITY,
        "Configured capacity of each room actor's mailbox (actors.room_mailbox)"
    );
    describe_gauge!(
        ROOM_MAILBOX_DEPTH,
        "Messages waiting for (or being handled by) a room's actor"
    );
    describe_gauge!(
        ROOM_MAILBOX_HIGH_WATER,
        "Most messages ever waiting at once for a room's actor"
    );
    describe_counter!(ROOM_MESSAGES, "Messages handled by room actors");
    describe_counter!(
        ROOM_ADMISSION_PATH,
        "Received PDUs a room actor admitted from memory or through the database (path)"
    );
    describe_counter!(
        PARTIAL_STATE,
        "Partial-state joins (event: joined, completed, deferred, resync_failed, gave_up)"
    );
    describe_counter!(
        ROOM_EVENTS,
        "Events appended to room timelines, by origin (local, remote)"
    );
    describe_histogram!(
        ROOM_BATCH_SIZE,
        "Events per group-commit batch of a room actor"
    );
    describe_histogram!(
        ROOM_SLOW_PATH,
        metrics::Unit::Seconds,
        "Time room actors spent in slow paths (loading state for a received event)"
    );
    describe_gauge!(
        DEST_BACKLOG,
        "Queued PDUs and EDUs not yet delivered, per destination"
    );
    describe_gauge!(
        DEST_FAILURES,
        "Consecutive failed deliveries, per destination (0 when healthy)"
    );
    describe_gauge!(
        DEST_BACKOFF,
        "Seconds until the next retry of a backing-off destination"
    );
    describe_gauge!(
        DEST_IN_FLIGHT_AGE,
        "Age of the transaction in flight to a destination (0: none)"
    );
    describe_gauge!(
        DEST_CATCHING_UP,
        "1 while a destination is in catch-up mode"
    );
    describe_counter!(
        DEST_TRANSACTIONS,
        "Outbound transactions by destination and result (ok, error)"
    );
    describe_counter!(
        INBOUND_PDUS,
        "Received PDUs by outcome (accepted, rejected, soft_failed) and reason"
    );
    describe_counter!(
        KEY_FETCHES,
        "Remote key fetches by source (direct, notary) and result"
    );
    describe_gauge!(DB_WRITER_QUEUE, "Write jobs queued per database writer");
    describe_histogram!(
        DB_COMMIT_DURATION,
        metrics::Unit::Seconds,
        "Time to run and commit one writer batch, by kind (durable: holds a job somebody waits on; lazy: only followers' deferred jobs, no fsync of its own)"
    );
    describe_histogram!(DB_BATCH_SIZE, "Write jobs committed per writer transaction");
    describe_counter!(DB_COMMIT_FAILURES, "Writer batches that failed to commit");

    describe_counter!(
        DB_COMMITS,
        "Writer transactions committed (one fsync each with synchronous = full)"
    );
    describe_counter!(
        INBOUND_TXN_RECORDS,
        "Received federation transactions' answers stored: with_pdus = in the commit of their PDUs, deferred = as a deferred write the answer did not wait for (no EDUs), alone = as a durable commit of its own (after EDUs)"
    );
    describe_gauge!(DB_POOL, "Read pool connections by state (in_use, idle)");
    describe_histogram!(
        SYNC_WAKEUP,
        metrics::Unit::Seconds,
        "Time from a /sync long-poll being woken to its response"
    );
    describe_histogram!(
        SYNC_WAKE_STAGE,
        metrics::Unit::Seconds,
        "Stages of a send -> /sync wake-up inside the server, by stage (queue, commit, notify, wake, respond, total; see observe::wake)"
    );
    describe_histogram!(
        SEND_STAGE,
        metrics::Unit::Seconds,
        "Stages of a federation /send inside the server, by stage (dedup_read, parse, keys, verify_wait, verify, screen, mailbox, actor, batch_wait, writer_wait, commit_writes, commit_sync, reply, answer, total; see observe::send)"
    );
    describe_counter!(
        SYNC_ANSWERS,
        "Woken /sync long-polls answered, by path (incremental: from the committed events; full: a full read)"
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused by a rate limiter, by limiter"
    );
    describe_counter!(PUSH_EVENTS, "Events evaluated against push rules");
    describe_counter!(PUSH_NOTIFICATIONS, "Notifications stored (event × user)");
    describe_counter!(
        PUSH_DELIVERIES,
        "Requests to push gateways, by result (ok, retry, dropped)"
    );
    describe_counter!(
        CLUSTER_FORWARDS,
        "Room messages this node forwarded to another node's owner, by result (ok, error)"
    );
    describe_counter!(
        CLUSTER_SERVED,
        "Room messages other nodes forwarded to this node, answered here"
    );
    describe_counter!(
        CLUSTER_RENEWALS,
        "Lease renewal rounds (one UPDATE each, covering every held lease)"
    );
    describe_counter!(CLUSTER_LEASES_RENEWED, "Leases extended by renewal rounds");
    describe_counter!(
        CLUSTER_ACQUISITIONS,
        "Leases (rooms, destinations) this node acquired at a new epoch"
    );
    describe_counter!(
        CLUSTER_RELEASES,
        "Leases this node gave back (idle destination or room, rebalancing, NATS lost)"
    );
    describe_counter!(
        CLUSTER_PUBLISHED,
        "NATS publications by subject kind (node, wake, typing, notice)"
    );
    describe_counter!(
        CLUSTER_SEQUENCE_CALLS,
        "nextval calls on the cluster's PostgreSQL sequences, by sequence"
    );
}

/// The text exposition of every metric (after housekeeping).
pub fn render() -> String {
    match HANDLE.get() {
        Some(h) => {
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

/// Housekeeping the exporter needs now and then (histogram draining).
pub fn upkeep() {
    if let Some(h) = HANDLE.get() {
        h.run_upkeep();
    }
}

// ---- recording calls ---------------------------------------------------------------------

pub fn http_request(listener: &'static str, method: &str, route: &str, status: u16, secs: f64) {
    let (m, r) = (method.to_owned(), route.to_owned());
    counter!(HTTP_REQUESTS, "listener" => listener, "method" => m.clone(), "route" => r.clone(), "status" => status.to_string()).increment(1);
    histogram!(HTTP_DURATION, "listener" => listener, "method" => m, "route" => r).record(secs);
}

pub fn room_message_handled() {
    counter!(ROOM_MESSAGES).increment(1);
}

/// A room actor committed a batch of `n` events (`local` of them created here).
pub fn room_batch(n: usize, local: usize) {
    histogram!(ROOM_BATCH_SIZE).record(n as f64);
    counter!(ROOM_EVENTS, "origin" => "local").increment(local as u64);
    counter!(ROOM_EVENTS, "origin" => "remote").increment(n.saturating_sub(local) as u64);
}

/// A received PDU took the room actor's memory path (`true`) or the database path.
pub fn admission_path(memory: bool) {
    counter!(ROOM_ADMISSION_PATH, "path" => if memory { "memory" } else { "database" })
        .increment(1);
}

/// A partial-state join's step (`event`: a fixed name).
pub fn partial_state(event: &'static str) {
    counter!(PARTIAL_STATE, "event" => event).increment(1);
}

/// Time a room actor spent in a slow path (`path`: a fixed name).
pub fn room_slow_path(path: &'static str, secs: f64) {
    histogram!(ROOM_SLOW_PATH, "path" => path).record(secs);
}

/// Times a slow path: `SlowPath::start("name")` … `.finish(value)`.
pub struct SlowPath {
    path: &'static str,
    started: std::time::Instant,
}

impl SlowPath {
    pub fn start(path: &'static str) -> Self {
        Self {
            path,
            started: std::time::Instant::now(),
        }
    }

    /// Records the time since `start` and passes `value` through.
    pub fn finish<T>(self, value: T) -> T {
        room_slow_path(self.path, self.started.elapsed().as_secs_f64());
        value
    }
}

/// One outbound transaction finished.
pub fn transaction(destination: &str, ok: bool) {
    counter!(DEST_TRANSACTIONS, "destination" => destination.to_owned(), "result" => if ok { "ok" } else { "error" }).increment(1);
}

static CATCHING_UP: OnceLock<parking_lot::Mutex<std::collections::HashSet<String>>> =
    OnceLock::new();

/// A destination entered (true) or left (false) catch-up mode.
pub fn destination_catching_up(destination: &str, on: bool) {
    let mut set = CATCHING_UP.get_or_init(Default::default).lock();
    if on {
        set.insert(destination.to_owned());
    } else {
        set.remove(destination);
    }
}

/// Whether a destination is in catch-up mode (as last reported).
pub fn is_catching_up(destination: &str) -> bool {
    CATCHING_UP
        .get()
        .is_some_and(|s| s.lock().contains(destination))
}

/// The push worker evaluated `events` events, finding `notifications` notifications.
pub fn push_evaluated(events: usize, notifications: usize) {
    counter!(PUSH_EVENTS).increment(events as u64);
    counter!(PUSH_NOTIFICATIONS).increment(notifications as u64);
}

/// One request to a push gateway and what became of the push.
pub fn push_delivery(result: &'static str) {
    counter!(PUSH_DELIVERIES, "result" => result).increment(1);
}

/// A received PDU's fate; `reason` is a fixed word (auth, signature, format, missing, ...).
pub fn inbound_pdu(outcome: &'static str, reason: &'static str) {
    counter!(INBOUND_PDUS, "outcome" => outcome, "reason" => reason).increment(1);
}

pub fn key_fetch(via: &'static str, ok: bool) {
    counter!(KEY_FETCHES, "via" => via, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// One writer batch: `jobs` jobs, `secs` to run and commit, and whether it committed.
pub fn db_commit(jobs: usize, secs: f64, ok: bool, lazy: bool) {
    histogram!(DB_BATCH_SIZE).record(jobs as f64);
    let kind = if lazy { "lazy" } else { "durable" };
    histogram!(DB_COMMIT_DURATION, "kind" => kind).record(secs);
    if ok {
        counter!(DB_COMMITS).increment(1);
    } else {
        counter!(DB_COMMIT_FAILURES).increment(1);
    }
}

/// A received transaction's answer was stored with its PDUs (`true`) or by a job of its own.
/// Where a `/send`'s answer (its de-duplication record) was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnRecord {
    /// In the commit of its PDUs (one room, no EDUs).
    WithPdus,
    /// As a deferred write the answer did not wait for (no EDUs; several rooms, a gap, ...).
    Deferred,
    /// As a durable write of its own, after the EDUs.
    Alone,
}

pub fn inbound_txn_record(how: TxnRecord) {
    let how = match how {
        TxnRecord::WithPdus => "with_pdus",
        TxnRecord::Deferred => "deferred",
        TxnRecord::Alone => "alone",
    };
    counter!(INBOUND_TXN_RECORDS, "stored" => how).increment(1);
}

pub fn sync_wakeup(secs: f64) {
    histogram!(SYNC_WAKEUP).record(secs);
}

/// One stage of a wake-up (`observe::wake`).
pub fn sync_wake_stage(stage: &'static str, secs: f64) {
    histogram!(SYNC_WAKE_STAGE, "stage" => stage).record(secs);
}

/// One stage of a federation `/send` (`observe::send`).
pub fn federation_send_stage(stage: &'static str, secs: f64) {
    histogram!(SEND_STAGE, "stage" => stage).record(secs);
}

/// A woken `/sync` answered (`path`: incremental or full).
pub fn sync_woken_answer(path: &'static str) {
    counter!(SYNC_ANSWERS, "path" => path).increment(1);
}

static REFUSALS: OnceLock<parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>> =
    OnceLock::new();

/// A rate limiter refused a request. `limiter` names it (a fixed word, e.g. `login`).
pub fn rate_limited(limiter: &'static str) {
    counter!(RATE_LIMITED, "limiter" => limiter).increment(1);
    *REFUSALS
        .get_or_init(Default::default)
        .lock()
        .entry(limiter)
        .or_default() += 1;
}

/// Refusals so far, per limiter (for the status page).
pub fn rate_limit_refusals() -> std::collections::BTreeMap<&'static str, u64> {
    REFUSALS.get().map(|m| m.lock().clone()).unwrap_or_default()
}

/// A room message forwarded to its owner on another node, and whether an answer came.
pub fn cluster_forward(ok: bool) {
    counter!(CLUSTER_FORWARDS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// A room message forwarded by another node was answered here.
pub fn cluster_served() {
    counter!(CLUSTER_SERVED).increment(1);
}

/// One lease renewal round extended `leases` leases.
pub fn cluster_renewal(leases: usize) {
    counter!(CLUSTER_RENEWALS).increment(1);
    counter!(CLUSTER_LEASES_RENEWED).increment(leases as u64);
}

pub fn cluster_acquisition() {
    counter!(CLUSTER_ACQUISITIONS).increment(1);
}

pub fn cluster_releases(n: usize) {
    counter!(CLUSTER_RELEASES).increment(n as u64);
}

/// A NATS publication (`kind`: node, wake, typing, notice).
pub fn cluster_published(kind: &'static str) {
    counter!(CLUSTER_PUBLISHED, "kind" => kind).increment(1);
}

/// A `nextval` on one of the cluster's sequences (`seq`: stream, group, queue, backfill).
pub fn cluster_sequence_call(seq: &'static str) {
    counter!(CLUSTER_SEQUENCE_CALLS, "sequence" => seq).increment(1);
}

// ---- gauges refreshed at scrape time -------------------------------------------------------

/// One destination's current numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DestinationGauges {
    pub destination: String,
    pub backlog: i64,
    pub failures: i64,
    pub backoff_secs: f64,
    pub in_flight_age_secs: f64,
    pub catching_up: bool,
}

/// What `/metrics` refreshes before rendering.
pub struct Current<'a> {
    pub room_actors: usize,
    pub room_mailbox_capacity: usize,
    pub rooms: &'a [super::rooms::RoomStatsSnapshot],
    pub writer_depths: &'a [usize],
    pub pool_in_use: u32,
    pub pool_idle: u32,
    pub destinations: &'a [DestinationGauges],
}

pub fn refresh(c: &Current<'_>) {
    gauge!(ROOM_ACTORS).set(c.room_actors as f64);
    gauge!(ROOM_MAILBOX_CAPACITY).set(c.room_mailbox_capacity as f64);
    for r in c.rooms {
        gauge!(ROOM_MAILBOX_DEPTH, "room" => r.room_id.clone()).set(r.waiting as f64);
        gauge!(ROOM_MAILBOX_HIGH_WATER, "room" => r.room_id.clone()).set(r.high_water as f64);
    }
    for (i, d) in c.writer_depths.iter().enumerate() {
        gauge!(DB_WRITER_QUEUE, "writer" => i.to_string()).set(*d as f64);
    }
    gauge!(DB_POOL, "state" => "in_use").set(f64::from(c.pool_in_use));
    gauge!(DB_POOL, "state" => "idle").set(f64::from(c.pool_idle));
    for d in c.destinations {
        let l = d.destination.clone();
        gauge!(DEST_BACKLOG, "destination" => l.clone()).set(d.backlog as f64);
        gauge!(DEST_FAILURES, "destination" => l.clone()).set(d.failures as f64);
        gauge!(DEST_BACKOFF, "destination" => l.clone()).set(d.backoff_secs);
        gauge!(DEST_IN_FLIGHT_AGE, "destination" => l.clone()).set(d.in_flight_age_secs);
        gauge!(DEST_CATCHING_UP, "destination" => l).set(if d.catching_up { 1.0 } else { 0.0 });
    }
}

// ---- transactions in flight (kept here so the outbound module needs one line per event) ---

static IN_FLIGHT: OnceLock<
    parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>>,
> = OnceLock::new();

fn in_flight_map()
-> &'static parking_lot::Mutex<std::collections::HashMap<String, std::time::Instant>> {
    IN_FLIGHT.get_or_init(Default::default)
}

/// A transaction to `destination` was sent (`true`) or answered/failed (`false`).
pub fn transaction_in_flight(destination: &str, sending: bool) {
    let mut m = in_flight_map().lock();
    if sending {
        m.insert(destination.to_owned(), std::time::Instant::now());
    } else {
        m.remove(destination);
    }
}

/// A send attempt to `destination` ended: `Ok(true)` delivered, `Ok(false)` nothing to
/// send, `Err` failed.
pub fn transaction_done<E>(destination: &str, result: &Result<bool, E>) {
    transaction_in_flight(destination, false);
    match result {
        Ok(true) => transaction(destination, true),
        Ok(false) => {}
        Err(_) => transaction(destination, false),
    }
}

/// Age of the transaction in flight to `destination`, if any.
pub fn in_flight_age(destination: &str) -> Option<Duration> {
    in_flight_map().lock().get(destination).map(|t| t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_and_in_flight_state() {
        assert!(!is_catching_up("a.example"));
        destination_catching_up("a.example", true);
        assert!(is_catching_up("a.example"));
        destination_catching_up("a.example", false);
        assert!(!is_catching_up("a.example"));

        assert!(in_flight_age("b.example").is_none());
        transaction_in_flight("b.example", true);
        assert!(in_flight_age("b.example").is_some());
        transaction_done::<()>("b.example", &Ok(true));
        assert!(in_flight_age("b.example").is_none());
    }

    #[test]
    fn rate_limit_refusals_are_counted_per_limiter() {
        rate_limited("test_login");
        rate_limited("test_login");
        rate_limited("test_register");
        let r = rate_limit_refusals();
        assert_eq!(r.get("test_login"), Some(&2));
        assert_eq!(r.get("test_register"), Some(&1));
    }
}
