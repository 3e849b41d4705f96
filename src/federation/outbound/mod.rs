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
//!   federation arbiter and stopped after `actors.destination_idle_secs` with nothing to
//!   do (a wake-up counter checked under the registry lock means no wake-up is lost to a
//!   stopping actor). It keeps exactly one transaction in flight: it reads the oldest ≤50
//!   PDUs and ≤100 EDUs, sends them as one `PUT /send/{txnId}`, and on success deletes them
//!   and at once sends the next (so a backlog goes out as back-to-back full transactions,
//!   in queue order, to-device and device-list EDUs included). The transaction ID is
//!   derived from the highest queue ID in it, so a retry of the same content reuses the
//!   same ID and the receiver can de-duplicate it.
//! * **Backoff.** A destination that *answers* with an error is retried after
//!   `retry_min_ms × retry_multiplier^n` (±20% jitter), capped at `retry_max_ms`; the
//!   failure count and next retry time are persisted per destination.
//! * **Return detection is not the backoff.** A destination that does not answer at all
//!   (refused, reset, timed out) is *down*: instead of retrying full transactions on a
//!   growing schedule, the prober ([`probe`]) sends it a cheap `GET
//!   /_matrix/federation/v1/version` every `probe_interval_ms`, whatever the outage length,
//!   within a global budget of `probe_per_second` (prioritised by queue size and recent
//!   contact), so a server with thousands of dead peers stays cheap and a peer that returns
//!   is found within seconds. Full transactions to a down destination go only at
//!   `retry_max_ms` (in case probes cannot get through where transactions could).
//! * **Every sign of life counts.** A down destination's backoff ends and its queue is
//!   sent at once when it is shown to be up: a successful probe, any authenticated request
//!   from it ([`Sender::mark_up`]), any answer to a request of ours (a key query, a join:
//!   the federation client's answer hook), or the operator's reset ([`Sender::reset`],
//!   `POST /_weft/admin/v1/destinations/{server}/reset`). A destination that answers with
//!   errors is not down; signs of life do not make its transactions go faster than its
//!   backoff allows.
//! * **Catch-up mode** ([`catchup`]): a failing destination whose queue passes
//!   `catchup_max_queue` rows or `catchup_max_age_secs` is compacted to the latest event
//!   per room (plus what cannot be fetched later: to-device messages, the latest
//!   device-list update per user); on its return it pulls the rest with
//!   `get_missing_events`. Storage stays bounded; nothing is lost. The bounds are checked
//!   after each failed transaction or probe (so at the probe budget's pace).
//! * **Linearized peers** (those announcing `m.linearized`) get one PDU per transaction
//!   and a long request timeout (`linearized_request_timeout_ms`): they append a re-sent
//!   transaction twice, so the first attempt must be allowed to finish.
//! * **Waking early.** New items wake the actor (`try_send`: the mailbox is bounded by
//!   `actors.destination_mailbox`, and a dropped wake-up costs nothing because the work is
//!   in the database). What the sender knows of each destination (backlog, failures, last
//!   success and contact, next retry and probe, catch-up mode) is a plain snapshot for the
//!   operator ([`Sender::destinations`]).
//! * **In a cluster** ([`shard`]) each destination is sent by the one node holding its
//!   lease; the others hand their wake-ups to it, and a dead node's destinations move
//!   within the lease time.

mod catchup;
mod probe;
mod shard;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::client::{FedError, FederationClient, enc};
use crate::core::Core;
use crate::storage::{events, federation as fstore, now_ms};

pub use crate::delivery::{KIND_EDU, KIND_PDU};

const MAX_PDUS: i64 = 50;
const MAX_EDUS: i64 = 100;

/// Why a destination actor is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeReason {
    /// New rows were queued for it (or the server started with rows queued).
    NewWork,
    /// It made an authenticated request to us.
    Contact,
    /// It answered one of our requests (a key query, a join, ...).
    Answer,
    /// A liveness probe was answered.
    Probe,
    /// The operator reset its backoff.
    Reset,
}

