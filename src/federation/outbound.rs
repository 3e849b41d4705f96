//! Outbound delivery: one actor per destination server.
//!
//! # Design
//!
//! * **The queue is the database.** When a room actor commits events, the same transaction
//!   writes one `outbound_queue` row per (destination, event). EDUs (typing, receipts,
//!   device-list updates, to-device messages) are queued the same way. A crash can therefore
//!   never lose the delivery of an acknowledged event, and a restart resumes where it
//!   stopped: at start-up every destination with queued rows is woken.
//! * **One actor per destination** ([`DestinationActor`]), started on demand on the
//!   federation arbiter. It keeps exactly one transaction in flight: it reads the oldest ≤50
//!   PDUs and ≤100 EDUs, sends them as one `PUT /send/{txnId}`, and on success deletes them
//!   and immediately looks for more (so a burst goes out in few, full transactions). The
//!   transaction ID is derived from the highest queue ID in it, so a retry of the same
//!   content reuses the same ID and the receiver can de-duplicate it.
//! * **Backoff.** A failed send is retried after `retry_min_ms × retry_multiplier^n`
//!   (±20% jitter), capped at `retry_max_ms`; the failure count and next retry time are
//!   persisted per destination. The cap keeps a peer that was down for a day reachable
//!   within minutes of its return.
//! * **Waking early.** New items wake the actor (`try_send`: the mailbox is bounded by
//!   `actors.destination_mailbox`, and a dropped wake-up costs nothing because the work is
//!   in the database). A signed request *from* the destination proves it is up: the actor
//!   drops its backoff and sends at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::client::{FederationClient, enc};
use crate::core::Core;
use crate::storage::{events, federation as fstore, now_ms};

/// Queue row kinds.
pub const KIND_PDU: &str = "pdu";
pub const KIND_EDU: &str = "edu";

const MAX_PDUS: i64 = 50;
const MAX_EDUS: i64 = 100;

/// Queue row IDs: process-wide, because queue rows are also written inside other
/// transactions (E2EE EDUs). Initialised by [`Sender::new`] above every ID ever used.
static QUEUE_IDS: AtomicI64 = AtomicI64::new(0);

/// A fresh queue row ID.
pub fn next_queue_id() -> i64 {
    QUEUE_IDS.fetch_add(1, Ordering::Relaxed) + 1
}

