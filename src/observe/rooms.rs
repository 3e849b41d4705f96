//! Per-room actor statistics, kept by the room registry (the one door to room actors).
//!
//! actix does not expose the length of an actor's mailbox, so the registry counts it: a
//! message is *waiting* from the moment it is handed to the actor's address until its
//! answer arrives (so the message being handled counts too). `high_water` is the largest
//! number ever waiting at once since the actor's room was first seen; compared with
//! `actors.room_mailbox` it answers "is this mailbox too small?".

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::storage::now_ms;

#[derive(Default)]
pub struct RoomStats {
    pub waiting: AtomicI64,
    pub high_water: AtomicI64,
    pub handled: AtomicU64,
    pub events: AtomicU64,
    pub last_activity_ms: AtomicI64,
}

/// A copy of one room's numbers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomStatsSnapshot {
    pub room_id: String,
    pub waiting: i64,
    pub high_water: i64,
    pub handled: u64,
    pub events: u64,
    pub last_activity_ms: i64,
}

/// Every room seen since start (pruned of rooms idle for long).
#[derive(Default)]
pub struct RoomStatsMap {
    map: Mutex<HashMap<String, Arc<RoomStats>>>,
}

/// Held while a message is with a room actor.
pub struct InFlight(Arc<RoomStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.handled.fetch_add(1, Ordering::Relaxed);
        self.0.last_activity_ms.store(now_ms(), Ordering::Relaxed);
        super::metrics::room_message_handled();
    }
}

/// Rooms idle longer than this (and with nothing waiting) leave the table.
const PRUNE_AFTER_MS: i64 = 15 * 60 * 1000;

impl RoomStatsMap {
    pub fn get(&self, room_id: &str) -> Arc<RoomStats> {
        let mut map = self.map.lock();
        if let Some(s) = map.get(room_id) {
            return Arc::clone(s);
        }
        let s = Arc::new(RoomStats::default());
        map.insert(room_id.to_owned(), Arc::clone(&s));
        s
    }

    /// Counts a message handed to a room's actor until the returned guard drops.
    pub fn enter(&self, room_id: &str) -> InFlight {
        let s = self.get(room_id);
        let now = s.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        s.high_water.fetch_max(now, Ordering::Relaxed);
        s.last_activity_ms.store(now_ms(), Ordering::Relaxed);
        InFlight(s)
    }

    /// How long a room has had nothing waiting for its actor, in milliseconds (0 while
    /// something waits; `i64::MAX` for a room not seen). Does not add the room.
    pub fn idle_ms(&self, room_id: &str) -> i64 {
        match self.map.lock().get(room_id) {
            None => i64::MAX,
            Some(s) if s.waiting.load(Ordering::Relaxed) > 0 => 0,
            Some(s) => now_ms().saturating_sub(s.last_activity_ms.load(Ordering::Relaxed)),
        }
    }

    /// Marks a room active now (a message is on its way to its actor).
    pub fn touch(&self, room_id: &str) {
        self.get(room_id)
            .last_activity_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// Counts events appended to a room's timeline.
    pub fn appended(&self, room_id: &str, n: u64) {
        self.get(room_id).events.fetch_add(n, Ordering::Relaxed);
    }

    /// A copy of every room's numbers, pruning rooms long idle.
    pub fn snapshot(&self) -> Vec<RoomStatsSnapshot> {
        let now = now_ms();
        let mut map = self.map.lock();
        map.retain(|_, s| {
            s.waiting.load(Ordering::Relaxed) > 0
                || now - s.last_activity_ms.load(Ordering::Relaxed) < PRUNE_AFTER_MS
        });
        let mut out: Vec<RoomStatsSnapshot> = map
            .iter()
            .map(|(id, s)| RoomStatsSnapshot {
                room_id: id.clone(),
                waiting: s.waiting.load(Ordering::Relaxed).max(0),
                high_water: s.high_water.load(Ordering::Relaxed),
                handled: s.handled.load(Ordering::Relaxed),
                events: s.events.load(Ordering::Relaxed),
                last_activity_ms: s.last_activity_ms.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| {
            b.waiting
                .cmp(&a.waiting)
                .then(b.last_activity_ms.cmp(&a.last_activity_ms))
        });
        out
    }
}

static GLOBAL: std::sync::OnceLock<RoomStatsMap> = std::sync::OnceLock::new();

/// The process's room statistics (one room registry per process).
pub fn global() -> &'static RoomStatsMap {
    GLOBAL.get_or_init(RoomStatsMap::default)
}

/// A room actor committed `n` events, `local` of them created here.
pub fn committed(room_id: &str, n: usize, local: usize) {
    global().appended(room_id, n as u64);
    super::metrics::room_batch(n, local);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_high_water_and_handled() {
        let m = RoomStatsMap::default();
        let a = m.enter("!a:x");
        let b = m.enter("!a:x");
        let snap = m.snapshot();
        assert_eq!(snap[0].waiting, 2);
        assert_eq!(snap[0].high_water, 2);
        assert_eq!(m.idle_ms("!a:x"), 0, "busy while messages wait");
        assert_eq!(m.idle_ms("!unseen:x"), i64::MAX);
        drop(a);
        drop(b);
        assert!((0..60_000).contains(&m.idle_ms("!a:x")));
        m.appended("!a:x", 3);
        let _c = m.enter("!a:x");
        let snap = m.snapshot();
        assert_eq!(snap[0].waiting, 1);
        assert_eq!(snap[0].high_water, 2);
        assert_eq!(snap[0].handled, 2);
        assert_eq!(snap[0].events, 3);
    }
}
