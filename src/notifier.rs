//! Stream positions and sync wake-ups.
//!
//! Everything a client syncs (room events, account data, receipts, typing, to-device
//! messages, device-list changes) is numbered from ONE in-process counter, so a sync token is
//! a single integer: "everything up to here".
//!
//! Positions are allocated before a write and may commit out of order (two rooms commit on
//! different writers, or in different batches). A reader must never see position 11 and then
//! later find 10 appear, so readers only read up to the **frontier**: the highest position
//! below which every allocated position has completed (committed or abandoned).
//!
//! Waiting `/sync` requests subscribe to their user's channel. When a write completes it names
//! the users it concerns; they are woken once the frontier has passed the write's position
//! (not before, or they would read nothing new and sleep again). Nothing polls the database.
//!
//! [`Notifier::park`] counts the `/sync` requests that have read everything and are now
//! waiting for a wake-up (the operator endpoint `/_weft/admin/v1/sync_waiters` shows it; the
//! wake-up tests wait for it before they send, so they test the wake-up, not a plain read).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

#[derive(Default)]
struct Positions {
    /// Highest position handed out.
    last: i64,
    /// Allocated but not yet completed.
    in_flight: BTreeSet<i64>,
    /// Users to wake once the frontier reaches the key.
    pending: BTreeMap<i64, Vec<String>>,
    frontier: i64,
}

pub struct Notifier {
    positions: Mutex<Positions>,
    users: Mutex<HashMap<String, watch::Sender<i64>>>,
    /// Woken on every frontier advance (for consumers that follow everything).
    all: watch::Sender<i64>,
    /// `/sync` requests parked on a wake-up right now.
    parked: AtomicUsize,
}

/// A parked `/sync` request; counted in [`Notifier::parked`] until dropped.
pub struct Parked<'a>(&'a AtomicUsize);

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Notifier {
    /// Starts the counter after the highest position already stored.
    pub fn new(start_after: i64) -> Self {
        Self {
            positions: Mutex::new(Positions {
                last: start_after,
                frontier: start_after,
                ..Default::default()
            }),
            users: Mutex::new(HashMap::new()),
            all: watch::Sender::new(start_after),
            parked: AtomicUsize::new(0),
        }
    }

    /// Marks a `/sync` request as parked (read everything, waiting for a wake-up) while the
    /// guard lives.
    pub fn park(&self) -> Parked<'_> {
        self.parked.fetch_add(1, Ordering::SeqCst);
        Parked(&self.parked)
    }

    /// Number of `/sync` requests parked right now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::SeqCst)
    }

    /// Allocates the next position; it must later be passed to [`Notifier::complete`].
    pub fn allocate(&self) -> i64 {
        let mut p = self.positions.lock();
        p.last += 1;
        let pos = p.last;
        p.in_flight.insert(pos);
        pos
    }

    /// Completes positions (written or abandoned) and queues wake-ups for `users`.
    pub fn complete(&self, positions: &[i64], users: impl IntoIterator<Item = String>) {
        let to_wake = {
            let mut p = self.positions.lock();
            for pos in positions {
                p.in_flight.remove(pos);
            }
            if let Some(max) = positions.iter().max() {
                let users: Vec<String> = users.into_iter().collect();
                if !users.is_empty() {
                    p.pending.entry(*max).or_default().extend(users);
                }
            }
            let frontier = match p.in_flight.first() {
                Some(first) => first - 1,
                None => p.last,
            };
            p.frontier = frontier;
            let later = p.pending.split_off(&(frontier + 1));
            let due = std::mem::replace(&mut p.pending, later);
            (frontier, due)
        };
        let (frontier, due) = to_wake;
        self.all.send_replace(frontier);
        if due.is_empty() {
            return;
        }
        let mut users = self.users.lock();
        for user in due.into_values().flatten() {
            if let Some(tx) = users.get(&user) {
                if tx.receiver_count() == 0 {
                    users.remove(&user);
                } else {
                    tx.send_replace(frontier);
                }
            }
        }
    }

    /// A position for an ephemeral change that is complete at once (typing), waking `users`.
    pub fn bump(&self, users: impl IntoIterator<Item = String>) -> i64 {
        let pos = self.allocate();
        self.complete(&[pos], users);
        pos
    }

    /// Wakes users without a new position (ephemeral changes with their own counter, such
    /// as typing).
    pub fn wake(&self, users: impl IntoIterator<Item = String>) {
        let frontier = self.frontier();
        let mut map = self.users.lock();
        for user in users {
            if let Some(tx) = map.get(&user) {
                if tx.receiver_count() == 0 {
                    map.remove(&user);
                } else {
                    tx.send_replace(frontier);
                }
            }
        }
    }

    /// Everything up to this position is readable.
    pub fn frontier(&self) -> i64 {
        self.positions.lock().frontier
    }

    /// Subscribes to wake-ups for a user. Subscribe *before* reading, then wait on
    /// `changed()`: a write that completes in between is not missed.
    pub fn subscribe(&self, user: &str) -> watch::Receiver<i64> {
        let mut users = self.users.lock();
        users
            .entry(user.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Subscribes to every frontier advance.
    pub fn subscribe_all(&self) -> watch::Receiver<i64> {
        self.all.subscribe()
    }

    /// Number of users with a waiting sync (for the status page).
    pub fn waiting_users(&self) -> usize {
        self.users
            .lock()
            .values()
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontier_waits_for_the_lowest_in_flight_position() {
        let n = Notifier::new(10);
        let a = n.allocate();
        let b = n.allocate();
        assert_eq!((a, b), (11, 12));
        n.complete(&[b], ["bob".to_owned()]);
        assert_eq!(n.frontier(), 10, "12 is done but 11 is not");
        n.complete(&[a], []);
        assert_eq!(n.frontier(), 12);
    }

    #[test]
    fn wakes_only_when_the_frontier_passes() {
        let n = Notifier::new(0);
        let mut rx = n.subscribe("bob");
        let a = n.allocate();
        let b = n.allocate();
        n.complete(&[b], ["bob".to_owned()]);
        assert!(
            !rx.has_changed().unwrap(),
            "woken before position 1 was readable"
        );
        n.complete(&[a], []);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2);
    }

    #[test]
    fn parked_counts_live_guards() {
        let n = Notifier::new(0);
        assert_eq!(n.parked(), 0);
        let a = n.park();
        let b = n.park();
        assert_eq!(n.parked(), 2);
        drop(a);
        assert_eq!(n.parked(), 1);
        drop(b);
        assert_eq!(n.parked(), 0);
    }

    #[test]
    fn other_users_are_not_woken() {
        let n = Notifier::new(0);
        let rx = n.subscribe("alice");
        n.bump(["bob".to_owned()]);
        assert!(!rx.has_changed().unwrap());
        assert_eq!(n.frontier(), 1);
    }
}
