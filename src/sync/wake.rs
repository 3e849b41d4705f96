//! Answering a woken `/sync` from what woke it.
//!
//! A long-poll parks after a full [`super::compute`] of `(since, quiet]` found nothing new
//! (`quiet` is the frontier it read up to). When it is woken at `upto`, the notifier hands
//! over the notes of `(quiet, upto]` ([`crate::notifier::Notifier::notes_between`]). When
//! every one of those positions belongs to a room actor's batch of plain timeline events
//! ([`CommittedEvents`]: no membership change, redaction or soft-failed event), the answer
//! for `(since, upto]` is those events, in the rooms where the user is a joined local
//! member, and nothing else:
//!
//! * nothing in `(since, quiet]` concerned the user (the full read said so), and every
//!   position of `(quiet, upto]` is one of the noted events, so no receipt, account data,
//!   to-device message, device-list change, push count change or membership change lies
//!   in the window;
//! * the user was joined to each such room before `since` (a later join is a membership
//!   change: a newly joined room is news, and it would have shown in the full read), so
//!   every event is visible to them, and the timeline is not `limited` while the events fit
//!   the filter's limit;
//! * the timeline filter selects no types or senders (else events it hid in
//!   `(since, quiet]` would still move `limited` and `prev_batch`), and the typing serial is
//!   the one of the full read (else another room's typing is news).
//!
//! What the events alone do not say comes from ONE small read: the unread counts, the
//! member counts of the summary and the E2EE key counts (current values, as the full read
//! takes them). Anything else (an event relating to another in the window, which bundles,
//! more events than the limit, a note of another kind, a missing note) returns `None`, and
//! the caller does the full read. The answer is the same body the full read gives for the
//! same `since` (`age` aside); the suite checks it (`features::woken_sync_answers_as_a_full_sync_would`).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use weft_protocol::Pdu;
use weft_protocol::client_event::client_event;

use super::filter::Filter;
use super::{JoinedSections, SyncRequest, SyncResult, SyncToken, joined_room};
use crate::notifier::Note;
use crate::rooms::messages::{CommittedEvents, TxnKey};
use crate::storage::{AnyConnection, StorageResult, now_ms};

/// Whether a filter lets a woken long-poll answer from the notes (see the module comment).
pub fn filter_allows(filter: &Filter) -> bool {
    let t = &filter.room.timeline;
    t.types.is_none()
        && t.not_types.is_empty()
        && t.senders.is_none()
        && t.not_senders.is_empty()
        && !t.excludes_all()
}

/// One room's new events for the user.
pub struct RoomDelta {
    room_id: String,
    events: Vec<(Arc<Pdu>, i64, Option<TxnKey>)>,
}

/// What a woken long-poll answers from: the rooms with news for the user (none: nothing in
/// the window concerns them).
pub struct Plan {
    pub rooms: Vec<RoomDelta>,
}

/// The plan for `user_id` from the notes of the window `(after, upto]`, or `None` when the
/// full read must answer. A batch's positions need not be contiguous (another room's
/// position in flight between two of them holds the frontier), so only its events inside
/// the window count.
pub fn plan(
    notes: &[Note],
    (after, upto): (i64, i64),
    user_id: &str,
    filter: &Filter,
) -> Option<Plan> {
    let mut rooms: Vec<RoomDelta> = Vec::new();
    for note in notes {
        let batch = note.downcast_ref::<CommittedEvents>()?;
        if !batch.joined_local.iter().any(|u| u == user_id)
            || !filter.room.allows_room(&batch.room_id)
        {
            continue;
        }
        let at = match rooms.iter().position(|r| r.room_id == batch.room_id) {
            Some(i) => i,
            None => {
                rooms.push(RoomDelta {
                    room_id: batch.room_id.clone(),
                    events: Vec::new(),
                });
                rooms.len() - 1
            }
        };
        let room = &mut rooms[at];
        room.events.extend(
            batch
                .events
                .iter()
                .filter(|e| e.stream > after && e.stream <= upto)
                .map(|e| (Arc::clone(&e.pdu), e.stream, e.txn.clone())),
        );
    }
    rooms.retain(|r| !r.events.is_empty());
    let limit = filter.room.timeline_limit();
    for room in &mut rooms {
        if room.events.len() > limit {
            return None;
        }
        room.events.sort_by_key(|e| e.1);
        // An event relating to another one of the window bundles into it: the full read.
        let ids: HashSet<&str> = room
            .events
            .iter()
            .map(|e| e.0.event_id().as_str())
            .collect();
        for (pdu, _, _) in &room.events {
            if pdu.content().get().contains("\"m.relates_to\"") {
                let target = pdu.content_value()["m.relates_to"]["event_id"]
                    .as_str()
                    .map(str::to_owned);
                if target.is_none_or(|t| ids.contains(t.as_str())) {
                    return None;
                }
            }
        }
    }
    Some(Plan { rooms })
}

