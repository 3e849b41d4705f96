//! Steps 4–5 of admission, and the new current state, in the room actor's memory: forks at
//! memory speed.
//!
//! The actor remembers, for its most recent events, the state after each one
//! ([`Recent`]): either "the current state" (a generation number, free) or a shared,
//! immutable snapshot of the state it had then (one `Arc` per state change, taken only when
//! the current state moves on while recent events still point at it). A received PDU whose
//! prev events and every forward extremity are remembered is admitted without the
//! database ([`prepare`]):
//!
//! * the state before it is the state after its one prev event, or the resolution of the
//!   states after its prev events (state resolution over in-memory events);
//! * it must pass the auth rules against its auth events and against that state;
//! * the room's new current state is the state after it resolved with the states after the
//!   other forward extremities.
//!
//! Resolution and the auth checks look events up in memory only: the remembered states,
//! the current state, and a bounded cache of events the database path loaded before (auth
//! chains). Any lookup that misses makes [`prepare`] answer [`Admit::NotHere`], and the
//! actor takes the database path ([`super::prepare`]), which computes the same thing from
//! stored state: the memory path never decides with less information than that path has.
//! Old forks (prev events no longer remembered), big rooms (no snapshots beyond
//! [`MAX_SNAPSHOT_STATE`] entries) and large resolutions fall back the same way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::{EventId, OwnedEventId};
use weft_protocol::auth::StateMap;
use weft_protocol::{Pdu, RoomVersion};

use super::{auth_events, soft_fail, state_before};
use crate::storage::state::StateIds;

/// Most recent events whose state after them is remembered.
pub const MAX_RECENT: usize = 2048;
/// Most snapshots of past states alive at once (the oldest one's events are forgotten).
pub const MAX_SNAPSHOTS: usize = 8;
/// Rooms with more state entries than this keep no snapshots (only "the current state").
pub const MAX_SNAPSHOT_STATE: usize = 4096;
/// Most events kept for lookups during resolution (auth chains loaded from the database).
pub const MAX_CACHED_EVENTS: usize = 4096;

/// A past state of the room, shared by every remembered event that had it.
#[derive(Debug)]
pub struct Snapshot {
    pub events: StateMap<Arc<Pdu>>,
    /// The same events by ID, keyed by the events themselves (no copy of each ID).
    by_id: HashSet<ById>,
}

/// An event in a set looked up by its ID (`HashSet<ById>::get(&EventId)`).
#[derive(Debug)]
struct ById(Arc<Pdu>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.event_id() == other.0.event_id()
    }
}
impl Eq for ById {}
impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `EventId` hashes, so that lookups by `&EventId` find it.
        self.0.event_id().hash(state)
    }
}
impl std::borrow::Borrow<EventId> for ById {
    fn borrow(&self) -> &EventId {
        self.0.event_id()
    }
}

impl Snapshot {
    pub fn new(events: StateMap<Arc<Pdu>>) -> Self {
        let by_id = events.values().map(|e| ById(Arc::clone(e))).collect();
        Self { events, by_id }
    }

    fn ids(&self) -> StateIds {
        self.events
            .iter()
            .map(|((t, k), e)| ((t.to_string(), k.clone()), e.event_id().to_string()))
            .collect()
    }
}

/// The state after a remembered event.
#[derive(Debug, Clone)]
pub enum After {
    /// The current state of generation `n` (the current state while `n` is current).
    Current(u64),
    Snap(Arc<Snapshot>),
}

/// The states after the actor's recent events, and events for lookups.
#[derive(Debug, Default)]
pub struct Recent {
    generation: u64,
    after: HashMap<OwnedEventId, After>,
    order: VecDeque<OwnedEventId>,
    snapshots: VecDeque<Arc<Snapshot>>,
    cache: HashMap<OwnedEventId, Arc<Pdu>>,
    cache_order: VecDeque<OwnedEventId>,
}

