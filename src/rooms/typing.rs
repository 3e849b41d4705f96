//! Typing notifications: ephemeral, in memory only, with their own serial number.
//!
//! The serial starts at the process start time in milliseconds and counts up, so a sync
//! token from before a restart never looks newer than the state after it. Expired entries
//! are swept by [`Typing::sweep`], which the server runs every second.
//!
//! In cluster mode every change is also handed to the hook set with [`Typing::set_replicator`]
//! (NATS) and replayed on the other nodes with [`Typing::apply_remote`]; each node keeps its
//! own serial, so a typing token is only meaningful to the node that issued it (a `/sync` on
//! another node at worst repeats the current typing state once).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Default)]
struct RoomTyping {
    users: HashMap<String, Instant>,
    /// Serial of the last change.
    serial: i64,
    /// Local users to wake when this room's typing changes.
    audience: Vec<String>,
}

type Replicator = Box<dyn Fn(&str, &str, bool, Duration, &[String]) + Send + Sync>;

pub struct Typing {
    rooms: Mutex<HashMap<String, RoomTyping>>,
    serial: Mutex<i64>,
    replicator: std::sync::OnceLock<Replicator>,
}

impl Default for Typing {
    fn default() -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            serial: Mutex::new(crate::storage::now_ms()),
            replicator: std::sync::OnceLock::new(),
        }
    }
}

impl Typing {
    fn next_serial(&self) -> i64 {
        let mut s = self.serial.lock();
        *s += 1;
        *s
    }

    /// The latest serial (the typing part of a sync token).
    pub fn current(&self) -> i64 {
        *self.serial.lock()
    }

    /// Sets or clears a user's typing state; returns whether anything changed. `audience` is
    /// who to wake (the room's local members).
    pub fn set(
        &self,
        room_id: &str,
        user_id: &str,
        typing: bool,
        timeout: Duration,
        audience: Vec<String>,
    ) -> bool {
        if let Some(replicate) = self.replicator.get() {
            replicate(room_id, user_id, typing, timeout, &audience);
        }
        self.apply_remote(room_id, user_id, typing, timeout, audience)
    }

    /// Cluster mode: every local change also goes to `replicator`.
    pub fn set_replicator(&self, replicator: Replicator) {
        let _ = self.replicator.set(replicator);
    }

    /// Applies a change (made here, or on another node of the cluster) without replicating it.
    pub fn apply_remote(
        &self,
        room_id: &str,
        user_id: &str,
        typing: bool,
        timeout: Duration,
        audience: Vec<String>,
    ) -> bool {
        let mut rooms = self.rooms.lock();
        let room = rooms.entry(room_id.to_owned()).or_default();
        room.audience = audience;
        let changed = if typing {
            room.users
                .insert(user_id.to_owned(), Instant::now() + timeout)
                .is_none()
        } else {
            room.users.remove(user_id).is_some()
        };
        if changed {
            room.serial = self.next_serial();
        }
        changed
    }

    /// Users typing in a room now, and whether that changed after `since`.
    pub fn get(&self, room_id: &str, since: i64) -> Option<Vec<String>> {
        let rooms = self.rooms.lock();
        let room = rooms.get(room_id)?;
        if room.serial <= since {
            return None;
        }
        let now = Instant::now();
        let mut users: Vec<String> = room
            .users
            .iter()
            .filter(|(_, t)| **t > now)
            .map(|(u, _)| u.clone())
            .collect();
        users.sort();
        Some(users)
    }

    /// Removes expired entries; returns the local users to wake.
    pub fn sweep(&self) -> Vec<String> {
        let now = Instant::now();
        let mut wake = Vec::new();
        let mut rooms = self.rooms.lock();
        let mut changed_rooms = Vec::new();
        for (id, room) in rooms.iter_mut() {
            let before = room.users.len();
            room.users.retain(|_, t| *t > now);
            if room.users.len() != before {
                changed_rooms.push(id.clone());
                wake.extend(room.audience.iter().cloned());
            }
        }
        for id in changed_rooms {
            let serial = self.next_serial();
            if let Some(room) = rooms.get_mut(&id) {
                room.serial = serial;
            }
        }
        rooms.retain(|_, r| !r.users.is_empty() || r.serial > 0);
        wake
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_changes_bump_the_serial() {
        let t = Typing::default();
        let start = t.current();
        assert!(t.set("!r", "@a:x", true, Duration::from_secs(30), vec![]));
        assert!(
            !t.set("!r", "@a:x", true, Duration::from_secs(30), vec![]),
            "refresh is no change"
        );
        assert_eq!(t.get("!r", start), Some(vec!["@a:x".to_owned()]));
        let now = t.current();
        assert_eq!(t.get("!r", now), None);
        assert!(t.set("!r", "@a:x", false, Duration::ZERO, vec![]));
        assert_eq!(t.get("!r", now), Some(vec![]));
    }

    #[test]
    fn sweep_expires() {
        let t = Typing::default();
        t.set("!r", "@a:x", true, Duration::ZERO, vec!["@b:x".into()]);
        let before = t.current();
        assert_eq!(t.sweep(), vec!["@b:x".to_owned()]);
        assert_eq!(t.get("!r", before), Some(vec![]));
    }
}
