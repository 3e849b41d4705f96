//! Admission of history: what a `/backfill` answer may add to a room.
//!
//! We ask a server for the events before a point (the `prev_events` of the oldest event we
//! hold in the timeline, which we do not hold). Its answer is untrusted:
//!
//! 1. **Reachability.** Only the events asked for and the events reachable from them by
//!    `prev_events` *inside the answer* are history of that point. Anything else (an event
//!    whose descendants in the answer do not lead to the point) is dropped and logged: it is
//!    not an ancestor of anything we hold, so it is not history we asked for.
//! 2. **The state before each event.** It is derived from what we trust, walking back from
//!    the point: the state after an asked-for event is the state before our oldest event;
//!    the state after an older event is the state before its (first processed) child in the
//!    answer; the state before an event is the state after it, except that a state event's
//!    own key takes back the value its auth events cite for that key (absent if they cite
//!    none). This is exact for a linear history (the common case); where a child merges
//!    several parents, the child's resolved state stands in for each parent's.
//! 3. **Checks.** Each event passes the auth rules against its auth events and against the
//!    state before it (spec steps 4–5); a failure stores it as rejected, which is permanent.
//!    Events we already hold as rejected stay rejected and are not checked again.
//! 4. **Insertion as history.** Accepted events get negative stream positions (older events
//!    lower) and a state group of the state before them; the room's current state, forward
//!    extremities and membership index are untouched. The room actor writes them
//!    ([`crate::rooms::messages::AppendHistory`]).

use std::cell::RefCell;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use ruma::events::StateEventType;
use weft_protocol::{Pdu, RoomVersion, auth};

use crate::rooms::persist::NewGroup;
use crate::rooms::state::{depth_of, make_group};
use crate::rooms::view::pdu_of;
use crate::storage::events::{self, NewEvent};
use crate::storage::state::{self, StateIds};
use crate::storage::{AnyConnection, StorageResult};

/// The events of an answer that are history of `points`: the points themselves (when in the
/// answer) and their ancestors by `prev_events` within the answer. Returns the IDs kept and
/// the IDs dropped.
pub fn reachable(points: &[String], pdus: &HashMap<String, Pdu>) -> (HashSet<String>, Vec<String>) {
    let mut keep: HashSet<String> = HashSet::new();
    let mut stack: Vec<String> = points
        .iter()
        .filter(|p| pdus.contains_key(*p))
        .cloned()
        .collect();
    while let Some(id) = stack.pop() {
        if !keep.insert(id.clone()) {
            continue;
        }
        if let Some(p) = pdus.get(&id) {
            for prev in p.prev_events() {
                let prev = prev.to_string();
                if pdus.contains_key(&prev) && !keep.contains(&prev) {
                    stack.push(prev);
                }
            }
        }
    }
    let mut dropped: Vec<String> = pdus
        .keys()
        .filter(|k| !keep.contains(*k))
        .cloned()
        .collect();
    dropped.sort();
    (keep, dropped)
}

/// The state before `pdu`, given the state after it: a state event's key goes back to the
/// value its auth events cite for that key (or away).
pub fn state_before_from_after(
    pdu: &Pdu,
    after: &StateIds,
    auth_events: &HashMap<String, Arc<Pdu>>,
) -> StateIds {
    let mut before = after.clone();
    let Some(k) = pdu.state_key() else {
        return before;
    };
    let key = (pdu.kind_str(), k.to_owned());
    if after.get(&key).map(String::as_str) != Some(pdu.event_id().as_str()) {
        // The state after it does not hold it (overwritten later in the same fork, or it
        // lost a resolution): the state after it is the best we know of the state before.
        return before;
    }
    let prior = pdu.auth_events().iter().find_map(|a| {
        let e = auth_events.get(a.as_str())?;
        (e.kind_str() == key.0 && e.state_key() == Some(key.1.as_str()))
            .then(|| e.event_id().to_string())
    });
    match prior {
        Some(id) => before.insert(key, id),
        None => before.remove(&key),
    };
    before
}

/// What the room actor writes for a backfill.
#[derive(Debug, Default)]
pub struct HistoryPlan {
    pub groups: Vec<NewGroup>,
    /// Rows in the order written, with their PDUs.
    pub events: Vec<(Arc<Pdu>, NewEvent)>,
    pub accepted: usize,
    pub rejected: usize,
    pub dropped: Vec<String>,
}

/// Where the answer attaches: the oldest event we hold and the state before it.
pub struct Point {
    /// Its `prev_events` we do not hold in the timeline (what was asked for).
    pub wanted: Vec<String>,
    /// The state group before our oldest event, and its delta depth.
    pub group: (i64, i32),
}

