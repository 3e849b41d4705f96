//! Outliers: events we hold only to authorize others (a joined room's state and auth chain,
//! auth events fetched to fill a gap). Each is checked against its own auth events before it
//! is stored; one that fails is stored as rejected (so nothing built on it is accepted).
//! They get no stream position and never show in a timeline. The room actor writes them
//! (`StoreOutliers`): nothing here writes to storage.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use weft_protocol::{Pdu, RoomVersion, auth};

use super::RoomRegistry;
use super::messages::StoreOutliers;
use super::persist::NewGroup;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::rooms::view::pdu_of;
use crate::storage::events::{self, NewEvent};

/// Orders events so that each comes after the events it cites in `auth_events`. Ends on any
/// input: in rooms of v1/v2 (event IDs chosen by senders) a hostile server can send auth events
/// that cite each other; the cycle's events are ordered arbitrarily among themselves (the
/// auth checks then reject them).
pub fn auth_order(pdus: Vec<Pdu>) -> Vec<Pdu> {
    let ids: HashSet<String> = pdus.iter().map(|p| p.event_id().to_string()).collect();
    let mut by_id: HashMap<String, Pdu> = pdus
        .into_iter()
        .map(|p| (p.event_id().to_string(), p))
        .collect();
    let mut done: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(by_id.len());
    let mut keys: Vec<String> = by_id.keys().cloned().collect();
    keys.sort_by_key(|k| by_id.get(k).map(|p| p.depth()).unwrap_or(0));
    let mut started: HashSet<String> = HashSet::new();
    for start in keys {
        let mut stack = vec![(start, false)];
        while let Some((id, expanded)) = stack.pop() {
            if done.contains(&id) {
                continue;
            }
            // Met again before it is finished: only on an auth cycle.
            if !expanded && !started.insert(id.clone()) {
                continue;
            }
            if expanded {
                done.insert(id.clone());
                if let Some(p) = by_id.remove(&id) {
                    out.push(p);
                }
                continue;
            }
            stack.push((id.clone(), true));
            if let Some(p) = by_id.get(&id) {
                for a in p.auth_events() {
                    let a = a.to_string();
                    if ids.contains(&a) && !done.contains(&a) {
                        stack.push((a, false));
                    }
                }
            }
        }
    }
    out
}

/// Checks outliers and has the room actor store them; returns the IDs of those rejected.
pub async fn store(
    core: &Core,
    rooms: &RoomRegistry,
    room_id: &str,
    version: RoomVersion,
    pdus: Vec<Pdu>,
) -> Result<Vec<String>> {
    Ok(store_checked(core, rooms, room_id, version, pdus).await?.0)
}

/// [`store`], also returning the events that passed (shared, marked as checked: for the
/// caller to hand to the room actor with what it admits next, see
/// [`super::messages::InboundPdus::checked_events`]).
pub async fn store_checked(
    core: &Core,
    rooms: &RoomRegistry,
    room_id: &str,
    version: RoomVersion,
    pdus: Vec<Pdu>,
) -> Result<(Vec<String>, Vec<Arc<Pdu>>)> {
    if pdus.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let ordered = auth_order(pdus);
    // Auth checks need lookups of earlier auth events: do them on a read connection.
    let checked: Vec<(Arc<Pdu>, Option<String>)> = core
        .db
        .read(move |c| {
            let mut known: HashMap<String, Arc<Pdu>> = HashMap::new();
            let mut out = Vec::with_capacity(ordered.len());
            for pdu in ordered {
                let verdict = {
                    let needed: Vec<String> =
                        pdu.auth_events().iter().map(|a| a.to_string()).collect();
                    let mut local: HashMap<String, Arc<Pdu>> = HashMap::new();
                    for id in needed.iter().cloned().chain(create_id(&pdu, version)) {
                        if let Some(p) = known.get(&id) {
                            local.insert(id, Arc::clone(p));
                        } else if let Some(row) = events::get_event(c, &id)?
                            && let Ok(mut p) = pdu_of(&row, version)
                        {
                            p.set_rejected(row.rejected.is_some());
                            local.insert(id, Arc::new(p));
                        }
                    }
                    auth::check_against_auth_events(version, &pdu, |id| {
                        local.get(id.as_str()).cloned()
                    })
                };
                let rejected = verdict.err().map(|e| e.0);
                let mut pdu = pdu;
                pdu.set_rejected(rejected.is_some());
                let pdu = Arc::new(pdu);
                known.insert(pdu.event_id().to_string(), Arc::clone(&pdu));
                out.push((pdu, rejected));
            }
            Ok(out)
        })
        .await?;
    let rejected: Vec<String> = checked
        .iter()
        .filter(|(_, r)| r.is_some())
        .map(|(p, _)| p.event_id().to_string())
        .collect();
    let rows: Vec<NewEvent> = checked
        .iter()
        .map(|(p, rejected)| NewEvent {
            rejected: rejected.clone(),
            ..super::persist::event_row(p, room_id, None)
        })
        .collect();
    store_rows(rooms, room_id, Vec::new(), rows).await?;
    if !rejected.is_empty() {
        tracing::info!(
            room = room_id,
            count = rejected.len(),
            "outliers rejected by their auth events"
        );
    }
    let passed = checked
        .into_iter()
        .filter(|(_, r)| r.is_none())
        .map(|(p, _)| p)
        .collect();
    Ok((rejected, passed))
}

