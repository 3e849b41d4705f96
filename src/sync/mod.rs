//! `/sync`: what changed for a user between two stream positions.
//!
//! A sync token is `s<stream>_<typing>`: the stream frontier the client has seen (see
//! [`crate::notifier`]) and the typing serial. [`compute`] runs inside one database read and
//! builds the response for `(since, upto]`; the handler calls it again after a wake-up while
//! the long-poll lasts.
//!
//! Per joined room: on an initial sync, a newly joined room or `full_state`, the state is the
//! current state minus what the timeline already carries and the timeline is the newest
//! `limit` events; on an incremental sync the timeline is what is new, and when it is
//! `limited` the state section carries the state events the client skipped.
//!
//! A long-poll woken by nothing but new timeline events in rooms the user was already in
//! answers from those events instead ([`wake`]): the same body, from one small read.

pub mod filter;
pub mod sliding;
pub mod visibility;
pub mod wake;

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use crate::rooms::typing::Typing;
use crate::rooms::view::{self, Versions, Viewer};
use crate::storage::{AnyConnection, StorageResult, account, events, rooms, state};
use filter::Filter;

/// A position in the client's event streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncToken {
    pub stream: i64,
    pub typing: i64,
}

impl SyncToken {
    /// Parses `s12_34`, `s12`, `t12` or `12`.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s
            .strip_prefix('s')
            .or_else(|| s.strip_prefix('t'))
            .unwrap_or(s);
        let mut parts = body.split('_');
        let stream = parts.next()?.parse().ok()?;
        let typing = match parts.next() {
            Some(t) => t.parse().ok()?,
            None => 0,
        };
        Some(Self { stream, typing })
    }

    pub fn encode(&self) -> String {
        format!("s{}_{}", self.stream, self.typing)
    }

    /// A pagination token for a stream position.
    pub fn at(stream: i64) -> String {
        Self { stream, typing: 0 }.encode()
    }
}

/// Everything `compute` needs besides the connection.
pub struct SyncRequest<'a> {
    pub viewer: Viewer,
    pub since: Option<SyncToken>,
    pub upto: i64,
    pub typing_now: i64,
    pub filter: &'a Filter,
    pub full_state: bool,
    pub typing: &'a Typing,
}

/// The computed response and whether it carries anything new.
pub struct SyncResult {
    pub body: Value,
    pub has_changes: bool,
}

/// A room's unread counts for a user: `(notification_count, highlight_count)` over the
/// whole room (every thread), from the push worker's notification rows after the user's read
/// receipts (`storage::push`). What `/sync` (without thread support) and sliding sync show.
pub fn unread_counts(
    conn: &mut AnyConnection,
    room_id: &str,
    user_id: &str,
) -> StorageResult<(u64, u64)> {
    Ok(crate::storage::push::room_counts(conn, user_id, room_id)?.total)
}

pub(crate) fn counts_json((notifications, highlights): (u64, u64)) -> Value {
    json!({"highlight_count": highlights, "notification_count": notifications})
}

fn receipts_event(rows: &[account::ReceiptRow]) -> Option<Value> {
    if rows.is_empty() {
        return None;
    }
    let mut content: Map<String, Value> = Map::new();
    for r in rows {
        let by_event = content
            .entry(r.event_id.clone())
            .or_insert_with(|| json!({}));
        let mut receipt = json!({"ts": r.ts});
        if !r.thread_id.is_empty() {
            receipt["thread_id"] = json!(r.thread_id);
        }
        by_event[&r.receipt_type][&r.user_id] = receipt;
    }
    Some(json!({"type": "m.receipt", "content": content}))
}

fn account_data_events(rows: Vec<(String, String, String)>, room: &str) -> Vec<Value> {
    rows.into_iter()
        .filter(|(r, _, _)| r == room)
        .map(|(_, t, c)| {
            json!({"type": t, "content": serde_json::from_str::<Value>(&c).unwrap_or(json!({}))})
        })
        .collect()
}

