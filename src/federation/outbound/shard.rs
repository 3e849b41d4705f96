//! Outbound delivery in a cluster (`docs/CLUSTER.md`): each destination is sent by one node.
//!
//! # Design
//!
//! * **A destination is leased like a room.** Its key in `cluster_leases` is
//!   `dest:<server name>` (room IDs begin with `!`, so the two never meet). With no valid
//!   lease the destination goes to its rendezvous owner among the live nodes, which acquires
//!   it at a new epoch (`Cluster::route`, the same code rooms use); the lease is renewed with
//!   the node's rooms and lost the same way.
//! * **One transaction in flight, cluster-wide.** Only the node holding the lease runs the
//!   destination's actor, and the actor checks the lease before each transaction and every
//!   100 ms while one is in flight: a transaction whose node loses the lease (renewal found it
//!   taken, or the node's local term ran out) is abandoned at once. The local term ends a
//!   quarter TTL before the database's, so by the time another node can acquire the lease the
//!   former owner has stopped sending. (A node *paused* mid-request may have bytes already in
//!   the socket; the receiver de-duplicates PDUs by event ID, and a retried transaction of the
//!   same rows has the same ID.)
//! * **The queue is shared; the wake-up is routed.** Any node writes queue rows (a room's
//!   owner, an E2EE write), all in the one database, with IDs from the cluster's sequence. The
//!   wake-up after the commit goes to the destination's actor here if this node holds the
//!   lease, else to the lease holder (or rendezvous owner) as a [`Notice`] on NATS, where it
//!   is routed again (at most [`MAX_HOPS`] times: views of the live set may differ a moment).
//! * **Nothing depends on a wake-up arriving.** Every node sweeps every half TTL for
//!   destinations with queued rows whose lease is missing or expired (a dead owner's, or one
//!   released when its actor went idle just as a row was queued) and takes those placed on
//!   it, and wakes the destinations it holds that have rows (a lost notice). So a dead node's
//!   destinations move within one TTL plus half a TTL.
//! * **Idle actors give their lease back**, so a destination with nothing to send holds no
//!   lease and the next work goes to its current rendezvous owner (rebalancing for free).
//!
//! * **Signs of life cross.** A sign of life (an authenticated request from the
//!   destination, an answer to one of our requests, a probe answered) seen on a node that
//!   does not send the destination is passed to the lease holder as a notice (at most one a
//!   second per destination and node; none when nobody holds the lease), and the holder
//!   takes it as its own: a destination that was down ends its backoff and is sent at once.
//!   The operator's reset crosses the same way and clears the holder's failure count too.
//!
//! Per node, as before: backoff, probes and the operator's view cover the destinations this
//! node sends.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Shared, WakeReason};
use crate::cluster::{Cluster, Route};

/// The lease key prefix of destinations.
pub(crate) const KEY_PREFIX: &str = "dest:";

/// How many times a wake-up may be handed on between nodes.
const MAX_HOPS: u8 = 2;