/// Has the room's actor store an event fetched with the state before it (a missing prev
/// event, with the `/state` answer at it): an outlier whose `state_before` is a new full
/// state group of `state`. An event already held without a state gets this one.
pub async fn store_with_state(
    core: &Core,
    rooms: &RoomRegistry,
    room_id: &str,
    pdu: Pdu,
    state: crate::storage::state::StateDelta,
) -> Result<()> {
    let group = NewGroup {
        id: core.next_state_group(),
        parent: None,
        entries: state,
    };
    let row = NewEvent {
        state_before: Some(group.id),
        ..super::persist::event_row(&pdu, room_id, None)
    };
    store_rows(rooms, room_id, vec![group], vec![row]).await
}

/// Hands outlier rows (and the state groups they name) to the room's actor, which writes them.
async fn store_rows(
    rooms: &RoomRegistry,
    room_id: &str,
    groups: Vec<NewGroup>,
    rows: Vec<NewEvent>,
) -> Result<()> {
    let id = ruma::OwnedRoomId::try_from(room_id)
        .map_err(|_| Error::bad_json("outliers of an invalid room ID"))?;
    rooms.send(&id, StoreOutliers { groups, rows }).await?
}

fn create_id(pdu: &Pdu, version: RoomVersion) -> Option<String> {
    (version.room_id_from_create_event() && pdu.kind_str() != "m.room.create")
        .then(|| format!("${}", &pdu.room_id().as_str()[1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1_event(id: &str, auth: &[&str]) -> Pdu {
        let auth: Vec<_> = auth.iter().map(|a| json!([a, {"sha256": "h"}])).collect();
        let json = json!({
            "event_id": id, "type": "m.room.power_levels", "state_key": "", "room_id": "!r:a.test",
            "sender": "@u:a.test", "content": {}, "origin_server_ts": 1, "depth": 2,
            "prev_events": [], "auth_events": auth, "hashes": {"sha256": "h"}, "signatures": {},
        });
        Pdu::from_received(json, RoomVersion::V1).unwrap()
    }

    #[test]
    fn auth_order_puts_auth_events_first_and_ends_on_cycles() {
        let order = |pdus: Vec<Pdu>| -> Vec<String> {
            auth_order(pdus)
                .iter()
                .map(|p| p.event_id().to_string())
                .collect()
        };
        let chain = vec![
            v1_event("$c:a.test", &["$b:a.test"]),
            v1_event("$a:a.test", &[]),
            v1_event("$b:a.test", &["$a:a.test"]),
        ];
        assert_eq!(order(chain), ["$a:a.test", "$b:a.test", "$c:a.test"]);
        // A hostile cycle (possible in v1/v2 only) used to loop forever.
        let cycle = vec![
            v1_event("$x:a.test", &["$y:a.test"]),
            v1_event("$y:a.test", &["$x:a.test"]),
            v1_event("$z:a.test", &["$y:a.test"]),
        ];
        let got = order(cycle);
        assert_eq!(got.len(), 3);
        assert_eq!(got.last().map(String::as_str), Some("$z:a.test"));
    }
}