/// What a joined room's entry carries besides its summary and unread counts.
pub(crate) struct JoinedSections {
    pub timeline: Vec<Value>,
    pub limited: bool,
    pub prev_batch: String,
    pub state: Vec<Value>,
    pub ephemeral: Vec<Value>,
    pub account_data: Vec<Value>,
}

/// A joined room's entry in a response: `sections`, with the member counts of the summary
/// and the user's unread counts read now (current values, whatever the window). Shared by
/// the full read ([`compute`]) and the woken answer ([`wake::answer`]), which must give the
/// same body.
pub(crate) fn joined_room(
    conn: &mut AnyConnection,
    user_id: &str,
    room_id: &str,
    filter: &Filter,
    sections: JoinedSections,
) -> StorageResult<Value> {
    let counts = crate::storage::push::room_counts(conn, user_id, room_id)?;
    // With `unread_thread_notifications`, the room's counts are its main timeline and each
    // thread has its own.
    let threaded = filter.room.timeline.unread_thread_notifications;
    let unread = counts_json(if threaded { counts.main } else { counts.total });
    let joined = rooms::count_members_with(conn, room_id, "join")?;
    let invited = rooms::count_members_with(conn, room_id, "invite")?;
    let mut entry = json!({
        "timeline": {
            "events": sections.timeline,
            "limited": sections.limited,
            "prev_batch": sections.prev_batch,
        },
        "state": {"events": sections.state},
        "ephemeral": {"events": sections.ephemeral},
        "account_data": {"events": sections.account_data},
        "summary": {"m.joined_member_count": joined, "m.invited_member_count": invited},
        "unread_notifications": unread,
    });
    if threaded && !counts.threads.is_empty() {
        let per: Map<String, Value> = counts
            .threads
            .into_iter()
            .map(|(t, c)| (t, counts_json(c)))
            .collect();
        entry["unread_thread_notifications"] = Value::Object(per);
    }
    Ok(entry)
}

