//! Outbound delivery, the part that sits below rooms: the durable per-destination queue and
//! the handles through which rooms (and E2EE) reach other servers without knowing the
//! transport.
//!
//! # Design
//!
//! * **The queue is a table** (`outbound_queue`, `storage::federation`): one row per
//!   (destination, item), of a kind — [`KIND_PDU`] (an event ID) or [`KIND_EDU`] (an EDU's
//!   JSON) — under increasing IDs ([`queue_id`]; they name transactions, so they never
//!   repeat): a process-wide counter on a single node ([`start_queue_ids_above`]), the
//!   PostgreSQL sequence `cluster_queue_ids` in a cluster ([`use_shared_queue_ids`]), taken
//!   inside the enqueuing transaction so a room's rows are numbered in its commit order.
//! * **Enqueue inside the caller's transaction.** A room actor's batch and an E2EE write job
//!   queue their rows in the same database transaction as the change itself
//!   ([`enqueue_pdu_in_txn`], [`enqueue_edu_in_txn`]), so a row exists if and only if the
//!   change committed. EDU writers note their destinations on the writer thread
//!   ([`take_noted`]) so the job's caller knows whom to wake.
//! * **Wake after the commit** through [`Delivery::wake`]. Who sends is not known here: the
//!   federation transport registers a [`Waker`] at start-up (its per-destination actors).
//!   Without one (federation disabled) nothing is queued ([`Delivery::is_on`]).
//! * **Linearized Matrix participants** hand a local user's LPDU straight to the room's hub
//!   (the user's send waits for the hub's answer): [`HubLink`] is that one call, also
//!   registered by the transport.
//!
//! * **What the operator sees** of the sender ([`DestinationView`], [`DeliveryStatus`]) is
//!   plain data here, so the admin endpoints can show it without naming the transport.
//!
//! This module knows nothing of rooms, events or HTTP; `federation::outbound` reads the
//! queue and sends it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use ruma::CanonicalJsonObject;
use serde_json::Value;

use crate::storage::{AnyConnection, StorageResult, federation as fstore, now_ms};

/// Queue row kinds.
pub const KIND_PDU: &str = "pdu";
pub const KIND_EDU: &str = "edu";

/// Queue row IDs: process-wide, because queue rows are written inside many writers'
/// transactions.
static QUEUE_IDS: AtomicI64 = AtomicI64::new(0);

