//! Partial-state rooms: joined with `send_join?omit_members=true` (the spec's faster remote
//! joins, MSC3706/MSC3902), the membership events fetched afterwards.
//!
//! Design (the joining side; the transport's half is `federation/membership/partial.rs`):
//!
//! * The join's answer is checked exactly like a full one (signatures, hashes, auth chain,
//!   the join) and its state — everything but most `m.room.member` events — becomes the
//!   state before our join. The room is marked partial-state in the database
//!   (`partial_state_rooms`, by the room's actor: [`MarkPartial`]) *before* the join is
//!   admitted, so a restart at any point finds the mark and resumes the resync.
//! * While partial, the actor delivers our events to the joined servers it knows *and* the
//!   host's `servers_in_room`, and it never rejects (or soft-fails) a received event: an
//!   event that fails against the partial state is *deferred* (`partial_state_deferred`,
//!   answered [`super::messages::InboundOutcome::Deferred`]), as is one citing a deferred
//!   event. Nothing about it is decided yet.
//! * The resync fetches the state before our join (`/state_ids`, then the missing events),
//!   checks it like a join's answer, and hands it to the actor ([`CompletePartial`]). The
//!   host's full state must agree with every entry the partial state had
//!   ([`agrees`]); otherwise the answer is refused and another server is asked. The actor
//!   then rebuilds the state groups of our join and of every event after it (each gains the
//!   entries it lacked, [`fill_missing`]: what an event changed itself stays), authorizes
//!   again each event it accepted against the partial state, now against the full state
//!   before it (`persist::complete_partial_groups`: one that fails is rejected and never
//!   served again; what a rejected state event set is undone in the states after it), sets
//!   the new current state and memberships (the members learned at a stream position of
//!   the completion's own, so an incremental `/sync` and sliding sync across it show them),
//!   takes the rejected events out of the forward extremities ([`extremities_without`]:
//!   our next event must not cite them), clears the mark
//!   and hands back the deferred events, which are admitted again through the normal rules,
//!   now against the full state.
//! * A deferred event is written in the actor's batch (`PersistBatch::deferred`), in the
//!   commit that answers the transaction carrying it: a crash loses neither or both.
//! * Clients: `/sync` shows the room joined at once; `/members` and `/joined_members` wait
//!   (bounded by `federation.partial_state_members_wait_ms`) for the full state, then answer
//!   what is known ([`wait_full_state`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use actix::Message;
use weft_protocol::Pdu;

use crate::core::Core;
use crate::error::Result;
use crate::storage::state::StateIds;

/// Marks the room partial-state (before its join is admitted).
#[derive(Message, Clone)]
#[rtype(result = "Result<()>")]
pub struct MarkPartial {
    pub join_event_id: String,
    pub servers: Vec<String>,
}

/// Drops the mark without completing (our join failed) and forgets what was deferred.
#[derive(Message, Clone)]
#[rtype(result = "Result<()>")]
pub struct ClearPartial;

/// The full state before our join, checked and stored: `state` the IDs, `events` every
/// event it names (checked and stored outliers, or loaded), `stream` our join's stream
/// position (the memberships learned are recorded at it), `version` the room's (the events
/// cross cluster nodes in their JSON form). Answers the deferred events (`(event ID, PDU
/// JSON)`, shallowest first) to admit again.
#[derive(Message, Clone)]
#[rtype(result = "Result<Vec<(String, String)>>")]
pub struct CompletePartial {
    pub state: StateIds,
    pub events: Vec<Arc<Pdu>>,
    pub stream: i64,
    pub version: weft_protocol::RoomVersion,
}

