//! State resolution v1 (room version 1, [`v1`]), v2 (room versions 2–11) and v2.1 (room
//! version 12).
//!
//! The algorithm is ruma's `state_res::resolve`; this module supplies what it needs from the
//! caller: the auth chain of each state set and, for v2.1, the *conflicted state subgraph*
//! (every event on an `auth_events` path between two conflicted state events), computed here
//! as a pure function over an event lookup.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::state_res::utils::event_id_set::EventIdSet;
use ruma::{EventId, OwnedEventId};

use crate::auth::StateMap;
use crate::pdu::Pdu;
use crate::room_version::RoomVersion;

pub mod v1;

/// Why a resolution could not be computed.
#[derive(Debug, thiserror::Error)]
#[error("state resolution failed: {0}")]
pub struct ResolveError(pub String);

/// The full recursive auth chain of `roots`: every event reachable through `auth_events`,
/// which includes a root only when another root leads to it. An auth event that `fetch`
/// cannot find is in the chain (it is cited) but its own auth events cannot be followed; a
/// root that `fetch` cannot find contributes nothing.
pub fn auth_chain(
    roots: impl IntoIterator<Item = OwnedEventId>,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> HashSet<OwnedEventId> {
    let mut seen = HashSet::new();
    let mut stack: Vec<OwnedEventId> = Vec::new();
    for root in roots {
        if let Some(ev) = fetch(&root) {
            stack.extend(ev.auth_events().iter().cloned());
        }
    }
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(ev) = fetch(&id) {
            for a in ev.auth_events() {
                if !seen.contains(a) {
                    stack.push(a.clone());
                }
            }
        }
    }
    seen
}

/// The conflicted state subgraph (room version 12): the conflicted events themselves plus every
/// event in their auth chains from which another conflicted event can be reached by following
/// `auth_events`.
pub fn conflicted_state_subgraph(
    conflicted: &HashSet<OwnedEventId>,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> HashSet<OwnedEventId> {
    // Collect the auth-ancestor graph of all conflicted events.
    let mut edges: HashMap<OwnedEventId, Vec<OwnedEventId>> = HashMap::new();
    let mut stack: Vec<OwnedEventId> = conflicted.iter().cloned().collect();
    while let Some(id) = stack.pop() {
        if edges.contains_key(&id) {
            continue;
        }
        let parents: Vec<OwnedEventId> = fetch(&id)
            .map(|e| e.auth_events().to_vec())
            .unwrap_or_default();
        for p in &parents {
            if !edges.contains_key(p) {
                stack.push(p.clone());
            }
        }
        edges.insert(id, parents);
    }
    // reaches[x] = a conflicted event is reachable from x by >= 1 auth step.
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    fn visit(
        id: &OwnedEventId,
        edges: &HashMap<OwnedEventId, Vec<OwnedEventId>>,
        conflicted: &HashSet<OwnedEventId>,
        reaches: &mut HashMap<OwnedEventId, bool>,
    ) -> bool {
        // Iterative post-order DFS to avoid deep recursion on long auth chains.
        let mut work: Vec<(OwnedEventId, bool)> = vec![(id.clone(), false)];
        while let Some((node, expanded)) = work.pop() {
            if reaches.contains_key(&node) {
                continue;
            }
            let parents = edges.get(&node).map(Vec::as_slice).unwrap_or(&[]);
            if expanded {
                let r = parents
                    .iter()
                    .any(|p| conflicted.contains(p) || reaches.get(p).copied().unwrap_or(false));
                reaches.insert(node, r);
            } else {
                work.push((node.clone(), true));
                for p in parents {
                    if !reaches.contains_key(p) {
                        work.push((p.clone(), false));
                    }
                }
            }
        }
        reaches.get(id).copied().unwrap_or(false)
    }
    let mut out: HashSet<OwnedEventId> = conflicted.clone();
    let all: Vec<OwnedEventId> = edges.keys().cloned().collect();
    for id in all {
        if conflicted.contains(&id) {
            continue;
        }
        if visit(&id, &edges, conflicted, &mut reaches) {
            out.insert(id);
        }
    }
    out
}

/// Resolves several state maps into one, per the room version's algorithm.
pub fn resolve(
    version: RoomVersion,
    state_sets: &[StateMap<OwnedEventId>],
    fetch: impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<StateMap<OwnedEventId>, ResolveError> {
    if state_sets.is_empty() {
        return Ok(StateMap::new());
    }
    if state_sets.len() == 1 {
        return Ok(state_sets[0].clone());
    }
    if version.uses_state_res_v1() {
        return Ok(v1::resolve(version, state_sets, &fetch));
    }
    let rules = version.rules();
    let Some(v2_rules) = rules.state_res.v2_rules() else {
        return Err(ResolveError(
            "room version does not use state resolution v2".into(),
        ));
    };
    // Each state set's auth chain: the union of the auth chains of its events, plus the events
    // themselves. Counting the state events themselves follows Synapse's auth chain
    // difference; the spec's wording counts only their auth chains. The two differ only for
    // an unconflicted state event missing from some set's auth chain, which the spec's
    // reading would put in the auth difference (and so replay) and this one does not.
    let auth_chains: Vec<EventIdSet<OwnedEventId>> = state_sets
        .iter()
        .map(|set| {
            let mut chain = auth_chain(set.values().cloned(), &fetch);
            chain.extend(set.values().cloned());
            chain.into_iter().collect()
        })
        .collect();
    let fetch_arc = |id: &EventId| fetch(id);
    ruma::state_res::resolve(
        &rules.authorization,
        v2_rules,
        state_sets.iter(),
        auth_chains,
        fetch_arc,
        |conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>| {
            let set: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
            Some(
                conflicted_state_subgraph(&set, &fetch)
                    .into_iter()
                    .collect(),
            )
        },
    )
    .map_err(|e| ResolveError(e.to_string()))
}

#[cfg(test)]
mod tests;