/// Builds the sync response for `(since, upto]`.
pub fn compute(conn: &mut AnyConnection, req: &SyncRequest<'_>) -> StorageResult<SyncResult> {
    // E2EE sections first: a cut to-device batch lowers `upto` for the whole response.
    let e2ee = crate::e2ee::sync::SyncExtensions::load(
        conn,
        &req.viewer.user_id,
        &req.viewer.device_id,
        req.since.map(|s| s.stream),
        req.upto,
    )?;
    let capped = SyncRequest {
        viewer: req.viewer.clone(),
        upto: e2ee.upto,
        ..*req
    };
    let req = &capped;
    let user = req.viewer.user_id.as_str();
    let since_stream = req.since.map(|s| s.stream);
    let since_typing = req.since.map(|s| s.typing).unwrap_or(i64::MIN);
    let after = since_stream.unwrap_or(i64::MIN);
    let mut versions = Versions::default();
    let mut has_changes = e2ee.has_changes();

    let account_rows = account::account_data_since(conn, user, after, req.upto)?;
    // Rooms whose unread counts changed without anything else (the push worker runs behind
    // the commit; the user's receipts).
    let recounted = match since_stream {
        Some(s) => crate::storage::push::rooms_with_count_changes(conn, user, s, req.upto)?,
        None => HashMap::new(),
    };

    // Partial-state rooms that got their full state in the window: the members learned
    // (never timeline events) go into their state sections.
    let completed = match since_stream {
        Some(s) => crate::storage::partial_state::completed_between(conn, s, req.upto)?,
        None => HashMap::new(),
    };

    let mut join = Map::new();
    let mut invite = Map::new();
    let mut leave = Map::new();
    let mut knock = Map::new();
    // Forgotten rooms still count when their membership changed in the window: a declined
    // invite (leave, then forget) must reach the client as a leave.
    let memberships = rooms::rooms_for_user_since(conn, user, since_stream)?;
    for m in memberships {
        if m.forgotten && !matches!(m.membership.as_str(), "leave" | "ban") {
            continue;
        }
        if !req.filter.room.allows_room(&m.room_id) {
            continue;
        }
        let changed_membership =
            since_stream.is_none_or(|s| m.stream_ordering > s) && m.stream_ordering <= req.upto;
        match m.membership.as_str() {
            "join" => {
                let version = versions.get(conn, &m.room_id)?;
                let newly = since_stream.is_some_and(|s| m.stream_ordering > s);
                let full = since_stream.is_none() || newly || req.full_state;
                let limit = req.filter.room.timeline_limit();
                let ranges = visibility::user_ranges(conn, &m.room_id, user, req.upto)?;
                let lower = if since_stream.is_none() || newly {
                    i64::MIN
                } else {
                    after
                };
                let mut rows = if req.filter.room.timeline.excludes_all() {
                    Vec::new()
                } else {
                    visibility::visible_timeline(
                        conn,
                        &m.room_id,
                        &ranges,
                        lower,
                        req.upto,
                        (limit + 1) as i64,
                        true,
                    )?
                };
                let limited = rows.len() > limit;
                if limited {
                    rows.remove(0);
                }
                let first_stream = rows.first().and_then(|r| r.stream_ordering);
                let prev_batch = SyncToken::at(first_stream.map(|s| s - 1).unwrap_or(req.upto));
                let timeline_ids: HashSet<String> =
                    rows.iter().map(|r| r.event_id.clone()).collect();
                rows.retain(|r| req.filter.room.timeline.allows(&r.event_type, &r.sender));
                let timeline = view::client_events(conn, &rows, version, &req.viewer)?;

                let mut state_events = Vec::new();
                if full || limited {
                    let ids: Vec<String> = state::current_state(conn, &m.room_id)?
                        .into_values()
                        .collect();
                    let mut srows = events::get_events(conn, &ids)?;
                    srows.retain(|r| {
                        !timeline_ids.contains(&r.event_id)
                            && r.stream_ordering.is_none_or(|s| s <= req.upto)
                            && req.filter.room.state.allows(&r.event_type, &r.sender)
                            && (full
                                || r.stream_ordering.is_some_and(|s| {
                                    s > after && first_stream.is_none_or(|f| s < f)
                                }))
                    });
                    srows.sort_by_key(|r| r.stream_ordering.unwrap_or(i64::MIN));
                    state_events = view::client_events(conn, &srows, version, &req.viewer)?;
                }
                if !full && let Some(at) = completed.get(&m.room_id) {
                    let ids = crate::storage::partial_state::memberships_at(conn, &m.room_id, *at)?;
                    let mut srows = events::get_events(conn, &ids)?;
                    srows.retain(|r| {
                        !timeline_ids.contains(&r.event_id)
                            && r.stream_ordering.is_none()
                            && req.filter.room.state.allows(&r.event_type, &r.sender)
                    });
                    state_events.extend(view::client_events(conn, &srows, version, &req.viewer)?);
                }

                let mut ephemeral = Vec::new();
                let typing_since = if full { i64::MIN } else { since_typing };
                if let Some(users) = req.typing.get(&m.room_id, typing_since) {
                    ephemeral.push(json!({"type": "m.typing", "content": {"user_ids": users}}));
                }
                let receipt_rows = account::receipts_since(
                    conn,
                    &m.room_id,
                    if full { i64::MIN } else { after },
                    req.upto,
                )?;
                // Private receipts are their owner's alone.
                let receipt_rows: Vec<account::ReceiptRow> = receipt_rows
                    .into_iter()
                    .filter(|r| r.receipt_type != "m.read.private" || r.user_id == user)
                    .collect();
                if let Some(r) = receipts_event(&receipt_rows) {
                    ephemeral.push(r);
                }
                let room_account = account_data_events(account_rows.clone(), &m.room_id);

                if !full
                    && timeline.is_empty()
                    && state_events.is_empty()
                    && ephemeral.is_empty()
                    && room_account.is_empty()
                    && !recounted.contains_key(&m.room_id)
                {
                    continue;
                }
                has_changes = true;
                let entry = joined_room(
                    conn,
                    user,
                    &m.room_id,
                    req.filter,
                    JoinedSections {
                        timeline,
                        limited,
                        prev_batch,
                        state: state_events,
                        ephemeral,
                        account_data: room_account,
                    },
                )?;
                join.insert(m.room_id.clone(), entry);
            }
            "invite" | "knock" if changed_membership => {
                // Servers may send full PDUs (room v12); clients get stripped state.
                let mut stripped: Vec<Value> = m
                    .invite_state
                    .as_deref()
                    .and_then(|s| serde_json::from_str::<Vec<Value>>(s).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| e.get("type").is_some())
                    .map(|e| {
                        json!({
                            "type": e["type"],
                            "state_key": e.get("state_key").cloned().unwrap_or(json!("")),
                            "sender": e["sender"],
                            "content": e.get("content").cloned().unwrap_or(json!({})),
                        })
                    })
                    .collect();
                if let Some(row) = events::get_event(conn, &m.event_id)? {
                    let version = versions.get(conn, &m.room_id)?;
                    let pdu = view::pdu_of(&row, version)?;
                    stripped.push(weft_protocol::client_event::stripped_state(&pdu));
                }
                has_changes = true;
                if m.membership == "knock" {
                    knock.insert(
                        m.room_id.clone(),
                        json!({"knock_state": {"events": stripped}}),
                    );
                } else {
                    invite.insert(
                        m.room_id.clone(),
                        json!({"invite_state": {"events": stripped}}),
                    );
                }
            }
            "leave" | "ban"
                if (since_stream.is_some() && changed_membership)
                    || (since_stream.is_none() && req.filter.room.include_leave) =>
            {
                let version = versions.get(conn, &m.room_id)?;
                let limit = req.filter.room.timeline_limit();
                let ranges = visibility::user_ranges(conn, &m.room_id, user, m.stream_ordering)?;
                let mut rows = visibility::visible_timeline(
                    conn,
                    &m.room_id,
                    &ranges,
                    after,
                    m.stream_ordering,
                    (limit + 1) as i64,
                    true,
                )?;
                let limited = rows.len() > limit;
                if limited {
                    rows.remove(0);
                }
                // Someone else's leave (kick/ban) from before we joined shows nothing useful;
                // always include our own membership event.
                if !rows.iter().any(|r| r.event_id == m.event_id)
                    && let Some(r) = events::get_event(conn, &m.event_id)?
                {
                    rows.push(r);
                }
                let first_stream = rows.first().and_then(|r| r.stream_ordering);
                let timeline = view::client_events(conn, &rows, version, &req.viewer)?;
                has_changes = true;
                leave.insert(
                    m.room_id.clone(),
                    json!({
                        "timeline": {"events": timeline, "limited": limited,
                                     "prev_batch": SyncToken::at(first_stream.map(|s| s - 1).unwrap_or(m.stream_ordering))},
                        "state": {"events": []},
                        "account_data": {"events": []},
                    }),
                );
            }
            _ => {}
        }
    }

    let global_account: Vec<Value> = account_data_events(account_rows, "");
    if !global_account.is_empty() {
        has_changes = true;
    }
    let next = SyncToken {
        stream: req.upto,
        typing: req.typing_now,
    };
    let mut body = json!({
        "next_batch": next.encode(),
        "rooms": {"join": join, "invite": invite, "leave": leave, "knock": knock},
        "account_data": {"events": global_account},
        "presence": {"events": []},
    });
    e2ee.write_into(&mut body);
    Ok(SyncResult { body, has_changes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(
            SyncToken::parse("s12_34"),
            Some(SyncToken {
                stream: 12,
                typing: 34
            })
        );
        assert_eq!(
            SyncToken::parse("s12"),
            Some(SyncToken {
                stream: 12,
                typing: 0
            })
        );
        assert_eq!(
            SyncToken::parse("t-5"),
            Some(SyncToken {
                stream: -5,
                typing: 0
            })
        );
        assert_eq!(
            SyncToken::parse("7"),
            Some(SyncToken {
                stream: 7,
                typing: 0
            })
        );
        assert_eq!(SyncToken::parse("sx"), None);
        assert_eq!(SyncToken::parse("s1_x"), None);
        assert_eq!(
            SyncToken::parse(
                &SyncToken {
                    stream: 3,
                    typing: 9
                }
                .encode()
            ),
            Some(SyncToken {
                stream: 3,
                typing: 9
            })
        );
    }
}