impl Recent {
    /// Remembers the state after `id`: the current state when `at_current`, else `snap`.
    pub fn record(&mut self, id: OwnedEventId, after: After) {
        if self.after.insert(id.clone(), after).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_RECENT {
            if let Some(old) = self.order.pop_front() {
                self.after.remove(&old);
            }
        }
    }

    /// "The current state", for [`Self::record`].
    pub fn current(&self) -> After {
        After::Current(self.generation)
    }

    /// Forgets everything (the actor lost track of its state, e.g. a fresh join).
    pub fn clear(&mut self) {
        self.after.clear();
        self.order.clear();
        self.snapshots.clear();
        self.generation += 1;
    }

    /// Called before the current state changes: events whose state after them was the
    /// current state keep it as a snapshot (small rooms where `forks_possible()`, asked only
    /// then) or are
    /// forgotten. A room with no other server in it gets no forks (every event is built
    /// here on the tip, or arrives with a join built on the tip), so a snapshot there only
    /// costs memory: a copy of the state at every state change, eight kept per room, most
    /// of a freshly created room's actor. Forgetting never decides anything differently:
    /// an event whose prev events are forgotten takes the database path.
    pub fn current_changing(
        &mut self,
        current: &StateMap<Arc<Pdu>>,
        forks_possible: impl FnOnce() -> bool,
    ) {
        let generation = self.generation;
        self.generation += 1;
        let holders = self
            .after
            .values()
            .any(|a| matches!(a, After::Current(g) if *g == generation));
        if !holders {
            return;
        }
        if current.len() > MAX_SNAPSHOT_STATE || !forks_possible() {
            self.after
                .retain(|_, a| !matches!(a, After::Current(g) if *g == generation));
            self.order.retain(|id| self.after.contains_key(id));
            return;
        }
        if self.snapshots.len() >= MAX_SNAPSHOTS
            && let Some(oldest) = self.snapshots.pop_front()
        {
            self.after
                .retain(|_, a| !matches!(a, After::Snap(s) if Arc::ptr_eq(s, &oldest)));
            self.order.retain(|id| self.after.contains_key(id));
        }
        let snap = Arc::new(Snapshot::new(current.clone()));
        for a in self.after.values_mut() {
            if matches!(a, After::Current(g) if *g == generation) {
                *a = After::Snap(Arc::clone(&snap));
            }
        }
        self.snapshots.push_back(snap);
    }

    /// The state after `id`, if remembered and still meaningful.
    pub fn after_of(&self, id: &EventId) -> Option<&After> {
        match self.after.get(id) {
            Some(After::Current(g)) if *g != self.generation => None,
            other => other,
        }
    }

    /// Whether `id` was appended recently (whatever the state after it).
    pub fn knows(&self, id: &EventId) -> bool {
        self.after.contains_key(id)
    }

    /// Whether `id` is remembered with the current state after it.
    pub fn at_current(&self, id: &EventId) -> bool {
        matches!(self.after_of(id), Some(After::Current(_)))
    }

    /// Keeps events for later lookups (auth chains loaded by the database path).
    pub fn cache_events(&mut self, events: impl IntoIterator<Item = Arc<Pdu>>) {
        for e in events {
            let id = e.owned_event_id();
            if self.cache.insert(id.clone(), e).is_none() {
                self.cache_order.push_back(id);
            }
        }
        while self.cache_order.len() > MAX_CACHED_EVENTS {
            if let Some(old) = self.cache_order.pop_front() {
                self.cache.remove(&old);
            }
        }
    }

    /// Remembered events (for tests and the status page).
    pub fn len(&self) -> usize {
        self.after.len()
    }

    pub fn is_empty(&self) -> bool {
        self.after.is_empty()
    }
}

/// What [`prepare`] decides.
#[derive(Debug)]
pub enum Admit {
    /// Needs the database path (something is not in memory).
    NotHere,
    /// Fails step 4 or 5.
    Rejected(String),
    /// Passes; the state before it and the room's state if it is accepted (`None`: the
    /// current state, resp. the current state with the event applied).
    Ready {
        state_before: Option<StateIds>,
        new_current: Option<StateIds>,
        /// Events for every entry of the two states.
        events: HashMap<String, Arc<Pdu>>,
    },
}