/// Whether the host's full state agrees with the partial state we were given: every entry
/// the partial state had is in the full state with the same event, and the full state has
/// a create event. `Err` names the first disagreement.
pub fn agrees(partial: &StateIds, full: &StateIds) -> std::result::Result<(), String> {
    if !full.contains_key(&("m.room.create".to_owned(), String::new())) {
        return Err("the full state has no create event".into());
    }
    let mut keys: Vec<&(String, String)> = partial.keys().collect();
    keys.sort();
    for k in keys {
        match full.get(k) {
            Some(id) if Some(id) == partial.get(k) => {}
            Some(id) => {
                return Err(format!(
                    "({}, {}) is {} in the full state, {} in the partial state",
                    k.0,
                    k.1,
                    id,
                    partial.get(k).map(String::as_str).unwrap_or("")
                ));
            }
            None => return Err(format!("({}, {}) is missing from the full state", k.0, k.1)),
        }
    }
    Ok(())
}

/// A state after our join, completed: every key it lacks takes the full state's value;
/// what it holds (set by the partial state or changed by an event since) stays.
pub fn fill_missing(state: &StateIds, full: &StateIds) -> StateIds {
    let mut out = state.clone();
    for (k, v) in full {
        out.entry(k.clone()).or_insert_with(|| v.clone());
    }
    out
}

/// The forward extremities once the events rejected at completion are taken out: the
/// others stay, and each rejected extremity gives way to its nearest accepted ancestors
/// (walking back through rejected events) that no accepted event cites. `prevs` holds the
/// prev events of the room's timeline events since our join, `accepted` those of them
/// neither rejected nor soft-failed, in stream order. Never empty while anything is
/// accepted: with no tip left, the newest accepted event is the one.
pub fn extremities_without(
    extremities: &[String],
    rejected: &HashSet<String>,
    prevs: &HashMap<String, Vec<String>>,
    accepted: &[String],
) -> Vec<String> {
    let is_accepted: HashSet<&String> = accepted.iter().collect();
    let cited: HashSet<&String> = accepted
        .iter()
        .filter_map(|id| prevs.get(id))
        .flatten()
        .collect();
    let mut out: Vec<String> = extremities
        .iter()
        .filter(|e| !rejected.contains(*e))
        .cloned()
        .collect();
    let mut stack: Vec<&String> = extremities
        .iter()
        .filter(|e| rejected.contains(*e))
        .collect();
    let mut seen: HashSet<&String> = stack.iter().copied().collect();
    while let Some(e) = stack.pop() {
        for p in prevs.get(e).into_iter().flatten() {
            if rejected.contains(p) {
                if seen.insert(p) {
                    stack.push(p);
                }
            } else if is_accepted.contains(p) && !cited.contains(p) && !out.contains(p) {
                out.push(p.clone());
            }
        }
    }
    if out.is_empty()
        && let Some(last) = accepted.last()
    {
        out.push(last.clone());
    }
    out
}

/// Wake-ups of callers waiting for rooms to leave partial state (in this process).
static DONE: LazyLock<parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Notify>>>> =
    LazyLock::new(Default::default);

fn notify_of(room_id: &str) -> Arc<tokio::sync::Notify> {
    Arc::clone(DONE.lock().entry(room_id.to_owned()).or_default())
}

/// Called by the room's actor once the room has its full state.
pub(crate) fn completed(room_id: &str) {
    if let Some(n) = DONE.lock().remove(room_id) {
        n.notify_waiters();
    }
}

/// Whether a room is partial-state now.
pub async fn is_partial(core: &Core, room_id: &str) -> Result<bool> {
    let r = room_id.to_owned();
    Ok(core
        .db
        .read(move |c| crate::storage::partial_state::get(c, &r))
        .await?
        .is_some())
}

