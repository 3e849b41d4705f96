//! Sliding-sync connections: what each `(user, device, conn_id)` has been sent, by `pos`.
//!
//! A `pos` is `<nonce>_<seq>`: the nonce names one life of a connection (a request without
//! `pos` starts a new one), the sequence number one response of it. For each of the last
//! [`KEPT_POSITIONS`] responses the store keeps a [`PosState`] (the stream position the
//! response reached and which rooms it had sent up to where), so a client that lost a
//! response and repeats its request with the older `pos` is answered correctly. Anything
//! else — a `pos` never issued, from another connection, another user, or from before a
//! restart (connections live in memory) — is unknown: 400 `M_UNKNOWN_POS`, and the client
//! starts over, as the MSC intends.
//!
//! Memory is bounded: at most [`MAX_PER_USER`] connections per user and [`MAX_TOTAL`] in
//! all; the least recently used goes first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

/// Responses per connection a client may still repeat a request from.
pub const KEPT_POSITIONS: usize = 4;
pub const MAX_PER_USER: usize = 16;
pub const MAX_TOTAL: usize = 50_000;

/// What a room's last delivery covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The stream position the room was sent up to.
    pub upto: i64,
    /// The room's configuration then (timeline limit and required state); a change sends
    /// the room again in full.
    pub fingerprint: String,
}

/// What one response had delivered when it was issued.
#[derive(Debug, Clone, Default)]
pub struct PosState {
    /// Stream position reached (`None` before the first response).
    pub stream: Option<i64>,
    pub typing: i64,
    pub rooms: HashMap<String, Sent>,
    /// Per list: its count and the room IDs in its windows.
    pub lists: BTreeMap<String, (usize, Vec<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    device: String,
    conn_id: String,
}

struct Conn {
    nonce: String,
    next_seq: u64,
    positions: VecDeque<(u64, Arc<PosState>)>,
    last_used: Instant,
}

/// Why a `pos` is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PosError {
    Malformed,
    Unknown,
}

#[derive(Default)]
pub struct Connections {
    conns: Mutex<HashMap<Key, Conn>>,
}

/// A connection being answered: where it resumes from.
#[derive(Debug, Clone)]
pub struct Resumed {
    pub nonce: String,
    pub state: Arc<PosState>,
}

fn parse_pos(pos: &str) -> Result<(&str, u64), PosError> {
    let (nonce, seq) = pos.rsplit_once('_').ok_or(PosError::Malformed)?;
    if nonce.is_empty() || nonce.len() > 64 {
        return Err(PosError::Malformed);
    }
    let seq = seq.parse().map_err(|_| PosError::Malformed)?;
    Ok((nonce, seq))
}

impl Connections {
    /// Resumes a connection from `pos`, or (no `pos`) starts it afresh, forgetting what an
    /// earlier life of it had been sent.
    pub fn resume(
        &self,
        user: &str,
        device: &str,
        conn_id: &str,
        pos: Option<&str>,
    ) -> Result<Resumed, PosError> {
        let key = Key {
            user: user.to_owned(),
            device: device.to_owned(),
            conn_id: conn_id.to_owned(),
        };
        let mut conns = self.conns.lock();
        let Some(pos) = pos else {
            let nonce = crate::random::random_string(12);
            conns.insert(
                key.clone(),
                Conn {
                    nonce: nonce.clone(),
                    next_seq: 1,
                    positions: VecDeque::new(),
                    last_used: Instant::now(),
                },
            );
            evict(&mut conns, &key);
            return Ok(Resumed {
                nonce,
                state: Arc::new(PosState::default()),
            });
        };
        let (nonce, seq) = parse_pos(pos)?;
        let conn = conns.get_mut(&key).ok_or(PosError::Unknown)?;
        if conn.nonce != nonce {
            return Err(PosError::Unknown);
        }
        let state = conn
            .positions
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, st)| Arc::clone(st))
            .ok_or(PosError::Unknown)?;
        conn.last_used = Instant::now();
        Ok(Resumed {
            nonce: nonce.to_owned(),
            state,
        })
    }

    /// Records a response's state and answers its `pos`. A connection restarted meanwhile
    /// (another request without `pos`) keeps its new life; this `pos` is then unknown.
    pub fn commit(
        &self,
        user: &str,
        device: &str,
        conn_id: &str,
        nonce: &str,
        state: PosState,
    ) -> String {
        let key = Key {
            user: user.to_owned(),
            device: device.to_owned(),
            conn_id: conn_id.to_owned(),
        };
        let mut conns = self.conns.lock();
        match conns.get_mut(&key) {
            Some(conn) if conn.nonce == nonce => {
                let seq = conn.next_seq;
                conn.next_seq += 1;
                conn.positions.push_back((seq, Arc::new(state)));
                while conn.positions.len() > KEPT_POSITIONS {
                    conn.positions.pop_front();
                }
                conn.last_used = Instant::now();
                format!("{nonce}_{seq}")
            }
            _ => format!("{nonce}_0"),
        }
    }

    /// Number of live connections (for the status page and tests).
    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the least recently used connections over the per-user and total caps, never `keep`.