/// Builds the answer for `(req.since, req.upto]` from `plan` (one small read), or `None` when
/// the full read must answer after all.
pub fn answer(
    conn: &mut AnyConnection,
    plan: &Plan,
    req: &SyncRequest<'_>,
) -> StorageResult<Option<SyncResult>> {
    let user = req.viewer.user_id.as_str();
    let e2ee = crate::e2ee::sync::SyncExtensions::load(
        conn,
        user,
        &req.viewer.device_id,
        req.since.map(|s| s.stream),
        req.upto,
    )?;
    if e2ee.has_changes() || e2ee.upto != req.upto {
        return Ok(None);
    }
    let since_typing = req.since.map(|s| s.typing).unwrap_or(i64::MIN);
    let now = now_ms();
    let mut join = Map::new();
    for room in &plan.rooms {
        let Some(first) = room.events.first() else {
            continue;
        };
        let timeline: Vec<Value> = room
            .events
            .iter()
            .map(|(pdu, _, txn)| {
                let mut unsigned = Map::new();
                unsigned.insert(
                    "age".into(),
                    json!((now - pdu.origin_server_ts() as i64).max(0)),
                );
                if let Some(t) = txn
                    && t.user_id == req.viewer.user_id
                    && t.device_id == req.viewer.device_id
                {
                    unsigned.insert("transaction_id".into(), json!(t.txn_id));
                }
                client_event(pdu, unsigned)
            })
            .collect();
        let mut ephemeral = Vec::new();
        if let Some(users) = req.typing.get(&room.room_id, since_typing) {
            ephemeral.push(json!({"type": "m.typing", "content": {"user_ids": users}}));
        }
        let entry = joined_room(
            conn,
            user,
            &room.room_id,
            req.filter,
            JoinedSections {
                timeline,
                limited: false,
                prev_batch: SyncToken::at(first.1 - 1),
                state: Vec::new(),
                ephemeral,
                account_data: Vec::new(),
            },
        )?;
        join.insert(room.room_id.clone(), entry);
    }
    let has_changes = !join.is_empty();
    let next = SyncToken {
        stream: req.upto,
        typing: req.typing_now,
    };
    let mut body = json!({
        "next_batch": next.encode(),
        "rooms": {"join": join, "invite": {}, "leave": {}, "knock": {}},
        "account_data": {"events": []},
        "presence": {"events": []},
    });
    e2ee.write_into(&mut body);
    Ok(Some(SyncResult { body, has_changes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Value) -> Filter {
        Filter::from_value(v).unwrap()
    }

    #[test]
    fn which_filters_allow_the_incremental_answer() {
        let cases = [
            (json!({}), true),
            (json!({"room": {"timeline": {"limit": 5}}}), true),
            (json!({"room": {"rooms": ["!a:x"]}}), true),
            (
                json!({"room": {"timeline": {"unread_thread_notifications": true}}}),
                true,
            ),
            (
                json!({"room": {"timeline": {"lazy_load_members": true}}}),
                true,
            ),
            (
                json!({"room": {"timeline": {"types": ["m.room.message"]}}}),
                false,
            ),
            (
                json!({"room": {"timeline": {"not_types": ["m.reaction"]}}}),
                false,
            ),
            (json!({"room": {"timeline": {"senders": ["@a:x"]}}}), false),
            (
                json!({"room": {"timeline": {"not_senders": ["@a:x"]}}}),
                false,
            ),
            (json!({"room": {"timeline": {"limit": 0}}}), false),
        ];
        for (filter, want) in cases {
            assert_eq!(filter_allows(&f(filter.clone())), want, "{filter}");
        }
    }

    #[test]
    fn a_note_of_another_kind_needs_the_full_read() {
        let other: Note = Arc::new(42u32);
        assert!(plan(&[other], (0, 1), "@bob:x", &Filter::default()).is_none());
        assert!(
            plan(&[], (0, 0), "@bob:x", &Filter::default()).is_some_and(|p| p.rooms.is_empty()),
            "an empty window is a plan with nothing in it"
        );
    }
}