impl WakeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewWork => "new_work",
            Self::Contact => "contact",
            Self::Answer => "answer",
            Self::Probe => "probe",
            Self::Reset => "reset",
        }
    }

    /// The reason named by [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::NewWork,
            Self::Contact,
            Self::Answer,
            Self::Probe,
            Self::Reset,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// Whether the reason proves the destination is up.
    fn is_sign_of_life(self) -> bool {
        !matches!(self, Self::NewWork)
    }
}

/// What the sender knows of a destination (in memory; the retry state is also persisted in
/// `destinations`). Kept while it has work queued or is failing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    /// Consecutive failed transactions.
    failures: u32,
    /// The last failure was "unreachable" (no answer at all): a sign of life ends the
    /// backoff. A destination that answers with an error is not `down`; only its backoff
    /// timer retries it.
    down: bool,
    /// When the next full transaction may go (wall clock, ms), while backing off.
    retry_at_ms: Option<i64>,
    /// When the next probe is due (ms).
    next_probe_ms: i64,
    probing: bool,
    /// A transaction is in flight.
    sending: bool,
    /// When the transaction in flight (or the last one) was started (ms).
    sent_at_ms: i64,
    /// Rows queued, as last seen (exact after every read of the queue, approximate between).
    backlog: i64,
    catch_up: bool,
    last_success_ms: Option<i64>,
    /// Last time it answered or contacted us.
    last_contact_ms: Option<i64>,
    /// Last authenticated request from it.
    last_inbound_ms: Option<i64>,
    last_error: Option<String>,
    /// What ended its last outage, when that sign of life came, when the first
    /// transaction after it was started and when it was delivered.
    recovered_by: Option<(&'static str, i64, i64, i64)>,
    /// The sign of life that woke it and when, until the next successful transaction.
    woken_by: Option<(&'static str, i64)>,
}

pub use crate::delivery::DestinationView;

/// A delay of `ms` ± 20%.
pub(crate) fn jittered(ms: i64) -> i64 {
    let mut j = [0u8; 1];
    let _ = crate::random::getrandom_fill(&mut j);
    let factor = 0.8 + (j[0] as f64 / 255.0) * 0.4;
    ((ms.max(1) as f64) * factor) as i64
}

/// The retry delay after `failures` consecutive failures (before jitter).
pub fn backoff_ms(cfg: &crate::config::FederationConfig, failures: u32) -> i64 {
    let exp = cfg
        .retry_multiplier
        .max(1.0)
        .powi(failures.saturating_sub(1).min(60) as i32);
    (cfg.retry_min_ms as f64 * exp).min(cfg.retry_max_ms as f64) as i64
}

struct ActorEntry {
    id: u64,
    addr: Addr<DestinationActor>,
    /// Wake-ups sent; the actor counts those it handled and stops idle only when the two
    /// agree (checked under the registry lock, so no wake-up is lost to a stopping actor).
    wakes: Arc<AtomicU64>,
}

/// State shared by the sender, its actors and the prober.
pub(crate) struct Shared {
    core: Arc<Core>,
    client: FederationClient,
    arbiter: ArbiterHandle,
    actors: Mutex<HashMap<String, ActorEntry>>,
    health: Mutex<HashMap<String, Health>>,
    next_actor_id: AtomicU64,
    /// Probes sent since start.
    probes: AtomicU64,
    /// Cluster mode: destinations are sent by the node holding their lease ([`shard`]).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// Cluster mode: when this node last passed a sign of life of a destination it does not
    /// send to the node that does (at most one a second each; bounded, [`shard`]).
    lives_passed_on: Mutex<HashMap<String, std::time::Instant>>,
}

impl Shared {
    /// Wakes `destination`'s actor here, or (in a cluster, when another node sends it) hands
    /// the wake-up to that node.
    fn wake(self: &Arc<Self>, destination: &str, reason: WakeReason) {
        if self.core.is_local(destination) {
            return;
        }
        if self.owns(destination) {
            self.wake_local(destination, reason);
        } else {
            shard::route_wake(self, destination, reason, 0);
        }
    }

    /// Whether this node sends `destination` now (always, on a single node).
    fn owns(&self, destination: &str) -> bool {
        self.cluster
            .get()
            .is_none_or(|c| c.holds(&shard::key(destination)).is_some())
    }

    fn wake_local(self: &Arc<Self>, destination: &str, reason: WakeReason) {
        let mut actors = self.actors.lock();
        for _attempt in 0..2 {
            let entry = match actors.get(destination) {
                Some(e) if e.addr.connected() => e,
                _ => {
                    let id = self.next_actor_id.fetch_add(1, Ordering::Relaxed);
                    let wakes = Arc::new(AtomicU64::new(0));
                    let (shared, dest, w) =
                        (Arc::clone(self), destination.to_owned(), Arc::clone(&wakes));
                    let cap = self.core.config.actors.destination_mailbox;
                    let addr = DestinationActor::start_in_arbiter(&self.arbiter, move |ctx| {
                        ctx.set_mailbox_capacity(cap);
                        DestinationActor::new(shared, dest, id, w)
                    });
                    actors.insert(destination.to_owned(), ActorEntry { id, addr, wakes });
                    &actors[destination]
                }
            };
            entry.wakes.fetch_add(1, Ordering::Relaxed);
            match entry.addr.try_send(Wake {
                reason,
                at: now_ms(),
            }) {
                Ok(()) => return,
                // A full mailbox already holds wake-ups; the work itself is in the database.
                Err(SendError::Full(_)) => {
                    entry.wakes.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                Err(SendError::Closed(_)) => {
                    actors.remove(destination);
                }
            }
        }
    }

    /// A sign of life from `destination`: a down destination's backoff ends and its queue
    /// is sent at once. Only destinations we owe something are tracked, so remote input
    /// cannot grow this state.
    fn alive(self: &Arc<Self>, destination: &str, reason: WakeReason) {
        if !self.owns(destination) {
            // Cluster mode: another node sends it, and its backoff is the one to end.
            shard::pass_on_sign_of_life(self, destination, reason);
            return;
        }
        let now = now_ms();
        let wake = {
            let mut health = self.health.lock();
            let Some(h) = health.get_mut(destination) else {
                return;
            };
            h.last_contact_ms = Some(now);
            if reason == WakeReason::Contact {
                h.last_inbound_ms = Some(now);
            }
            // A transaction in flight will tell by itself.
            h.down && !h.sending
        };
        if wake {
            self.wake(destination, reason);
        }
    }
}

/// Wakes destinations with [`WakeReason::NewWork`] (registered in `core.delivery`).
struct NewWorkWaker(Arc<Shared>);

impl crate::delivery::Waker for NewWorkWaker {
    fn wake(&self, destination: &str) {
        self.0.wake(destination, WakeReason::NewWork);
    }
}

/// Routes outbound work to destination actors.
pub struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    pub fn new(
        core: Arc<Core>,
        client: FederationClient,
    ) -> Result<Self, crate::storage::StorageError> {
        let max = core.db.read_blocking(fstore::max_queue_id)?;
        // Queue IDs name transactions, which receivers de-duplicate forever: they must never
        // repeat, even after the queue empties and the server restarts.
        crate::delivery::start_queue_ids_above(max.max(now_ms().saturating_mul(1000)));
        let arbiter = Arbiter::new().handle();
        let shared = Arc::new(Shared {
            core,
            client: client.clone(),
            arbiter: arbiter.clone(),
            actors: Mutex::new(HashMap::new()),
            health: Mutex::new(HashMap::new()),
            next_actor_id: AtomicU64::new(1),
            probes: AtomicU64::new(0),
            cluster: std::sync::OnceLock::new(),
            lives_passed_on: Mutex::new(HashMap::new()),
        });
        // Any answer from a destination is a sign of life.
        let weak = Arc::downgrade(&shared);
        client.set_answer_hook(Arc::new(move |dest: &str| {
            if let Some(s) = weak.upgrade() {
                s.alive(dest, WakeReason::Answer);
            }
        }));
        arbiter.spawn(probe::run(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    /// Cluster mode: from now on this node sends only the destinations it holds the lease
    /// of, hands other wake-ups to their owners, and sweeps for destinations left unsent.
    pub async fn attach_cluster(
        &self,
        cluster: Arc<crate::cluster::Cluster>,
    ) -> Result<(), String> {
        shard::attach(&self.shared, cluster).await
    }

    /// There is new work for `destination`.
    pub fn wake(&self, destination: &str) {
        self.shared.wake(destination, WakeReason::NewWork);
    }

    /// The handle through which writers below (room actors, E2EE) wake destinations.
    pub fn waker(&self) -> Arc<dyn crate::delivery::Waker> {
        Arc::new(NewWorkWaker(Arc::clone(&self.shared)))
    }

    /// `destination` just made a signed request to us: it is up.
    pub fn mark_up(&self, destination: &str) {
        self.shared.alive(destination, WakeReason::Contact);
    }

    /// The operator's reset: forgets `server`'s failures and backoff and sends at once.
    /// `false` when nothing is known of it (no queue, no retry state).
    pub async fn reset(&self, server: &str) -> Result<bool, crate::storage::StorageError> {
        let s = server.to_owned();
        let (queued, persisted) = self
            .shared
            .core
            .db
            .read(move |c| {
                Ok((
                    fstore::queue_stats(c, &s)?.0,
                    fstore::destination_state(c, &s)?,
                ))
            })
            .await?;
        let in_memory = {
            let mut health = self.shared.health.lock();
            match health.get_mut(server) {
                Some(h) => {
                    h.failures = 0;
                    h.down = false;
                    h.retry_at_ms = None;
                    h.woken_by = Some((WakeReason::Reset.as_str(), now_ms()));
                    true
                }
                None if queued > 0 => {
                    health.insert(
                        server.to_owned(),
                        Health {
                            backlog: queued,
                            woken_by: Some((WakeReason::Reset.as_str(), now_ms())),
                            ..Default::default()
                        },
                    );
                    true
                }
                None => false,
            }
        };
        if !in_memory && persisted.is_none() {
            return Ok(false);
        }
        let (d, db) = (server.to_owned(), self.shared.core.db.clone());
        db.write(server, move |c| {
            fstore::set_destination_state(c, &d, 0, 0, None, None)
        })
        .await?;
        tracing::info!(
            destination = server,
            queued,
            "operator reset the destination's backoff"
        );
        self.shared.wake(server, WakeReason::Reset);
        Ok(true)
    }

    /// Every destination with queued work or retry state, for the operator.
    pub async fn destinations(&self) -> Result<Vec<DestinationView>, crate::storage::StorageError> {
        let (depths, rows) = self
            .shared
            .core
            .db
            .read(|c| Ok((fstore::queue_depths(c)?, fstore::destination_rows(c)?)))
            .await?;
        let depths: HashMap<String, i64> = depths.into_iter().collect();
        let health = self.shared.health.lock().clone();
        let active: std::collections::HashSet<String> = self
            .shared
            .actors
            .lock()
            .iter()
            .filter(|(_, e)| e.addr.connected())
            .map(|(d, _)| d.clone())
            .collect();
        let mut names: std::collections::BTreeSet<String> = depths.keys().cloned().collect();
        names.extend(rows.iter().map(|r| r.server_name.clone()));
        names.extend(health.keys().cloned());
        let rows: HashMap<String, fstore::DestinationRow> = rows
            .into_iter()
            .map(|r| (r.server_name.clone(), r))
            .collect();
        let probes_on = self.shared.core.config.federation.probe_per_second > 0.0;
        Ok(names
            .into_iter()
            .map(|name| {
                let h = health.get(&name);
                let row = rows.get(&name);
                DestinationView {
                    backlog: depths.get(&name).copied().unwrap_or(0),
                    failures: h
                        .map(|h| h.failures)
                        .or_else(|| row.map(|r| r.failures.max(0) as u32))
                        .unwrap_or(0),
                    down: h.is_some_and(|h| h.down),
                    catch_up: h.is_some_and(|h| h.catch_up),
                    last_success_ts: h
                        .and_then(|h| h.last_success_ms)
                        .or_else(|| row.and_then(|r| r.last_success_ts)),
                    last_contact_ts: h.and_then(|h| h.last_contact_ms),
                    last_inbound_ts: h.and_then(|h| h.last_inbound_ms),
                    next_retry_ts: match h {
                        Some(h) => h.retry_at_ms,
                        None => row.map(|r| r.retry_at).filter(|t| *t > now_ms()),
                    },
                    next_probe_ts: h.filter(|h| h.down && probes_on).map(|h| h.next_probe_ms),
                    last_error: h
                        .and_then(|h| h.last_error.clone())
                        .or_else(|| row.and_then(|r| r.last_error.clone())),
                    recovered_by: h.and_then(|h| h.recovered_by).map(|r| r.0.to_owned()),
                    recovery_signal_ts: h.and_then(|h| h.recovered_by).map(|r| r.1),
                    recovery_sent_ts: h.and_then(|h| h.recovered_by).map(|r| r.2),
                    recovered_ts: h.and_then(|h| h.recovered_by).map(|r| r.3),
                    active: active.contains(&name),
                    server_name: name,
                }
            })
            .collect())
    }

    /// Probes sent since the server started.
    pub fn probes_sent(&self) -> u64 {
        self.shared.probes.load(Ordering::Relaxed)
    }

    /// Destination actors running now.
    pub fn running_actors(&self) -> usize {
        self.shared
            .actors
            .lock()
            .values()
            .filter(|e| e.addr.connected())
            .count()
    }

    /// Queues an EDU for a destination (durably) and wakes its actor.
    pub async fn send_edu(
        &self,
        destination: &str,
        edu: Value,
    ) -> Result<(), crate::storage::StorageError> {
        if self.shared.core.is_local(destination) {
            return Ok(());
        }
        let (d, payload) = (destination.to_owned(), edu.to_string());
        self.shared
            .core
            .db
            .write(destination, move |c| {
                let id = crate::delivery::queue_id(c)?;
                fstore::enqueue(c, id, &d, KIND_EDU, &payload, now_ms())
            })
            .await?;
        self.wake(destination);
        Ok(())
    }

    /// Wakes every destination that has queued work (at start-up), carrying over the
    /// persisted failure count so the backoff continues where it was.
    pub async fn resume_all(&self) {
        let read = self
            .shared
            .core
            .db
            .read(|c| Ok((fstore::queue_depths(c)?, fstore::destination_rows(c)?)))
            .await;
        match read {
            Ok((depths, rows)) => {
                let failures: HashMap<String, i32> = rows
                    .into_iter()
                    .map(|r| (r.server_name, r.failures))
                    .collect();
                {
                    let mut health = self.shared.health.lock();
                    for (dest, n) in &depths {
                        let h = health.entry(dest.clone()).or_default();
                        h.backlog = *n;
                        h.failures = failures.get(dest).copied().unwrap_or(0).max(0) as u32;
                    }
                }
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
        self.shared
            .core
            .db
            .read(fstore::queue_depths)
            .await
            .unwrap_or_default()
    }
}

/// Checks a failing destination's queue against the catch-up bounds and compacts it when
/// it is past them (or already in catch-up mode). Called after a failed transaction or
/// probe, so its cost is bounded by the retry schedule and the probe budget.
async fn enforce_bounds(s: &Arc<Shared>, dest: &str) {
    let cfg = &s.core.config.federation;
    let (max_rows, max_age_ms) = (cfg.catchup_max_queue, cfg.catchup_max_age_secs * 1000);
    let d = dest.to_owned();
    let stats = match s.core.db.read(move |c| fstore::queue_stats(c, &d)).await {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!(destination = dest, error = %e, "could not read the queue size");
            return;
        }
    };
    let (rows, oldest) = stats;
    let already = s.health.lock().get(dest).is_some_and(|h| h.catch_up);
    let too_old = oldest.is_some_and(|t| now_ms() - t > max_age_ms);
    if let Some(h) = s.health.lock().get_mut(dest) {
        h.backlog = rows;
    }
    if rows == 0 || !(already || rows > max_rows || too_old) {
        return;
    }
    let d = dest.to_owned();
    let compacted = s
        .core
        .db
        .write(dest, move |c| {
            let pdus = fstore::queue_payloads(c, &d, KIND_PDU)?;
            let ids: Vec<String> = pdus.iter().map(|(_, e)| e.clone()).collect();
            let rooms: HashMap<String, String> =
                fstore::rooms_of_events(c, &ids)?.into_iter().collect();
            let edus = fstore::queue_payloads(c, &d, KIND_EDU)?;
            let edu_values: Vec<(i64, Value)> = edus
                .iter()
                .map(|(id, p)| (*id, serde_json::from_str(p).unwrap_or(Value::Null)))
                .collect();
            let pdu_refs: Vec<(i64, Option<&str>)> = pdus
                .iter()
                .map(|(id, e)| (*id, rooms.get(e).map(String::as_str)))
                .collect();
            let edu_refs: Vec<(i64, &Value)> = edu_values.iter().map(|(i, v)| (*i, v)).collect();
            let drop = catchup::rows_to_drop(&pdu_refs, &edu_refs);
            fstore::dequeue(c, &d, &drop)?;
            Ok((drop.len(), pdus.len() + edus.len() - drop.len()))
        })
        .await;
    match compacted {
        Ok((dropped, kept)) => {
            if !already {
                tracing::info!(
                    destination = dest,
                    queued = rows,
                    dropped,
                    kept,
                    too_old,
                    "destination switches to catch-up mode"
                );
            }
            if let Some(h) = s.health.lock().get_mut(dest) {
                h.catch_up = true;
                h.backlog = kept as i64;
            }
            crate::observe::metrics::destination_catching_up(dest, true);
        }
        Err(e) => tracing::warn!(destination = dest, error = %e, "could not compact the queue"),
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake {
    pub reason: WakeReason,
    /// When the reason arose (ms).
    pub at: i64,
}

pub struct DestinationActor {
    shared: Arc<Shared>,
    destination: String,
    id: u64,
    wakes: Arc<AtomicU64>,
    handled: u64,
    in_flight: bool,
    again: bool,
    retry_timer: Option<SpawnHandle>,
    idle_timer: Option<SpawnHandle>,
}

impl DestinationActor {
    fn new(shared: Arc<Shared>, destination: String, id: u64, wakes: Arc<AtomicU64>) -> Self {
        Self {
            shared,
            destination,
            id,
            wakes,
            handled: 0,
            in_flight: false,
            again: false,
            retry_timer: None,
            idle_timer: None,
        }
    }

    fn health<R>(&self, f: impl FnOnce(&mut Health) -> R) -> R {
        let mut map = self.shared.health.lock();
        f(map.entry(self.destination.clone()).or_default())
    }

    fn start_send(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            self.again = true;
            return;
        }
        if !self.shared.owns(&self.destination) {
            // Another node sends it now (lease lost or handed over): the work is in the
            // shared queue; hand the wake-up on and let this actor stop.
            tracing::info!(destination = %self.destination, "destination is sent by another node now");
            shard::route_wake(&self.shared, &self.destination, WakeReason::NewWork, 0);
            self.arm_idle(ctx);
            return;
        }
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
        self.in_flight = true;
        self.again = false;
        let failures = self.health(|h| {
            h.sending = true;
            h.sent_at_ms = now_ms();
            h.failures
        });
        let shared = Arc::clone(&self.shared);
        let dest = self.destination.clone();
        crate::observe::metrics::transaction_in_flight(&dest, true);
        let fut = async move {
            let send = send_one_transaction(&shared.core, &shared.client, &dest, failures);
            if shared.cluster.get().is_none() {
                return send.await;
            }
            // One transaction in flight cluster-wide: abandoned as soon as the lease is lost.
            let lost = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if !shared.owns(&dest) {
                        break;
                    }
                }
            };
            tokio::select! {
                r = send => r,
                () = lost => Ok(Sent::NotOwner),
            }
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            act.in_flight = false;
            act.health(|h| h.sending = false);
            crate::observe::metrics::transaction_done(
                &act.destination,
                &res.as_ref().map(|s| matches!(s, Sent::Some { .. })),
            );
            match res {
                Ok(Sent::Nothing) => {
                    act.health(|h| {
                        h.backlog = 0;
                        h.catch_up = false;
                    });
                    crate::observe::metrics::destination_catching_up(&act.destination, false);
                    if act.again {
                        act.start_send(ctx);
                    } else {
                        act.arm_idle(ctx);
                    }
                }
                Ok(Sent::Some { items, remaining }) => act.delivered(ctx, items, remaining),
                Ok(Sent::NotOwner) => {
                    tracing::warn!(destination = %act.destination, "delivery lease lost; transaction abandoned");
                    act.arm_idle(ctx);
                }
                Err(f) => act.failed(ctx, f),
            }
        }));
    }

    fn delivered(&mut self, ctx: &mut Context<Self>, items: usize, remaining: i64) {
        let now = now_ms();
        let (was_failing, woken_by) = self.health(|h| {
            let was = h.failures > 0 || h.down;
            let by = h.woken_by.take();
            if was {
                let (reason, at) = by.unwrap_or((WakeReason::NewWork.as_str(), now));
                h.recovered_by = Some((reason, at, h.sent_at_ms, now));
            }
            h.failures = 0;
            h.down = false;
            h.retry_at_ms = None;
            h.last_success_ms = Some(now);
            h.last_contact_ms = Some(now);
            h.last_error = None;
            h.backlog = remaining;
            (was, by)
        });
        if was_failing {
            tracing::info!(destination = %self.destination, woken_by = woken_by.map_or("backoff timer", |w| w.0), "destination is reachable again");
        }
        tracing::debug!(destination = %self.destination, items, remaining, "transaction delivered");
        if let Some(h) = self.retry_timer.take() {
            ctx.cancel_future(h);
        }
        if was_failing {
            self.persist_state(0, 0, None);
        }
        // Catch-up in bulk: the next full transaction goes at once.
        self.start_send(ctx);
    }

    fn failed(&mut self, ctx: &mut Context<Self>, f: Failure) {
        let cfg = &self.shared.core.config.federation;
        let probes_on = cfg.probe_per_second > 0.0;
        let now = now_ms();
        let (failures, delay) = self.health(|h| {
            h.failures += 1;
            h.down = f.unreachable;
            h.woken_by = None;
            h.last_error = Some(f.message.clone());
            // An unreachable destination is watched by the prober (cheap, within the
            // global budget); a full transaction then goes only at the backoff's cap, in
            // case probes cannot reach it where transactions could. A destination that
            // answers with an error is retried on the backoff schedule.
            let delay = if f.unreachable && probes_on {
                h.next_probe_ms = now + jittered(cfg.probe_interval_ms as i64);
                jittered(cfg.retry_max_ms as i64)
            } else {
                jittered(backoff_ms(cfg, h.failures))
            };
            h.retry_at_ms = Some(now + delay);
            (h.failures, delay)
        });
        tracing::warn!(destination = %self.destination, failures, unreachable = f.unreachable, retry_in_ms = delay, error = %f.message, "delivery failed");
        self.persist_state(failures, now + delay, Some(f.message));
        if let Some(h) = self.retry_timer.take() {
            ctx.cancel_future(h);
        }
        self.retry_timer = Some(ctx.run_later(
            Duration::from_millis(delay.max(1) as u64),
            |act, ctx| {
                act.retry_timer = None;
                act.health(|h| h.retry_at_ms = None);
                act.start_send(ctx);
            },
        ));
        let shared = Arc::clone(&self.shared);
        let dest = self.destination.clone();
        actix::spawn(async move { enforce_bounds(&shared, &dest).await });
    }

    /// Stops the actor after `actors.destination_idle_secs` with nothing to do.
    fn arm_idle(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
        let idle = Duration::from_secs(self.shared.core.config.actors.destination_idle_secs.max(1));
        self.idle_timer = Some(ctx.run_later(idle, |act, ctx| {
            act.idle_timer = None;
            if act.in_flight || act.retry_timer.is_some() {
                return;
            }
            let mut actors = act.shared.actors.lock();
            if act.wakes.load(Ordering::Relaxed) != act.handled {
                // A wake-up is on its way: stay.
                drop(actors);
                act.arm_idle(ctx);
                return;
            }
            if actors.get(&act.destination).is_some_and(|e| e.id == act.id) {
                actors.remove(&act.destination);
            }
            drop(actors);
            let mut health = act.shared.health.lock();
            if health
                .get(&act.destination)
                .is_some_and(|h| h.failures == 0 && h.backlog == 0)
            {
                health.remove(&act.destination);
            }
            drop(health);
            tracing::debug!(destination = %act.destination, "destination actor idle; stopping");
            // Cluster mode: nothing left to send here, so the lease goes back (the next work
            // goes to the destination's rendezvous owner; the sweep catches rows queued
            // in between).
            if let Some(c) = act.shared.cluster.get().cloned() {
                let key = shard::key(&act.destination);
                if let Some(epoch) = c.holds(&key) {
                    act.shared
                        .arbiter
                        .spawn(async move { c.release(&key, epoch).await });
                }
            }
            ctx.stop();
        }));
    }

    fn persist_state(&self, failures: u32, retry_at: i64, error: Option<String>) {
        let db = self.shared.core.db.clone();
        let dest = self.destination.clone();
        let success = error.is_none().then(now_ms);
        actix::spawn(async move {
            let d = dest.clone();
            if let Err(e) = db
                .write(&dest, move |c| {
                    fstore::set_destination_state(
                        c,
                        &d,
                        failures as i32,
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

impl Actor for DestinationActor {
    type Context = Context<Self>;
}

impl Handler<Wake> for DestinationActor {
    type Result = ();

    fn handle(&mut self, msg: Wake, ctx: &mut Self::Context) {
        self.handled += 1;
        let now = now_ms();
        let (backing_off, down) = self.health(|h| {
            if msg.reason == WakeReason::NewWork {
                h.backlog += 1;
            }
            (h.retry_at_ms.is_some_and(|t| t > now), h.down)
        });
        let ends_backoff =
            msg.reason == WakeReason::Reset || (msg.reason.is_sign_of_life() && down);
        if msg.reason == WakeReason::Reset {
            // The operator's reset, made here or on another node: the failures are
            // forgotten too, so the next failure backs off from the start.
            self.health(|h| {
                h.failures = 0;
                h.down = false;
            });
        }
        if backing_off && !ends_backoff {
            // The retry timer (or a sign of life) will send; the work is in the queue.
            return;
        }
        if ends_backoff {
            if let Some(h) = self.retry_timer.take() {
                ctx.cancel_future(h);
            }
            self.health(|h| {
                h.retry_at_ms = None;
                // The first sign of life is what ended the outage.
                h.woken_by.get_or_insert((msg.reason.as_str(), msg.at));
            });
        }
        self.start_send(ctx);
    }
}

/// A failed transaction.
struct Failure {
    message: String,
    /// No answer at all (connection refused, reset, timed out), as opposed to an error
    /// answer.
    unreachable: bool,
}

enum Sent {
    Nothing,
    Some {
        items: usize,
        remaining: i64,
    },
    /// Cluster mode: the destination's lease was lost while the transaction was in flight.
    NotOwner,
}

fn storage_failure(e: impl std::fmt::Display) -> Failure {
    Failure {
        message: e.to_string(),
        unreachable: false,
    }
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
) -> Result<Sent, Failure> {
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
        .map_err(storage_failure)?;
    if pdu_rows.is_empty() && edu_rows.is_empty() {
        return Ok(Sent::Nothing);
    }
    let ids: Vec<String> = pdu_rows.iter().map(|r| r.payload.clone()).collect();
    let rows = core
        .db
        .read(move |c| events::get_events(c, &ids))
        .await
        .map_err(storage_failure)?;
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
    // A linearized peer appends a re-sent transaction twice: give it long enough to answer
    // the first attempt even when it is paused (docs/LINEARIZED.md).
    let timeout = lm_only
        .then(|| Duration::from_millis(core.config.federation.linearized_request_timeout_ms));
    let resp = match client
        .request_within("PUT", dest, &path, Some(&body), timeout)
        .await
    {
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
        Err(e) => {
            return Err(Failure {
                unreachable: matches!(e, FedError::Unreachable { .. }),
                message: e.to_string(),
            });
        }
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
    let remaining = core
        .db
        .write(dest, move |c| {
            fstore::dequeue(c, &d, &done)?;
            Ok(fstore::queue_stats(c, &d)?.0)
        })
        .await
        .map_err(storage_failure)?;
    Ok(Sent::Some {
        items: n,
        remaining,
    })
}
