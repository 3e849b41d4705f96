//! The hub role: what a hub remembers about its room beyond the room's state, and who gets
//! each event it appends.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use ruma::OwnedEventId;
use weft_protocol::Pdu;

use super::FanoutChange;

/// How many completed LPDUs a hub remembers in memory (older ones are in the database).
const REMEMBERED: usize = 4096;

#[derive(Default)]
pub struct Hub {
    /// LPDU event ID → the event it became, for the most recent completions (a participant
    /// retrying while the first attempt is still being committed).
    completed: HashMap<String, Arc<Pdu>>,
    order: VecDeque<String>,
    /// A fan-out change for one event about to be appended.
    change: Option<(OwnedEventId, FanoutChange)>,
}

impl Hub {
    pub fn completed(&self, lpdu_id: &str) -> Option<Arc<Pdu>> {
        self.completed.get(lpdu_id).cloned()
    }

    pub fn remember(&mut self, lpdu_id: String, pdu: Arc<Pdu>) {
        if self.completed.insert(lpdu_id.clone(), pdu).is_none() {
            self.order.push_back(lpdu_id);
        }
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.completed.remove(&old);
            }
        }
    }

    /// Applies `change` to the fan-out of `event` (the next event appended).
    pub fn change_fanout(&mut self, event: OwnedEventId, change: FanoutChange) {
        self.change = Some((event, change));
    }

    /// The servers an appended event goes to (§9.1, §9.5): every server with a joined user
    /// after the event (so the originator of an LPDU gets its echo), the target's server of a
    /// leave or ban (a kicked or banned user's server learns it), with this event's change
    /// applied; never this server.
    pub fn destinations(
        &mut self,
        pdu: &Pdu,
        joined_after: BTreeSet<String>,
        ours: &str,
    ) -> BTreeSet<String> {
        let mut dests = joined_after;
        if let (Some(target), Some(m)) = (pdu.state_key(), pdu.membership())
            && matches!(m.as_str(), "leave" | "ban")
            && let Some((_, server)) = target.split_once(':')
        {
            dests.insert(server.to_owned());
        }
        if let Some((id, change)) = self.change.take() {
            if id == pdu.event_id() {
                if let Some(s) = change.skip {
                    dests.remove(&s);
                }
                if let Some(a) = change.add {
                    dests.insert(a);
                }
            } else {
                self.change = Some((id, change));
            }
        }
        dests.remove(ours);
        dests.retain(|d| !d.is_empty());
        dests
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_protocol::RoomVersion;
    use weft_protocol::builder::EventDraft;

    fn member(sender: &str, target: &str, membership: &str) -> Pdu {
        let mut d = EventDraft::state(
            "m.room.member",
            target,
            ruma::OwnedUserId::try_from(sender).unwrap(),
            json!({"membership": membership}),
        );
        d.origin_server_ts = 1;
        let room = ruma::OwnedRoomId::try_from("!r:hub").unwrap();
        let prev = OwnedEventId::try_from("$p").unwrap();
        let obj = weft_protocol::lm::build::template(&d, &room, Some(&prev), &[]).unwrap();
        Pdu::from_json(obj, RoomVersion::Linearized).unwrap()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fanout_rules() {
        let mut hub = Hub::default();
        let joined = set(&["hub", "a", "b"]);
        // A message: every joined server but us.
        let msg = member("@u:a", "@u:a", "join");
        assert_eq!(
            hub.destinations(&msg, joined.clone(), "hub"),
            set(&["a", "b"])
        );
        // A kick: the kicked user's server, no longer joined, still hears of it.
        let kick = member("@admin:hub", "@x:c", "leave");
        assert_eq!(
            hub.destinations(&kick, joined.clone(), "hub"),
            set(&["a", "b", "c"])
        );
        let ban = member("@admin:hub", "@x:c", "ban");
        assert_eq!(
            hub.destinations(&ban, joined.clone(), "hub"),
            set(&["a", "b", "c"])
        );
        // An invite to a server with nobody joined goes through /invite, not /send.
        let invite = member("@admin:hub", "@x:c", "invite");
        assert_eq!(
            hub.destinations(&invite, joined.clone(), "hub"),
            set(&["a", "b"])
        );
        // send_join: the joiner learns its join from the answer.
        let join = member("@y:d", "@y:d", "join");
        hub.change_fanout(
            join.owned_event_id(),
            FanoutChange {
                skip: Some("d".into()),
                add: None,
            },
        );
        // The change waits for its own event.
        assert_eq!(
            hub.destinations(&msg, joined.clone(), "hub"),
            set(&["a", "b"])
        );
        let with_d = set(&["hub", "a", "b", "d"]);
        assert_eq!(
            hub.destinations(&join, with_d.clone(), "hub"),
            set(&["a", "b"])
        );
        // ... and applies once.
        assert_eq!(
            hub.destinations(&join, with_d, "hub"),
            set(&["a", "b", "d"])
        );
    }

    #[test]
    fn remembers_a_bounded_number_of_completions() {
        let mut hub = Hub::default();
        let pdu = Arc::new(member("@u:a", "@u:a", "join"));
        for i in 0..(REMEMBERED + 10) {
            hub.remember(format!("$l{i}"), Arc::clone(&pdu));
        }
        assert!(hub.completed("$l0").is_none());
        assert!(hub.completed(&format!("$l{}", REMEMBERED + 9)).is_some());
        assert_eq!(hub.completed.len(), REMEMBERED);
    }
}