/// In-memory event lookups; a miss is remembered.
struct Lookup<'a> {
    current: &'a StateMap<Arc<Pdu>>,
    /// Built on the first lookup that needs it (O(state)).
    current_by_id: std::cell::OnceCell<HashMap<&'a EventId, &'a Arc<Pdu>>>,
    snaps: Vec<&'a Snapshot>,
    cache: &'a HashMap<OwnedEventId, Arc<Pdu>>,
    pdu: &'a Arc<Pdu>,
    missed: std::cell::Cell<bool>,
}

impl Lookup<'_> {
    fn get(&self, id: &EventId) -> Option<Arc<Pdu>> {
        if self.pdu.event_id() == id {
            return Some(Arc::clone(self.pdu));
        }
        let found = self
            .current_by_id
            .get_or_init(|| self.current.values().map(|e| (e.event_id(), e)).collect())
            .get(id)
            .map(|e| Arc::clone(e))
            .or_else(|| {
                self.snaps
                    .iter()
                    .find_map(|s| s.by_id.get(id).map(|e| Arc::clone(&e.0)))
            })
            .or_else(|| self.cache.get(id).cloned());
        if found.is_none() {
            self.missed.set(true);
        }
        found
    }
}

fn ids_of(map: &StateMap<Arc<Pdu>>) -> StateIds {
    map.iter()
        .map(|((t, k), e)| ((t.to_string(), k.clone()), e.event_id().to_string()))
        .collect()
}

/// The state after remembered event: as IDs.
fn ids_after(after: &After, current: &StateMap<Arc<Pdu>>) -> StateIds {
    match after {
        After::Current(_) => ids_of(current),
        After::Snap(s) => s.ids(),
    }
}