fn evict(conns: &mut HashMap<Key, Conn>, keep: &Key) {
    loop {
        let of_user: Vec<(&Key, Instant)> = conns
            .iter()
            .filter(|(k, _)| k.user == keep.user && *k != keep)
            .map(|(k, c)| (k, c.last_used))
            .collect();
        let victim = if of_user.len() >= MAX_PER_USER {
            of_user
                .iter()
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| (*k).clone())
        } else if conns.len() > MAX_TOTAL {
            conns
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
        } else {
            None
        };
        match victim {
            Some(k) => {
                conns.remove(&k);
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_resume_and_unknown_ones_are_refused() {
        let c = Connections::default();
        let fresh = c.resume("@a:x", "D", "room-list", None).unwrap();
        assert!(fresh.state.stream.is_none());
        let p1 = c.commit(
            "@a:x",
            "D",
            "room-list",
            &fresh.nonce,
            PosState {
                stream: Some(5),
                ..Default::default()
            },
        );
        let r = c.resume("@a:x", "D", "room-list", Some(&p1)).unwrap();
        assert_eq!(r.state.stream, Some(5));
        // The same pos again (a lost response): still answered.
        assert!(c.resume("@a:x", "D", "room-list", Some(&p1)).is_ok());
        // Another user, device or connection: unknown.
        for (u, d, id) in [
            ("@b:x", "D", "room-list"),
            ("@a:x", "E", "room-list"),
            ("@a:x", "D", "encryption"),
        ] {
            assert_eq!(
                c.resume(u, d, id, Some(&p1)).unwrap_err(),
                PosError::Unknown,
                "{u} {d} {id}"
            );
        }
        // Never issued, or malformed.
        let (nonce, _) = p1.rsplit_once('_').unwrap();
        assert_eq!(
            c.resume("@a:x", "D", "room-list", Some(&format!("{nonce}_99")))
                .unwrap_err(),
            PosError::Unknown
        );
        for bad in ["", "nounderscore", "_1", "abc_x", "abc_-1"] {
            assert_eq!(
                c.resume("@a:x", "D", "room-list", Some(bad)).unwrap_err(),
                PosError::Malformed,
                "{bad}"
            );
        }
        // Only the last few positions are kept.
        let mut last = p1.clone();
        for i in 0..KEPT_POSITIONS as i64 {
            last = c.commit(
                "@a:x",
                "D",
                "room-list",
                nonce,
                PosState {
                    stream: Some(10 + i),
                    ..Default::default()
                },
            );
        }
        assert_eq!(
            c.resume("@a:x", "D", "room-list", Some(&p1)).unwrap_err(),
            PosError::Unknown
        );
        assert!(c.resume("@a:x", "D", "room-list", Some(&last)).is_ok());
        // A restart of the connection forgets the old life.
        c.resume("@a:x", "D", "room-list", None).unwrap();
        assert_eq!(
            c.resume("@a:x", "D", "room-list", Some(&last)).unwrap_err(),
            PosError::Unknown
        );
    }

    #[test]
    fn connections_per_user_are_capped() {
        let c = Connections::default();
        for i in 0..(MAX_PER_USER + 5) {
            c.resume("@a:x", "D", &format!("c{i}"), None).unwrap();
        }
        assert_eq!(c.len(), MAX_PER_USER);
        c.resume("@b:x", "D", "c0", None).unwrap();
        assert_eq!(c.len(), MAX_PER_USER + 1);
    }
}