/// A node passes on at most one sign of life per destination this often.
const SIGN_OF_LIFE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The most destinations whose last passed-on sign of life a node remembers (remote servers
/// choose their names, so the table is bounded).
const SIGNS_REMEMBERED: usize = 4096;

/// A destination's lease key.
pub(crate) fn key(destination: &str) -> String {
    format!("{KEY_PREFIX}{destination}")
}

/// A wake-up for a destination this node does not send, handed to the node that does.
#[derive(Debug, Serialize, Deserialize)]
struct Notice {
    destination: String,
    reason: String,
    hops: u8,
}

/// Where a destination's wake-up goes, decided by the lease (acquired here if the destination
/// is unleased and placed here).
pub(crate) fn route_wake(shared: &Arc<Shared>, destination: &str, reason: WakeReason, hops: u8) {
    let Some(cluster) = shared.cluster.get().cloned() else {
        return;
    };
    let (s, dest) = (Arc::clone(shared), destination.to_owned());
    shared.arbiter.spawn(async move {
        match cluster.route(&key(&dest)).await {
            Ok(Route::Local { .. }) => s.wake_local(&dest, reason),
            Ok(Route::Remote(node)) if hops < MAX_HOPS => {
                let notice = Notice {
                    destination: dest.clone(),
                    reason: reason.as_str().to_owned(),
                    hops: hops + 1,
                };
                match serde_json::to_vec(&notice) {
                    Ok(body) => cluster.notify(&node, body),
                    Err(e) => tracing::warn!(error = %e, "cluster: notice not encoded"),
                }
            }
            // Handed on too often: the owner's sweep finds the rows.
            Ok(Route::Remote(node)) => {
                tracing::debug!(destination = %dest, node, "cluster: wake-up not handed on again")
            }
            Err(e) => {
                tracing::warn!(destination = %dest, error = %e, "cluster: no owner for a destination yet; the sweep will retry")
            }
        }
    });
}

/// A sign of life of `destination`, which another node may be sending: handed to the lease
/// holder (dropped when nobody holds the lease, as then nobody is backing off).
///
/// At most one notice per destination leaves every [`SIGN_OF_LIFE_EVERY`]. A sign that comes
/// sooner is not dropped: it schedules one notice for the end of that interval (and signs
/// coming while one is scheduled ride on it). Dropping it would lose exactly the sign that
/// matters when a destination goes down and comes back within the interval: the holder's
/// backoff began after the last notice, and only a later one ends it.
pub(crate) fn pass_on_sign_of_life(shared: &Arc<Shared>, destination: &str, reason: WakeReason) {
    let Some(cluster) = shared.cluster.get().cloned() else {
        return;
    };
    let wait = {
        let now = std::time::Instant::now();
        let mut seen = shared.lives_passed_on.lock();
        // Each entry is when the destination's latest notice left or is due to leave.
        let wait = match seen.get(destination) {
            Some(due) if *due > now => return,
            Some(last) if now.saturating_duration_since(*last) < SIGN_OF_LIFE_EVERY => {
                (*last + SIGN_OF_LIFE_EVERY).saturating_duration_since(now)
            }
            _ => std::time::Duration::ZERO,
        };
        if seen.len() >= SIGNS_REMEMBERED {
            seen.retain(|_, t| *t > now || now.saturating_duration_since(*t) < SIGN_OF_LIFE_EVERY);
            if seen.len() >= SIGNS_REMEMBERED {
                seen.clear();
            }
        }
        seen.insert(destination.to_owned(), now + wait);
        wait
    };
    let dest = destination.to_owned();
    shared.arbiter.spawn(async move {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        match cluster.lease_holder(&key(&dest)).await {
            Ok(Some(node)) => {
                let notice = Notice {
                    destination: dest.clone(),
                    reason: reason.as_str().to_owned(),
                    hops: MAX_HOPS,
                };
                tracing::debug!(destination = %dest, node, reason = reason.as_str(), "cluster: passing on a sign of life");
                match serde_json::to_vec(&notice) {
                    Ok(body) => cluster.notify(&node, body),
                    Err(e) => tracing::warn!(error = %e, "cluster: notice not encoded"),
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(destination = %dest, error = %e, "cluster: no lease holder to tell of a sign of life"),
        }
    });
}

/// Joins outbound delivery to the cluster: notices from other nodes are routed here, and the
/// sweep runs every half TTL on the federation arbiter.
pub(crate) async fn attach(
    shared: &Arc<Shared>,
    cluster: Arc<Cluster>,
) -> std::result::Result<(), String> {
    let _ = shared.cluster.set(Arc::clone(&cluster));
    let weak = Arc::downgrade(shared);
    cluster
        .on_notice(Arc::new(move |body: Vec<u8>| {
            let Some(s) = weak.upgrade() else { return };
            match serde_json::from_slice::<Notice>(&body) {
                Ok(n) => match WakeReason::parse(&n.reason) {
                    _ if s.core.is_local(&n.destination) => {
                        tracing::warn!(reason = %n.reason, "cluster: bad delivery notice")
                    }
                    Some(reason @ (WakeReason::NewWork | WakeReason::Reset)) => {
                        route_wake(&s, &n.destination, reason, n.hops)
                    }
                    // A sign of life another node saw: ours to act on only while we send it.
                    Some(reason) => {
                        if s.owns(&n.destination) {
                            tracing::info!(destination = %n.destination, reason = %n.reason, "cluster: a sign of life seen on another node");
                            s.alive(&n.destination, reason);
                        }
                    }
                    None => tracing::warn!(reason = %n.reason, "cluster: bad delivery notice"),
                },
                Err(e) => tracing::warn!(error = %e, "cluster: bad delivery notice"),
            }
        }))
        .await?;
    let weak = Arc::downgrade(shared);
    let every = cluster.ttl() / 2;
    shared.arbiter.spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else { break };
            sweep(&s, &cluster).await;
        }
    });
    Ok(())
}

/// Takes the unleased destinations with queued rows that are placed here, and wakes the ones
/// this node holds that have rows.
async fn sweep(shared: &Arc<Shared>, cluster: &Arc<Cluster>) {
    let node = cluster.node_id.clone();
    let found = shared
        .core
        .db
        .read(move |c| crate::storage::cluster::destinations_to_sweep(c, &node, KEY_PREFIX))
        .await;
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: outbound sweep failed");
            return;
        }
    };
    for (dest, mine) in found {
        if shared.core.is_local(&dest) {
            continue;
        }
        if mine && cluster.holds(&key(&dest)).is_some() {
            shared.wake_local(&dest, WakeReason::NewWork);
        } else if mine {
            // Ours in the database but past this node's local term: renewed or re-acquired.
            route_wake(shared, &dest, WakeReason::NewWork, MAX_HOPS);
        } else if cluster.placed_on(&key(&dest)) == cluster.node_id {
            tracing::info!(destination = %dest, "cluster: taking over an unsent destination");
            route_wake(shared, &dest, WakeReason::NewWork, MAX_HOPS);
        }
    }
}
