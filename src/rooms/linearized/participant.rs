//! The participant role: the room's hub, and the local sends waiting for the hub's echo.
//!
//! # When the hub is unreachable
//!
//! A participant does not queue its users' events: an LPDU is checked against the state the
//! participant holds *now*, and only the hub can place it. If the `/send` to the hub fails,
//! the client gets the error at once (502 `M_UNKNOWN`, "unable to reach ...") and nothing is
//! stored. The LPDU is kept with the client's transaction ID, so a retry with the same
//! transaction ID sends the *same* LPDU (same timestamp, same LPDU event ID) and the hub can
//! never apply it twice. If the hub accepted the LPDU but its echo does not arrive in time,
//! the client gets an error saying so; the event appears in the timeline when the echo comes,
//! and a retry of the transaction is then answered with its final event ID.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ruma::{CanonicalJsonObject, OwnedEventId};
use tokio::sync::oneshot;

use crate::error::Result;
use crate::rooms::messages::TxnKey;

/// How long a participant remembers an unanswered send.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// A local send waiting for the hub's echo.
pub struct Waiter {
    pub replies: Vec<oneshot::Sender<Result<OwnedEventId>>>,
    pub txn: Option<TxnKey>,
    since: Instant,
}

pub struct Participant {
    hub: String,
    /// LPDU event ID → who waits for its echo.
    waiting: HashMap<String, Waiter>,
    /// Client transaction → the LPDU sent for it (event ID and JSON).
    by_txn: HashMap<TxnKey, (String, CanonicalJsonObject, Instant)>,
}

impl Participant {
    pub fn new(hub: String) -> Self {
        Self {
            hub,
            waiting: HashMap::new(),
            by_txn: HashMap::new(),
        }
    }

    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// The LPDU already sent for a client transaction.
    pub fn lpdu_for_txn(&self, txn: &TxnKey) -> Option<(String, CanonicalJsonObject)> {
        self.by_txn
            .get(txn)
            .map(|(id, l, _)| (id.clone(), l.clone()))
    }

    /// Registers a send waiting for the echo of `lpdu_id`.
    pub fn wait(
        &mut self,
        lpdu_id: &str,
        lpdu: &CanonicalJsonObject,
        txn: Option<TxnKey>,
    ) -> oneshot::Receiver<Result<OwnedEventId>> {
        self.prune();
        let (tx, rx) = oneshot::channel();
        if let Some(t) = &txn {
            self.by_txn.insert(
                t.clone(),
                (lpdu_id.to_owned(), lpdu.clone(), Instant::now()),
            );
        }
        let w = self
            .waiting
            .entry(lpdu_id.to_owned())
            .or_insert_with(|| Waiter {
                replies: Vec::new(),
                txn: None,
                since: Instant::now(),
            });
        w.replies.push(tx);
        if w.txn.is_none() {
            w.txn = txn;
        }
        rx
    }

    /// The sends waiting for this LPDU's echo (taken: the echo has arrived).
    pub fn take_waiter(&mut self, lpdu_id: &str) -> Option<Waiter> {
        let w = self.waiting.remove(lpdu_id)?;
        if let Some(t) = &w.txn {
            self.by_txn.remove(t);
        }
        Some(w)
    }

    fn prune(&mut self) {
        self.waiting.retain(|_, w| w.since.elapsed() < FORGET_AFTER);
        self.by_txn
            .retain(|_, (_, _, at)| at.elapsed() < FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_transaction_reuses_its_lpdu_until_the_echo() {
        let mut p = Participant::new("hub.example".into());
        let txn = TxnKey::send("@u:p", "D", "!r:h", "m.room.message", "t1".into());
        let lpdu = CanonicalJsonObject::new();
        let _rx1 = p.wait("$l", &lpdu, Some(txn.clone()));
        assert_eq!(p.lpdu_for_txn(&txn).map(|x| x.0), Some("$l".to_owned()));
        let _rx2 = p.wait("$l", &lpdu, Some(txn.clone()));
        let w = p.take_waiter("$l").unwrap();
        assert_eq!(
            w.replies.len(),
            2,
            "both attempts are answered by the one echo"
        );
        assert_eq!(w.txn, Some(txn.clone()));
        assert!(p.lpdu_for_txn(&txn).is_none());
        assert!(p.take_waiter("$l").is_none());
        assert!(p.waiting.is_empty());
    }
}