/// The oldest timeline event of a room, if its history has a hole (prev events we do not
/// hold in the timeline) and we know the state before it.
pub fn point(conn: &mut AnyConnection, room_id: &str) -> StorageResult<Option<Point>> {
    let oldest = events::timeline_range(conn, room_id, i64::MIN, i64::MAX, 1, false)?;
    let Some(first) = oldest.first() else {
        return Ok(None);
    };
    let Some(g) = first.state_before else {
        return Ok(None);
    };
    let prevs: Vec<String> = serde_json::from_str::<serde_json::Value>(&first.json)
        .ok()
        .and_then(|v| v.get("prev_events").cloned())
        .and_then(|p| serde_json::from_value(p).ok())
        .unwrap_or_default();
    let mut wanted = Vec::new();
    for p in prevs {
        match events::get_event(conn, &p)? {
            Some(r) if r.stream_ordering.is_some() || r.rejected.is_some() => {}
            _ => wanted.push(p),
        }
    }
    if wanted.is_empty() {
        return Ok(None);
    }
    Ok(Some(Point {
        wanted,
        group: (g, state::group_depth(conn, g)?),
    }))
}

/// An event being placed, by depth (deepest first), for the walk back from the point.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Next(u64, String);

/// Checks an answer against the point and plans its insertion. `next_group` and
/// `next_position` allocate state group IDs and (negative, decreasing) stream positions.
pub fn plan(
    conn: &mut AnyConnection,
    room_id: &str,
    version: RoomVersion,
    point: &Point,
    answer: Vec<Pdu>,
    next_group: &dyn Fn() -> i64,
    next_position: &dyn Fn() -> i64,
) -> StorageResult<HistoryPlan> {
    let by_id: HashMap<String, Pdu> = answer
        .into_iter()
        .map(|p| (p.event_id().to_string(), p))
        .collect();
    let (keep, dropped) = reachable(&point.wanted, &by_id);
    let mut out = HistoryPlan {
        dropped,
        ..Default::default()
    };
    let conn = RefCell::new(conn);
    let lookup_cache: RefCell<HashMap<String, Option<Arc<Pdu>>>> = RefCell::new(HashMap::new());
    let lookup = |id: &str| -> StorageResult<Option<Arc<Pdu>>> {
        if let Some(p) = lookup_cache.borrow().get(id) {
            return Ok(p.clone());
        }
        let found = match events::get_event(&mut conn.borrow_mut(), id)? {
            Some(row) => pdu_of(&row, version).ok().map(|mut p| {
                p.set_rejected(row.rejected.is_some());
                Arc::new(p)
            }),
            None => None,
        };
        lookup_cache
            .borrow_mut()
            .insert(id.to_owned(), found.clone());
        Ok(found)
    };
    let base_ids = state::load_group(&mut conn.borrow_mut(), point.group.0)?;
    // The state after each event to place, with the group it is stored as.
    let mut after: HashMap<String, (StateIds, (i64, i32))> = HashMap::new();
    let mut heap = BinaryHeap::new();
    for w in &point.wanted {
        if let Some(p) = by_id.get(w) {
            after.insert(w.clone(), (base_ids.clone(), point.group));
            heap.push(Next(p.depth(), w.clone()));
        }
    }
    let mut done: HashSet<String> = HashSet::new();
    while let Some(Next(_, id)) = heap.pop() {
        if !done.insert(id.clone()) {
            continue;
        }
        let (Some(pdu), Some((after_ids, after_group))) = (by_id.get(&id), after.get(&id).cloned())
        else {
            continue;
        };
        // Already held: a rejection stands, a timeline event keeps its place (neither is
        // checked or written again); the walk goes on through them to their ancestors.
        let held = events::get_event(&mut conn.borrow_mut(), &id)?
            .is_some_and(|r| r.rejected.is_some() || r.stream_ordering.is_some());
        let mut auth_map: HashMap<String, Arc<Pdu>> = HashMap::new();
        let create = (version.room_id_from_create_event() && pdu.kind_str() != "m.room.create")
            .then(|| format!("${}", &pdu.room_id().as_str()[1..]));
        for a in pdu
            .auth_events()
            .iter()
            .map(|a| a.to_string())
            .chain(create)
        {
            let found = match by_id.get(&a) {
                Some(p) if keep.contains(&a) => Some(Arc::new(p.clone())),
                _ => lookup(&a)?,
            };
            if let Some(p) = found {
                auth_map.insert(a, p);
            }
        }
        let before_ids = state_before_from_after(pdu, &after_ids, &auth_map);
        let group = match make_group(next_group, Some(after_group), &after_ids, &before_ids) {
            None => after_group,
            Some(g) => {
                let r = (g.id, depth_of(&g));
                out.groups.push(g);
                r
            }
        };
        for prev in pdu.prev_events() {
            let prev = prev.to_string();
            if keep.contains(&prev) && !after.contains_key(&prev) {
                after.insert(prev.clone(), (before_ids.clone(), group));
                if let Some(p) = by_id.get(&prev) {
                    heap.push(Next(p.depth(), prev));
                }
            }
        }
        if held {
            continue;
        }
        let mut state_events: HashMap<(String, String), Arc<Pdu>> = HashMap::new();
        for (k, eid) in &before_ids {
            let found = match by_id.get(eid) {
                Some(p) => Some(Arc::new(p.clone())),
                None => lookup(eid)?,
            };
            if let Some(p) = found {
                state_events.insert(k.clone(), p);
            }
        }
        let verdict =
            auth::check_against_auth_events(version, pdu, |e| auth_map.get(e.as_str()).cloned())
                .and_then(|()| {
                    auth::check_state_dependent(version, pdu, |t: &StateEventType, k| {
                        state_events.get(&(t.to_string(), k.to_owned())).cloned()
                    })
                });
        let rejected = verdict.err().map(|e| e.0);
        if let Some(r) = &rejected {
            tracing::info!(room = room_id, event = %id, reason = %r, "backfilled event rejected");
            out.rejected += 1;
        } else {
            out.accepted += 1;
        }
        let pos = rejected.is_none().then(next_position);
        out.events.push((
            Arc::new(pdu.clone()),
            NewEvent {
                state_before: rejected.is_none().then_some(group.0),
                rejected,
                ..crate::rooms::persist::event_row(pdu, room_id, pos)
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_protocol::builder::{self, EventDraft, Position};
    use weft_protocol::keys::ServerSigningKey;

    fn key() -> ServerSigningKey {
        ServerSigningKey::from_seed([7u8; 32], "k1").expect("key")
    }

    fn ev(k: &ServerSigningKey, body: &str, prevs: &[&Pdu], depth: u64) -> Pdu {
        let room = ruma::OwnedRoomId::try_from("!r:a.test").expect("room");
        let draft = EventDraft::new(
            "m.room.message",
            ruma::OwnedUserId::try_from("@u:a.test").expect("user"),
            json!({"body": body}),
        );
        let pos = Position {
            version: RoomVersion::V11,
            room_id: Some(&room),
            prev_events: prevs.iter().map(|p| p.owned_event_id()).collect(),
            auth_events: Vec::new(),
            depth,
        };
        builder::build_pdu(&draft, &pos, "a.test", k).expect("build")
    }

    #[test]
    fn only_ancestors_of_the_point_are_history() {
        let k = key();
        let a = ev(&k, "a", &[], 1);
        let b = ev(&k, "b", &[&a], 2);
        let c = ev(&k, "c", &[&b], 3);
        let stray = ev(&k, "stray", &[], 2);
        let stray_child = ev(&k, "stray child", &[&stray], 3);
        let map: HashMap<String, Pdu> = [&a, &b, &c, &stray, &stray_child]
            .into_iter()
            .map(|p| (p.event_id().to_string(), p.clone()))
            .collect();
        // (points, kept, dropped)
        let cases: [(Vec<&Pdu>, Vec<&Pdu>, Vec<&Pdu>); 3] = [
            (vec![&c], vec![&a, &b, &c], vec![&stray, &stray_child]),
            (vec![&b], vec![&a, &b], vec![&c, &stray, &stray_child]),
            (vec![], vec![], vec![&a, &b, &c, &stray, &stray_child]),
        ];
        for (points, kept, dropped) in cases {
            let points: Vec<String> = points.iter().map(|p| p.event_id().to_string()).collect();
            let (k, d) = reachable(&points, &map);
            let want: HashSet<String> = kept.iter().map(|p| p.event_id().to_string()).collect();
            assert_eq!(k, want, "kept from {points:?}");
            let mut want_d: Vec<String> =
                dropped.iter().map(|p| p.event_id().to_string()).collect();
            want_d.sort();
            assert_eq!(d, want_d, "dropped from {points:?}");
        }
    }

    #[test]
    fn a_message_sees_the_state_after_it() {
        let k = key();
        let a = ev(&k, "a", &[], 1);
        let after: StateIds = [(("m.room.create".into(), String::new()), "$c".into())].into();
        assert_eq!(state_before_from_after(&a, &after, &HashMap::new()), after);
    }
}