thread_local! {
    /// Destinations given work by the write job running on this (writer) thread.
    static NOTED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Queues an EDU inside the caller's transaction (a write job), noting the destination so
/// the job's caller can wake it after the commit ([`take_noted`]).
pub fn enqueue_edu_in_txn(
    conn: &mut crate::storage::AnyConnection,
    destination: &str,
    edu_type: &str,
    content_json: &str,
) -> crate::storage::StorageResult<()> {
    let payload = format!(
        "{{\"edu_type\":{},\"content\":{content_json}}}",
        Value::String(edu_type.to_owned())
    );
    fstore::enqueue(
        conn,
        next_queue_id(),
        destination,
        KIND_EDU,
        &payload,
        now_ms(),
    )?;
    NOTED.with(|n| n.borrow_mut().push(destination.to_owned()));
    Ok(())
}

/// Takes (and clears) the destinations noted on this thread.
pub fn take_noted() -> Vec<String> {
    NOTED.with(|n| std::mem::take(&mut *n.borrow_mut()))
}

/// Routes outbound work to destination actors.
pub struct Sender {
    core: Arc<Core>,
    client: FederationClient,
    arbiter: ArbiterHandle,
    actors: Mutex<HashMap<String, Addr<DestinationActor>>>,
}

impl Sender {
    pub fn new(
        core: Arc<Core>,
        client: FederationClient,
    ) -> Result<Self, crate::storage::StorageError> {
        let max = core.db.read_blocking(fstore::max_queue_id)?;
        // Queue IDs name transactions, which receivers de-duplicate forever: they must never
        // repeat, even after the queue empties and the server restarts.
        QUEUE_IDS.fetch_max(max.max(now_ms().saturating_mul(1000)), Ordering::Relaxed);
        Ok(Self {
            core,
            client,
            arbiter: Arbiter::new().handle(),
            actors: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh queue row ID.
    pub fn next_queue_id(&self) -> i64 {
        next_queue_id()
    }

    fn actor(&self, destination: &str) -> Addr<DestinationActor> {
        let mut actors = self.actors.lock();
        if let Some(a) = actors.get(destination)
            && a.connected()
        {
            return a.clone();
        }
        let (core, client, dest) = (
            Arc::clone(&self.core),
            self.client.clone(),
            destination.to_owned(),
        );
        let cap = self.core.config.actors.destination_mailbox;
        let addr = DestinationActor::start_in_arbiter(&self.arbiter, move |ctx| {
            ctx.set_mailbox_capacity(cap);
            DestinationActor::new(core, client, dest)
        });
        actors.insert(destination.to_owned(), addr.clone());
        addr
    }

    /// There is new work for `destination`.
    pub fn wake(&self, destination: &str) {
        if self.core.is_local(destination) {
            return;
        }
        // A full mailbox already holds a wake-up; the work itself is in the database.
        let _ = self.actor(destination).try_send(Wake { force: false });
    }

    /// `destination` just made a signed request to us: it is up.
    pub fn mark_up(&self, destination: &str) {
        let exists = self.actors.lock().contains_key(destination);
        if exists {
            let _ = self.actor(destination).try_send(Wake { force: true });
        }
    }

    /// Queues an EDU for a destination (durably) and wakes its actor.
    pub async fn send_edu(
        &self,
        destination: &str,
        edu: Value,
    ) -> Result<(), crate::storage::StorageError> {
        if self.core.is_local(destination) {
            return Ok(());
        }
        let id = self.next_queue_id();
        let (d, payload) = (destination.to_owned(), edu.to_string());
        self.core
            .db
            .write(destination, move |c| {
                fstore::enqueue(c, id, &d, KIND_EDU, &payload, now_ms())
            })
            .await?;
        self.wake(destination);
        Ok(())
    }

    /// Wakes every destination that has queued work (at start-up).
    pub async fn resume_all(&self) {
        match self.core.db.read(fstore::queue_depths).await {
            Ok(depths) => {
                for (dest, n) in depths {
                    tracing::info!(destination = %dest, queued = n, "resuming outbound delivery");
                    self.wake(&dest);
                }
            }
            Err(e) => tracing::error!(error = %e, "could not read the outbound queue"),
        }
    }

    /// Per-destination backlog (for the operator view).
    pub async fn backlog(&self) -> Vec<(String, i64)> {
        self.core
            .db
            .read(fstore::queue_depths)
            .await
            .unwrap_or_default()
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake {
    /// Ignore the backoff (the destination contacted us).
    pub force: bool,
}

pub struct DestinationActor {
    core: Arc<Core>,
    client: FederationClient,
    destination: String,
    in_flight: bool,
    again: bool,
    failures: u32,
    retry_at: Option<std::time::Instant>,
    retry_timer: Option<SpawnHandle>,
}

impl DestinationActor {
    fn new(core: Arc<Core>, client: FederationClient, destination: String) -> Self {
        Self {
            core,
            client,
            destination,
            in_flight: false,
            again: false,
            failures: 0,
            retry_at: None,
            retry_timer: None,
        }
    }

    fn backoff(&self) -> Duration {
        let cfg = &self.core.config.federation;
        let exp = cfg
            .retry_multiplier
            .max(1.0)
            .powi(self.failures.saturating_sub(1).min(60) as i32);
        let base = (cfg.retry_min_ms as f64 * exp).min(cfg.retry_max_ms as f64);
        let mut jitter = [0u8; 1];
        let _ = crate::core::getrandom_fill(&mut jitter);
        let factor = 0.8 + (jitter[0] as f64 / 255.0) * 0.4;
        Duration::from_millis((base * factor).max(1.0) as u64)
    }

    fn start_send(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            self.again = true;
            return;
        }
        self.in_flight = true;
        self.again = false;
        let core = Arc::clone(&self.core);
        let client = self.client.clone();
        let dest = self.destination.clone();
        let failures = self.failures;
        crate::observe::metrics::transaction_in_flight(&dest, true);
        let fut = async move { send_one_transaction(&core, &client, &dest, failures).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            act.in_flight = false;
            crate::observe::metrics::transaction_done(&act.destination, &res.as_ref().map(|s| matches!(s, Sent::Some(_))));
            match res {
                Ok(Sent::Nothing) => {
                    if act.again {
                        act.start_send(ctx);
                    }
                }
                Ok(Sent::Some(n)) => {
                    if act.failures > 0 {
                        tracing::info!(destination = %act.destination, "destination is reachable again");
                    }
                    tracing::debug!(destination = %act.destination, items = n, "transaction delivered");
                    act.failures = 0;
                    act.retry_at = None;
                    act.persist_state(None);
                    // There may be more queued.
                    act.start_send(ctx);
                }
                Err(e) => {
                    act.failures += 1;
                    let delay = act.backoff();
                    tracing::warn!(destination = %act.destination, failures = act.failures, retry_in_ms = delay.as_millis() as u64, error = %e, "delivery failed");
                    act.retry_at = Some(std::time::Instant::now() + delay);
                    act.persist_state(Some(e));
                    if let Some(h) = act.retry_timer.take() {
                        ctx.cancel_future(h);
                    }
                    act.retry_timer = Some(ctx.run_later(delay, |act, ctx| {
                        act.retry_timer = None;
                        act.retry_at = None;
                        act.start_send(ctx);
                    }));
                }
            }
        }));
    }

    fn persist_state(&self, error: Option<String>) {
        let db = self.core.db.clone();
        let dest = self.destination.clone();
        let failures = self.failures as i32;
        let retry_at = now_ms()
            + self
                .retry_at
                .map(|t| {
                    t.saturating_duration_since(std::time::Instant::now())
                        .as_millis() as i64
                })
                .unwrap_or(0);
        let success = error.is_none().then(now_ms);
        actix::spawn(async move {
            let d = dest.clone();
            if let Err(e) = db
                .write(&dest, move |c| {
                    fstore::set_destination_state(
                        c,
                        &d,
                        failures,
                        retry_at,
                        success,
                        error.as_deref(),
                    )
                })
                .await
            {
                tracing::warn!(destination = %dest, error = %e, "could not record retry state");
            }
        });
    }
}

enum Sent {
    Nothing,
    Some(usize),
}

/// Whether a destination speaks only Linearized Matrix (the reference implementation says so
/// with `"m.linearized": true` in its key answer). Such a server processes a transaction's
/// PDUs until the first one it refuses, answers 500 and drops the rest, and does not
/// de-duplicate retried transactions: it gets one PDU per transaction.
fn linearized_only(c: &mut crate::storage::AnyConnection, dest: &str) -> bool {
    matches!(fstore::server_key_response(c, dest), Ok(Some((json, _)))
        if serde_json::from_str::<Value>(&json)
            .ok()
            .and_then(|v| v.get("m.linearized").and_then(Value::as_bool))
            == Some(true))
}

/// How many times a linearized-only destination may answer a one-PDU transaction with 500
/// `M_UNKNOWN` (its way of refusing an event) before the PDU is given up for it.
const REFUSALS_BEFORE_DROP: u32 = 3;

/// Reads the oldest queued items, sends them as one transaction, and removes them on success.
async fn send_one_transaction(
    core: &Core,
    client: &FederationClient,
    dest: &str,
    failures: u32,
) -> Result<Sent, String> {
    let d = dest.to_owned();
    let (pdu_rows, edu_rows, lm_only) = core
        .db
        .read(move |c| {
            let lm_only = linearized_only(c, &d);
            let max_pdus = if lm_only { 1 } else { MAX_PDUS };
            Ok((
                fstore::peek_queue(c, &d, KIND_PDU, max_pdus)?,
                fstore::peek_queue(c, &d, KIND_EDU, MAX_EDUS)?,
                lm_only,
            ))
        })
        .await
        .map_err(|e| e.to_string())?;
    if pdu_rows.is_empty() && edu_rows.is_empty() {
        return Ok(Sent::Nothing);
    }
    let ids: Vec<String> = pdu_rows.iter().map(|r| r.payload.clone()).collect();
    let rows = core
        .db
        .read(move |c| events::get_events(c, &ids))
        .await
        .map_err(|e| e.to_string())?;
    let by_id: HashMap<String, String> = rows.into_iter().map(|r| (r.event_id, r.json)).collect();
    let mut pdus = Vec::new();
    for r in &pdu_rows {
        match by_id
            .get(&r.payload)
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
        {
            Some(v) => pdus.push(v),
            None => {
                tracing::warn!(destination = dest, event = %r.payload, "queued event is gone; skipping")
            }
        }
    }
    let edus: Vec<Value> = edu_rows
        .iter()
        .filter_map(|r| serde_json::from_str(&r.payload).ok())
        .collect();
    let max_id = pdu_rows
        .iter()
        .chain(edu_rows.iter())
        .map(|r| r.id)
        .max()
        .unwrap_or(0);
    let txn_id = format!("{max_id}_{}", pdu_rows.len() + edu_rows.len());
    let body = json!({
        "origin": core.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
        "edus": edus,
    });
    let path = format!("/_matrix/federation/v1/send/{}", enc(&txn_id));
    let resp = match client.request("PUT", dest, &path, Some(&body)).await {
        Ok(r) => r,
        Err(e)
            if lm_only
                && e.status() == Some(500)
                && e.errcode() == Some("M_UNKNOWN")
                && failures + 1 >= REFUSALS_BEFORE_DROP =>
        {
            tracing::warn!(destination = dest, events = ?pdu_rows.iter().map(|r| &r.payload).collect::<Vec<_>>(), error = %e, "destination keeps refusing; giving the event up for it");
            serde_json::json!({})
        }
        Err(e) => return Err(e.to_string()),
    };
    if let Some(failed) = resp.get("pdus").and_then(|p| p.as_object()) {
        for (id, result) in failed {
            if let Some(err) = result.get("error") {
                tracing::warn!(destination = dest, event = %id, error = %err, "destination rejected our event");
            }
        }
    }
    let done: Vec<i64> = pdu_rows
        .iter()
        .chain(edu_rows.iter())
        .map(|r| r.id)
        .collect();
    let n = done.len();
    let d = dest.to_owned();
    core.db
        .write(dest, move |c| fstore::dequeue(c, &d, &done))
        .await
        .map_err(|e| e.to_string())?;
    Ok(Sent::Some(n))
}

impl Actor for DestinationActor {
    type Context = Context<Self>;
}

impl Handler<Wake> for DestinationActor {
    type Result = ();

    fn handle(&mut self, msg: Wake, ctx: &mut Self::Context) {
        if self.retry_at.is_some_and(|t| t > std::time::Instant::now()) && !msg.force {
            // Backing off; the retry timer will send (new work is in the queue).
            return;
        }
        if msg.force
            && let Some(h) = self.retry_timer.take()
        {
            ctx.cancel_future(h);
            self.retry_at = None;
        }
        self.start_send(ctx);
    }
}