/// Waits (at most `bound`) until a room has its full state. `true` when it has it.
pub async fn wait_full_state(core: &Core, room_id: &str, bound: Duration) -> Result<bool> {
    let start = Instant::now();
    loop {
        let notified = notify_of(room_id);
        let wake = notified.notified();
        if !is_partial(core, room_id).await? {
            return Ok(true);
        }
        let left = bound.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(false);
        }
        // Woken by the actor, or a look at the database now and then (another node of a
        // cluster may complete it).
        let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), wake).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(entries: &[(&str, &str, &str)]) -> StateIds {
        entries
            .iter()
            .map(|(t, k, v)| (((*t).to_owned(), (*k).to_owned()), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_full_state_must_agree_with_every_partial_entry() {
        let partial = ids(&[
            ("m.room.create", "", "$c"),
            ("m.room.power_levels", "", "$p"),
        ]);
        let cases: &[(&str, StateIds, bool)] = &[
            (
                "superset",
                ids(&[
                    ("m.room.create", "", "$c"),
                    ("m.room.power_levels", "", "$p"),
                    ("m.room.member", "@a:x", "$a"),
                ]),
                true,
            ),
            (
                "equal",
                ids(&[
                    ("m.room.create", "", "$c"),
                    ("m.room.power_levels", "", "$p"),
                ]),
                true,
            ),
            (
                "a different power levels event",
                ids(&[
                    ("m.room.create", "", "$c"),
                    ("m.room.power_levels", "", "$q"),
                ]),
                false,
            ),
            (
                "a missing entry",
                ids(&[("m.room.create", "", "$c")]),
                false,
            ),
            (
                "no create event",
                ids(&[("m.room.power_levels", "", "$p")]),
                false,
            ),
        ];
        for (name, full, ok) in cases {
            assert_eq!(agrees(&partial, full).is_ok(), *ok, "{name}");
        }
    }

    #[test]
    fn rejected_extremities_give_way_to_their_accepted_ancestors() {
        let s = |v: &[&str]| -> Vec<String> { v.iter().map(|x| (*x).to_owned()).collect() };
        // $j our join; $a, $b accepted after it; $x, $y rejected at completion.
        let prevs: HashMap<String, Vec<String>> = [
            ("$j", vec!["$h"]),
            ("$a", vec!["$j"]),
            ("$x", vec!["$a"]),
            ("$y", vec!["$x"]),
            ("$b", vec!["$j"]),
            ("$c", vec!["$a"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), s(&v)))
        .collect();
        let rejected: HashSet<String> = s(&["$x", "$y"]).into_iter().collect();
        // (case, extremities, accepted events held, extremities wanted)
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "no rejected tip: unchanged",
                &["$b", "$a"],
                &["$j", "$a", "$b"],
                &["$b", "$a"],
            ),
            (
                "one rejected tip: its parent",
                &["$x"],
                &["$j", "$a"],
                &["$a"],
            ),
            (
                "through a chain of rejected events",
                &["$y"],
                &["$j", "$a"],
                &["$a"],
            ),
            (
                "the parent is cited by an accepted event: not a tip",
                &["$y", "$c"],
                &["$j", "$a", "$c"],
                &["$c"],
            ),
            (
                "beside an accepted tip",
                &["$b", "$y"],
                &["$j", "$a", "$b"],
                &["$b", "$a"],
            ),
            (
                "an ancestor we do not hold is never a tip",
                &["$x"],
                &["$j"],
                &["$j"],
            ),
        ];
        for (name, exts, accepted, want) in cases {
            assert_eq!(
                extremities_without(&s(exts), &rejected, &prevs, &s(accepted)),
                s(want),
                "{name}"
            );
        }
    }

    #[test]
    fn filling_keeps_what_the_state_holds_and_adds_what_it_lacks() {
        let full = ids(&[
            ("m.room.create", "", "$c"),
            ("m.room.member", "@a:x", "$a-join"),
            ("m.room.member", "@b:x", "$b-join"),
        ]);
        // @a left after our join (an event we hold): the leave stays; @b is learned.
        let after = ids(&[
            ("m.room.create", "", "$c"),
            ("m.room.member", "@a:x", "$a-leave"),
            ("m.room.member", "@us:y", "$us"),
        ]);
        let filled = fill_missing(&after, &full);
        assert_eq!(
            filled,
            ids(&[
                ("m.room.create", "", "$c"),
                ("m.room.member", "@a:x", "$a-leave"),
                ("m.room.member", "@b:x", "$b-join"),
                ("m.room.member", "@us:y", "$us"),
            ])
        );
        assert_eq!(fill_missing(&full, &full), full);
    }
}