/// A fresh queue row ID.
pub fn next_queue_id() -> i64 {
    QUEUE_IDS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Makes every later queue ID greater than `floor` (at start-up: above every ID ever used).
pub fn start_queue_ids_above(floor: i64) {
    QUEUE_IDS.fetch_max(floor, Ordering::Relaxed);
}

/// Cluster mode: queue IDs come from the database's sequence from now on (several processes
/// write the one queue).
static SHARED_IDS: AtomicBool = AtomicBool::new(false);

/// Switches queue IDs to the cluster's sequence (cluster start-up, before any enqueue).
pub fn use_shared_queue_ids() {
    SHARED_IDS.store(true, Ordering::Relaxed);
}

/// A fresh queue row ID for a row written on `conn`: the cluster's sequence in cluster mode,
/// the process-wide counter otherwise.
pub fn queue_id(conn: &mut AnyConnection) -> StorageResult<i64> {
    if SHARED_IDS.load(Ordering::Relaxed) {
        crate::storage::cluster::next_queue_id(conn)
    } else {
        Ok(next_queue_id())
    }
}

thread_local! {
    /// Destinations given work by the write job running on this (writer) thread.
    static NOTED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Queues a PDU (by event ID) for `destination` inside the caller's transaction.
pub fn enqueue_pdu_in_txn(
    conn: &mut AnyConnection,
    destination: &str,
    event_id: &str,
    now: i64,
) -> StorageResult<()> {
    let id = queue_id(conn)?;
    fstore::enqueue(conn, id, destination, KIND_PDU, event_id, now)
}

/// Queues an EDU inside the caller's transaction (a write job), noting the destination so
/// the job's caller can wake it after the commit ([`take_noted`]).
pub fn enqueue_edu_in_txn(
    conn: &mut AnyConnection,
    destination: &str,
    edu_type: &str,
    content_json: &str,
) -> StorageResult<()> {
    let payload = format!(
        "{{\"edu_type\":{},\"content\":{content_json}}}",
        Value::String(edu_type.to_owned())
    );
    let id = queue_id(conn)?;
    fstore::enqueue(conn, id, destination, KIND_EDU, &payload, now_ms())?;
    NOTED.with(|n| n.borrow_mut().push(destination.to_owned()));
    Ok(())
}

/// Takes (and clears) the destinations noted on this thread.
pub fn take_noted() -> Vec<String> {
    NOTED.with(|n| std::mem::take(&mut *n.borrow_mut()))
}

/// Whoever sends the queue: told that a destination has new rows.
pub trait Waker: Send + Sync {
    fn wake(&self, destination: &str);
}

/// A boxed future answering a [`HubLink`] call (not `Send`: it runs on the caller's arbiter).
pub type HubSend = Pin<Box<dyn Future<Output = crate::error::Result<()>>>>;

/// A Linearized Matrix participant's direct line to a room's hub.
pub trait HubLink: Send + Sync {
    /// Sends one LPDU (ID `lpdu_id`) to `hub`; an error when the hub refuses it or cannot
    /// be reached.
    fn send_lpdu(&self, hub: String, lpdu: CanonicalJsonObject, lpdu_id: String) -> HubSend;
}

/// The handles, registered once at start-up by the transport (none when federation is off).
#[derive(Default)]
pub struct Delivery {
    waker: OnceLock<Arc<dyn Waker>>,
    hub: OnceLock<Arc<dyn HubLink>>,
}

impl Delivery {
    /// Registers the transport (once; later calls are ignored).
    pub fn register(&self, waker: Arc<dyn Waker>, hub: Arc<dyn HubLink>) {
        let _ = self.waker.set(waker);
        let _ = self.hub.set(hub);
    }

    /// Outbound delivery is on: rows queued now will be sent.
    pub fn is_on(&self) -> bool {
        self.waker.get().is_some()
    }

    /// `destination` has new rows (after their commit).
    pub fn wake(&self, destination: &str) {
        if let Some(w) = self.waker.get() {
            w.wake(destination);
        }
    }

    /// The line to Linearized Matrix hubs, when federation is on.
    pub fn hub_link(&self) -> Option<Arc<dyn HubLink>> {
        self.hub.get().cloned()
    }
}

/// One destination as the operator sees it (`GET /_weft/admin/v1/destinations`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DestinationView {
    pub server_name: String,
    /// Rows (PDUs and EDUs) still owed.
    pub backlog: i64,
    pub failures: u32,
    /// Unreachable: probed until it answers.
    pub down: bool,
    /// In catch-up mode: its queue is compacted to the latest event per room.
    pub catch_up: bool,
    pub last_success_ts: Option<i64>,
    pub last_contact_ts: Option<i64>,
    pub last_inbound_ts: Option<i64>,
    /// When the next full transaction may go (backoff), if backing off.
    pub next_retry_ts: Option<i64>,
    /// When it is next probed, if it is down and probes are on.
    pub next_probe_ts: Option<i64>,
    pub last_error: Option<String>,
    /// What ended its last outage: `probe`, `contact`, `answer`, `reset` or `new_work`
    /// (the backoff timer or fresh work).
    pub recovered_by: Option<String>,
    /// When the sign of life that ended the last outage came (ms).
    pub recovery_signal_ts: Option<i64>,
    /// When the first transaction after it went out (ms).
    pub recovery_sent_ts: Option<i64>,
    /// When that transaction was delivered (ms).
    pub recovered_ts: Option<i64>,
    /// Whether its actor is running.
    pub active: bool,
}

/// The outbound sender as the operator sees it (`GET /_weft/admin/v1/destinations`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryStatus {
    pub destinations: Vec<DestinationView>,
    /// Probes sent to unreachable destinations since start.
    pub probes_sent: u64,
    /// Per-destination actors running now.
    pub active_actors: usize,
}