/// Admits `pdu` from memory if its prev events and every forward extremity are remembered.
pub fn prepare(
    version: RoomVersion,
    pdu: &Arc<Pdu>,
    recent: &Recent,
    current: &StateMap<Arc<Pdu>>,
    extremities: &[OwnedEventId],
) -> Admit {
    let prevs: Vec<&OwnedEventId> = pdu.prev_events().iter().collect();
    if prevs.is_empty() {
        return Admit::NotHere;
    }
    let mut prev_afters = Vec::with_capacity(prevs.len());
    for p in &prevs {
        match recent.after_of(p) {
            Some(a) => prev_afters.push(a),
            None => return Admit::NotHere,
        }
    }
    let prev_set: HashSet<&OwnedEventId> = prevs.iter().copied().collect();
    let mut tip_afters = Vec::new();
    for e in extremities {
        if prev_set.contains(e) || e == pdu.event_id() {
            continue;
        }
        match recent.after_of(e) {
            Some(a) => tip_afters.push(a),
            None => return Admit::NotHere,
        }
    }
    let snaps: Vec<&Snapshot> = prev_afters
        .iter()
        .chain(tip_afters.iter())
        .filter_map(|a| match a {
            After::Snap(s) => Some(&**s),
            After::Current(_) => None,
        })
        .collect();
    let lookup = Lookup {
        current,
        current_by_id: std::cell::OnceCell::new(),
        snaps,
        cache: &recent.cache,
        pdu,
        missed: std::cell::Cell::new(false),
    };

    // Step 4: its auth events must all be here.
    if !auth_events::missing(version, pdu, |id| {
        EventId::parse(id).is_ok_and(|id| lookup.get(&id).is_some())
    })
    .is_empty()
    {
        return Admit::NotHere;
    }
    if let Err(e) = auth_events::check(version, pdu, |id| lookup.get(id)) {
        if lookup.missed.get() {
            return Admit::NotHere;
        }
        return Admit::Rejected(e);
    }

    // Step 5: the state before it.
    let all_current = |afters: &[&After]| afters.iter().all(|a| matches!(a, After::Current(_)));
    let before_is_current = all_current(&prev_afters);
    let before: Option<StateIds> = if before_is_current {
        None
    } else if let [After::Snap(s)] = prev_afters.as_slice() {
        Some(s.ids())
    } else {
        let states: Vec<StateIds> = prev_afters.iter().map(|a| ids_after(a, current)).collect();
        match state_before::from_prev_states(version, states, |id| lookup.get(id)) {
            Ok(s) if !lookup.missed.get() => Some(s),
            _ => return Admit::NotHere,
        }
    };
    let verdict = match &before {
        None => auth_check_current(version, pdu, current),
        Some(ids) => state_before::check(version, pdu, ids, |id| {
            EventId::parse(id).ok().and_then(|id| lookup.get(&id))
        }),
    };
    if let Err(e) = verdict {
        if lookup.missed.get() {
            return Admit::NotHere;
        }
        return Admit::Rejected(e);
    }

    // The room's state if accepted.
    let message = pdu.state_key().is_none();
    let new_current: Option<StateIds> = if before_is_current && all_current(&tip_afters) {
        // Every state involved is the current state: a message leaves it as it is; a state
        // event with no other tip standing simply applies. A state event on one fork of
        // several must be resolved against the others.
        if message || tip_afters.is_empty() {
            None
        } else {
            let after = state_before::after(pdu, &ids_of(current));
            let cur = ids_of(current);
            let s = soft_fail::new_current(version, after, vec![cur.clone()], &cur, |id| {
                lookup.get(id)
            });
            if lookup.missed.get() {
                return Admit::NotHere;
            }
            Some(s)
        }
    } else {
        let before_ids = before.clone().unwrap_or_else(|| ids_of(current));
        let after = state_before::after(pdu, &before_ids);
        let tips: Vec<StateIds> = tip_afters.iter().map(|a| ids_after(a, current)).collect();
        let cur = ids_of(current);
        let s = soft_fail::new_current(version, after, tips, &cur, |id| lookup.get(id));
        if lookup.missed.get() {
            return Admit::NotHere;
        }
        Some(s)
    };

    let mut events: HashMap<String, Arc<Pdu>> = HashMap::new();
    if before.is_some() || new_current.is_some() {
        events.insert(pdu.event_id().to_string(), Arc::clone(pdu));
        for id in before
            .iter()
            .chain(new_current.iter())
            .flat_map(|s| s.values())
        {
            if events.contains_key(id) {
                continue;
            }
            match EventId::parse(id).ok().and_then(|i| lookup.get(&i)) {
                Some(e) => {
                    events.insert(id.clone(), e);
                }
                None => return Admit::NotHere,
            }
        }
    }
    Admit::Ready {
        state_before: before,
        new_current,
        events,
    }
}

fn auth_check_current(
    version: RoomVersion,
    pdu: &Pdu,
    current: &StateMap<Arc<Pdu>>,
) -> Result<(), String> {
    weft_protocol::auth::check_state_dependent(version, pdu, |t: &StateEventType, k| {
        current.get(&(t.clone(), k.to_owned())).cloned()
    })
    .map_err(|e| format!("state before event: {}", e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> OwnedEventId {
        OwnedEventId::try_from(s).unwrap()
    }

    #[test]
    fn past_states_are_kept_only_where_forks_are_possible() {
        let state: StateMap<Arc<Pdu>> = StateMap::new();
        // (forks possible, remembered after the change, with a snapshot)
        for (forks, remembered) in [(false, false), (true, true)] {
            let mut recent = Recent::default();
            let now = recent.current();
            recent.record(id("$a"), now);
            let mut asked = false;
            recent.current_changing(&state, || {
                asked = true;
                forks
            });
            assert!(asked, "forks {forks}");
            assert_eq!(recent.knows(&id("$a")), remembered, "forks {forks}");
            assert_eq!(
                matches!(recent.after_of(&id("$a")), Some(After::Snap(_))),
                remembered,
                "forks {forks}"
            );
        }
        // Nothing at the current state: nothing to copy, and nobody asks.
        let mut recent = Recent::default();
        recent.current_changing(&state, || panic!("not asked when nothing holds the state"));
        assert!(recent.is_empty());
    }
}
