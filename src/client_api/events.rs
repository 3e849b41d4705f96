//! Sending and reading room events: send, state (put/get), redact, messages, event, context,
//! members, joined_members.

use actix_web::{HttpResponse, web};
use ruma::{OwnedEventId, OwnedRoomId};
use serde::Deserialize;
use serde_json::{Value, json};
use weft_protocol::builder::EventDraft;

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::rooms::access;
use crate::rooms::messages::{SendEvent, TxnKey};
use crate::rooms::view::{self, Versions, Viewer};
use crate::services::Services;
use crate::storage::rooms::MembershipRow;
use crate::storage::state::StateIds;
use crate::storage::{events, state};
use crate::sync::SyncToken;
use crate::sync::visibility::{self as hv, Ranges};

type Data = web::Data<Services>;

pub(crate) fn room(s: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(s).map_err(|_| Error::invalid_param("invalid room ID"))
}

/// The spec's size limits on event fields (type and state key: 255 bytes); the whole PDU's
/// 64 KiB limit is checked when it is built. Remote servers reject events over them.
fn check_field_sizes(kind: &str, state_key: Option<&str>) -> Result<()> {
    if kind.len() > 255 || state_key.is_some_and(|k| k.len() > 255) {
        return Err(Error::TooLarge);
    }
    Ok(())
}

/// The event a committed client transaction created (a retry is answered with it).
async fn committed_txn(s: &Services, key: &TxnKey) -> Result<Option<String>> {
    let k = key.clone();
    Ok(s.core
        .db
        .read(move |c| events::get_txn(c, &k.user_id, &k.device_id, &k.scope, &k.txn_id))
        .await?)
}

pub(crate) fn viewer(user: &AuthedUser) -> Viewer {
    Viewer {
        user_id: user.user_id.to_string(),
        device_id: user.device_id.clone(),
    }
}

pub async fn send(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Result<HttpResponse> {
    let accepted = std::time::Instant::now();
    s.limits.send(user.user_id.as_str())?;
    let (room_id, kind, txn_id) = path.into_inner();
    let room_id = room(&room_id)?;
    if !content.is_object() {
        return Err(Error::bad_json("event content must be a JSON object"));
    }
    check_field_sizes(&kind, None)?;
    let key = TxnKey::send(
        user.user_id.as_str(),
        &user.device_id,
        room_id.as_str(),
        &kind,
        txn_id,
    );
    // A retry of an old transaction: answer from the database.
    if let Some(id) = committed_txn(&s, &key).await? {
        return Ok(HttpResponse::Ok().json(json!({"event_id": id})));
    }
    let draft = EventDraft::new(kind, user.user_id.clone(), content);
    send_in_txn(&s, &room_id, draft, key, Some(accepted)).await
}

/// Sends a client's event under its transaction key and answers `{"event_id": ..}` (a
/// retry of a committed transaction was answered before this, from `committed_txn`).
async fn send_in_txn(
    s: &Services,
    room_id: &OwnedRoomId,
    draft: EventDraft,
    key: TxnKey,
    accepted: Option<std::time::Instant>,
) -> Result<HttpResponse> {
    let id = s
        .rooms
        .send(
            room_id,
            SendEvent {
                draft,
                txn: Some(key),
                accepted,
            },
        )
        .await??;
    Ok(HttpResponse::Ok().json(json!({"event_id": id})))
}

pub async fn put_state(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Result<HttpResponse> {
    let (room_id, kind, state_key) = path.into_inner();
    put_state_inner(s, user, room_id, kind, state_key, content).await
}

pub async fn put_state_empty_key(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Result<HttpResponse> {
    let (room_id, kind) = path.into_inner();
    put_state_inner(s, user, room_id, kind, String::new(), content).await
}

async fn put_state_inner(
    s: Data,
    user: AuthedUser,
    room_id: String,
    kind: String,
    state_key: String,
    content: Value,
) -> Result<HttpResponse> {
    s.limits.send(user.user_id.as_str())?;
    let room_id = room(&room_id)?;
    if !content.is_object() {
        return Err(Error::bad_json("event content must be a JSON object"));
    }
    check_field_sizes(&kind, Some(&state_key))?;
    if kind == "m.room.create" {
        return Err(Error::forbidden("the create event cannot be replaced"));
    }
    let draft = EventDraft::state(kind, state_key, user.user_id.clone(), content);
    let id = s.rooms.send_draft(&room_id, draft).await?;
    Ok(HttpResponse::Ok().json(json!({"event_id": id})))
}

#[derive(Deserialize)]
pub struct FormatQuery {
    format: Option<String>,
}

pub async fn get_state_event(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    q: web::Query<FormatQuery>,
) -> Result<HttpResponse> {
    let (room_id, kind, state_key) = path.into_inner();
    get_state_event_inner(s, user, room_id, kind, state_key, q.format.clone()).await
}

pub async fn get_state_event_empty_key(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    q: web::Query<FormatQuery>,
) -> Result<HttpResponse> {
    let (room_id, kind) = path.into_inner();
    get_state_event_inner(s, user, room_id, kind, String::new(), q.format.clone()).await
}

/// The room state a caller may read (spec, `GET /rooms/{roomId}/state`): the current state
/// for a joined member or anyone in a world-readable room; for a member who left, the state
/// at their leave. Others get 403.
async fn readable_state(s: &Services, room_id: &str, user_id: &str) -> Result<StateIds> {
    let m = access::membership(&s.core, room_id, user_id).await?;
    let r = room_id.to_owned();
    let found = s
        .core
        .db
        .read(move |c| {
            let joined = m.as_ref().is_some_and(|m| m.membership == "join");
            if joined
                || hv::current_visibility(c, &r)?
                    == weft_protocol::visibility::HistoryVisibility::WorldReadable
            {
                return Ok(Some(state::current_state(c, &r)?));
            }
            match m {
                Some(m) if matches!(m.membership.as_str(), "leave" | "ban") => {
                    hv::state_after(c, &m.event_id)
                }
                _ => Ok(None),
            }
        })
        .await?;
    found.ok_or_else(|| Error::forbidden("you may not read this room's state"))
}

async fn get_state_event_inner(
    s: Data,
    user: AuthedUser,
    room_id: String,
    kind: String,
    state_key: String,
    format: Option<String>,
) -> Result<HttpResponse> {
    let room_id = room(&room_id)?;
    let ids = readable_state(&s, room_id.as_str(), user.user_id.as_str()).await?;
    let v = viewer(&user);
    let found = s
        .core
        .db
        .read(move |c| {
            let Some(id) = ids.get(&(kind, state_key)) else {
                return Ok(None);
            };
            view::client_event_by_id(c, id, &v, &mut Versions::default())
        })
        .await?;
    let (_, ev) = found.ok_or_else(|| Error::not_found("state event not found"))?;
    if format.as_deref() == Some("event") {
        return Ok(HttpResponse::Ok().json(ev));
    }
    Ok(HttpResponse::Ok().json(ev.get("content").cloned().unwrap_or(json!({}))))
}

/// State events by ID, as client events (oldest first).
fn state_events(
    c: &mut crate::storage::AnyConnection,
    room_id: &str,
    ids: &StateIds,
    viewer: &Viewer,
) -> crate::storage::StorageResult<Vec<Value>> {
    let ids: Vec<String> = ids.values().cloned().collect();
    let mut rows = events::get_events(c, &ids)?;
    rows.sort_by_key(|r| r.stream_ordering.unwrap_or(i64::MIN));
    let version = Versions::default().get(c, room_id)?;
    view::client_events(c, &rows, version, viewer)
}

/// The state the caller may read, as client events.
async fn readable_state_events(
    s: &Services,
    room_id: &str,
    user: &AuthedUser,
) -> Result<Vec<Value>> {
    let ids = readable_state(s, room_id, user.user_id.as_str()).await?;
    let (r, v) = (room_id.to_owned(), viewer(user));
    Ok(s.core
        .db
        .read(move |c| state_events(c, &r, &ids, &v))
        .await?)
}

pub async fn get_state(s: Data, user: AuthedUser, path: web::Path<String>) -> Result<HttpResponse> {
    let room_id = room(&path.into_inner())?;
    let evs = readable_state_events(&s, room_id.as_str(), &user).await?;
    Ok(HttpResponse::Ok().json(evs))
}

#[derive(Deserialize)]
pub struct MembersQuery {
    membership: Option<String>,
    not_membership: Option<String>,
}

/// A partial-state room (joined with `omit_members`, `rooms::partial_state`) lists its
/// members once the full state is in: the request waits for it, at most
/// `federation.partial_state_members_wait_ms`, then answers the members known so far
/// (matrix-js-sdk and matrix-rust-sdk load members once per room and wait on the request;
/// an incomplete list they would keep, so waiting is what they handle best).
async fn wait_for_members(s: &Data, room_id: &str) -> Result<()> {
    let bound =
        std::time::Duration::from_millis(s.core.config.federation.partial_state_members_wait_ms);
    if !crate::rooms::partial_state::wait_full_state(&s.core, room_id, bound).await? {
        tracing::info!(
            room = room_id,
            "members listed from a partial state (the full state is not in yet)"
        );
    }
    Ok(())
}

pub async fn members(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    q: web::Query<MembersQuery>,
) -> Result<HttpResponse> {
    let room_id = room(&path.into_inner())?;
    wait_for_members(&s, room_id.as_str()).await?;
    let evs = readable_state_events(&s, room_id.as_str(), &user).await?;
    let chunk: Vec<Value> = evs
        .into_iter()
        .filter(|e| e["type"] == "m.room.member")
        .filter(|e| {
            let m = e["content"]["membership"].as_str().unwrap_or_default();
            q.membership.as_deref().is_none_or(|want| want == m)
                && q.not_membership.as_deref() != Some(m)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"chunk": chunk})))
}

pub async fn joined_members(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let room_id = room(&path.into_inner())?;
    // Joined members, or anyone in a world-readable room (a past member's state at their
    // leave is not "joined members").
    let m = access::membership(&s.core, room_id.as_str(), user.user_id.as_str()).await?;
    if m.as_ref().is_none_or(|m| m.membership != "join") {
        let r = room_id.to_string();
        let visibility = s
            .core
            .db
            .read(move |c| hv::current_visibility(c, &r))
            .await?;
        if visibility != weft_protocol::visibility::HistoryVisibility::WorldReadable {
            return Err(Error::forbidden("you are not joined to this room"));
        }
    }
    wait_for_members(&s, room_id.as_str()).await?;
    let evs = readable_state_events(&s, room_id.as_str(), &user).await?;
    let mut joined = serde_json::Map::new();
    for e in evs {
        if e["type"] == "m.room.member"
            && e["content"]["membership"] == "join"
            && let Some(u) = e["state_key"].as_str()
        {
            joined.insert(
                u.to_owned(),
                json!({"display_name": e["content"]["displayname"], "avatar_url": e["content"]["avatar_url"]}),
            );
        }
    }
    Ok(HttpResponse::Ok().json(json!({"joined": joined})))
}

#[derive(Deserialize)]
pub struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<usize>,
    filter: Option<String>,
}

/// What the caller may read in a room: the stream ranges visible to them, each event judged
/// at its own state (see [`crate::sync::visibility`]), and their membership. Someone who
/// never was a member and sees nothing gets 403.
pub(crate) async fn readable(
    s: &Services,
    room_id: &str,
    user_id: &str,
) -> Result<(Ranges, Option<MembershipRow>)> {
    let m = access::membership(&s.core, room_id, user_id).await?;
    let (r, u) = (room_id.to_owned(), user_id.to_owned());
    let upto = s.core.notifier.frontier();
    let ranges = s
        .core
        .db
        .read(move |c| hv::user_ranges(c, &r, &u, upto))
        .await?;
    let past_member = m
        .as_ref()
        .is_some_and(|m| matches!(m.membership.as_str(), "join" | "leave" | "ban"));
    if ranges.is_empty() && !past_member {
        return Err(Error::forbidden("you are not a member of this room"));
    }
    Ok((ranges, m))
}

pub async fn messages(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    q: web::Query<MessagesQuery>,
) -> Result<HttpResponse> {
    let room_id = room(&path.into_inner())?;
    let (ranges, _) = readable(&s, room_id.as_str(), user.user_id.as_str()).await?;
    let backwards = match q.dir.as_deref() {
        Some("b") | None => true,
        Some("f") => false,
        Some(_) => return Err(Error::invalid_param("dir must be b or f")),
    };
    let limit = q.limit.unwrap_or(10).clamp(1, 1000) as i64;
    let parse = |t: &str| {
        SyncToken::parse(t)
            .map(|t| t.stream)
            .ok_or_else(|| Error::invalid_param("invalid pagination token"))
    };
    let frontier = s.core.notifier.frontier();
    let from = match &q.from {
        Some(t) => parse(t)?,
        None if backwards => frontier,
        None => i64::MIN + 1,
    };
    let to = q.to.as_deref().map(parse).transpose()?;
    let filter: crate::sync::filter::EventFilter = match &q.filter {
        Some(f) => {
            serde_json::from_str(f).map_err(|e| Error::bad_json(format!("invalid filter: {e}")))?
        }
        None => Default::default(),
    };
    let v = viewer(&user);
    let r = room_id.to_string();
    let read = |r: String, v: Viewer, filter: crate::sync::filter::EventFilter| {
        let ranges = ranges.clone();
        s.core.db.read(move |c| {
            let version = Versions::default().get(c, &r)?;
            let rows = if backwards {
                let lo = to.unwrap_or(i64::MIN);
                hv::visible_timeline(c, &r, &ranges, lo, from.min(frontier), limit, true)?
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
            } else {
                let hi = frontier.min(to.unwrap_or(i64::MAX));
                hv::visible_timeline(c, &r, &ranges, from, hi, limit, false)?
            };
            let full = rows.len() as i64 == limit;
            let end = if full {
                rows.last()
                    .and_then(|r| r.stream_ordering)
                    .map(|s| if backwards { s - 1 } else { s })
            } else {
                None
            };
            let mut rows = rows;
            rows.retain(|row| filter.allows(&row.event_type, &row.sender));
            let chunk = view::client_events(c, &rows, version, &v)?;
            // Lazy-loading clients get the senders' member events alongside.
            let mut state_events = Vec::new();
            if filter.lazy_load_members {
                let mut senders: Vec<String> = rows.iter().map(|r| r.sender.clone()).collect();
                senders.sort();
                senders.dedup();
                let mut ids = Vec::new();
                for sender in senders {
                    if let Some(id) = state::current_state_entry(c, &r, "m.room.member", &sender)? {
                        ids.push(id);
                    }
                }
                let srows = events::get_events(c, &ids)?;
                state_events = view::client_events(c, &srows, version, &v)?;
            }
            Ok((chunk, end, state_events, full))
        })
    };
    let (mut chunk, mut end, mut state_events, full) =
        read(r.clone(), v.clone(), filter.clone()).await?;
    // Out of local history while paging back: ask the room's other servers for more.
    if backwards && !full && to.is_none() && s.remote()?.backfill(&s, &r, limit as usize).await > 0
    {
        (chunk, end, state_events, _) = read(r, v, filter).await?;
    }
    let mut body = json!({
        "start": q.from.clone().unwrap_or_else(|| SyncToken::at(from)),
        "chunk": chunk,
        "state": state_events,
    });
    if let Some(e) = end {
        body["end"] = json!(SyncToken::at(e));
    }
    Ok(HttpResponse::Ok().json(body))
}

/// An event the caller may see, with its row.
pub(crate) async fn visible_event(
    s: &Services,
    user: &AuthedUser,
    room_id: &OwnedRoomId,
    event_id: &str,
) -> Result<(crate::storage::events::EventRow, Value)> {
    let (ranges, _) = readable(s, room_id.as_str(), user.user_id.as_str()).await?;
    let v = viewer(user);
    let e = event_id.to_owned();
    let found = s
        .core
        .db
        .read(move |c| view::client_event_by_id(c, &e, &v, &mut Versions::default()))
        .await?;
    match found {
        Some((row, ev))
            if row.room_id == room_id.as_str()
                && !row.outlier
                && row.rejected.is_none()
                && row
                    .stream_ordering
                    .is_some_and(|st| weft_protocol::visibility::in_ranges(&ranges, st)) =>
        {
            Ok((row, ev))
        }
        _ => Err(Error::not_found("event not found")),
    }
}

pub async fn get_event(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room_id, event_id) = path.into_inner();
    let room_id = room(&room_id)?;
    let (_, ev) = visible_event(&s, &user, &room_id, &event_id).await?;
    Ok(HttpResponse::Ok().json(ev))
}

#[derive(Deserialize)]
pub struct ContextQuery {
    limit: Option<usize>,
}

pub async fn context(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    q: web::Query<ContextQuery>,
) -> Result<HttpResponse> {
    let (room_id, event_id) = path.into_inner();
    let room_id = room(&room_id)?;
    let (row, ev) = visible_event(&s, &user, &room_id, &event_id).await?;
    let (ranges, _) = readable(&s, room_id.as_str(), user.user_id.as_str()).await?;
    let (before_limit, after_limit) = context_split(q.limit.unwrap_or(10).min(100) as i64);
    let pos = row.stream_ordering.unwrap_or(0);
    let v = viewer(&user);
    let r = room_id.to_string();
    let upper = s.core.notifier.frontier();
    let target_id = row.event_id.clone();
    let (before, after, st) = s
        .core
        .db
        .read(move |c| {
            let version = Versions::default().get(c, &r)?;
            let before_rows: Vec<_> =
                hv::visible_timeline(c, &r, &ranges, i64::MIN, pos - 1, before_limit, true)?
                    .into_iter()
                    .rev()
                    .collect();
            let after_rows = hv::visible_timeline(c, &r, &ranges, pos, upper, after_limit, false)?;
            let before = view::client_events(c, &before_rows, version, &v)?;
            let after = view::client_events(c, &after_rows, version, &v)?;
            // Spec: the state at the last event returned (so a member who left sees the
            // state of their time in the room, never later).
            let last = after_rows
                .last()
                .map(|r| r.event_id.clone())
                .unwrap_or(target_id);
            let ids = match hv::state_after(c, &last)? {
                Some(ids) => ids,
                None => state::current_state(c, &r)?,
            };
            let st = state_events(c, &r, &ids, &v)?;
            let start = before_rows
                .last()
                .and_then(|r| r.stream_ordering)
                .map(|s| s - 1)
                .unwrap_or(pos - 1);
            let end = after_rows
                .last()
                .and_then(|r| r.stream_ordering)
                .unwrap_or(pos);
            Ok(((before, start), (after, end), st))
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "event": ev,
        "events_before": before.0,
        "events_after": after.0,
        "start": SyncToken::at(before.1),
        "end": SyncToken::at(after.1),
        "state": st,
    })))
}

/// How `/context`'s `limit` splits into events before and after the target: the spec leaves
/// it to the server; like Synapse, the smaller half before (limit 3: one before, two after).
fn context_split(limit: i64) -> (i64, i64) {
    let limit = limit.max(0);
    let before = limit / 2;
    (before, limit - before)
}

#[derive(Deserialize, Default)]
pub struct RedactBody {
    reason: Option<String>,
}

pub async fn redact(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<RedactBody>,
) -> Result<HttpResponse> {
    s.limits.send(user.user_id.as_str())?;
    let (room_id, event_id, txn_id) = path.into_inner();
    let room_id = room(&room_id)?;
    let target = OwnedEventId::try_from(event_id.as_str())
        .map_err(|_| Error::invalid_param("invalid event ID"))?;
    let key = TxnKey::redact(
        user.user_id.as_str(),
        &user.device_id,
        room_id.as_str(),
        target.as_str(),
        txn_id,
    );
    if let Some(id) = committed_txn(&s, &key).await? {
        return Ok(HttpResponse::Ok().json(json!({"event_id": id})));
    }
    let (row, _) = visible_event(&s, &user, &room_id, target.as_str()).await?;
    if row.sender != user.user_id.as_str() {
        // Redacting someone else's event needs the redact power level.
        let snapshot = s
            .rooms
            .send(&room_id, crate::rooms::messages::GetSnapshot)
            .await??;
        let pl = snapshot.state.power_levels(snapshot.version);
        if pl.user_level(user.user_id.as_str()) < pl.redact_level() {
            return Err(Error::forbidden("you may not redact other users' events"));
        }
    }
    let mut content = json!({});
    if let Some(r) = body.reason {
        content["reason"] = json!(r);
    }
    let mut draft = EventDraft::new("m.room.redaction", user.user_id.clone(), content);
    draft.redacts = Some(target);
    send_in_txn(&s, &room_id, draft, key, None).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn context_split_like_synapse() {
        for (limit, want) in [
            (0, (0, 0)),
            (1, (0, 1)),
            (3, (1, 2)),
            (4, (2, 2)),
            (10, (5, 5)),
            (-2, (0, 0)),
        ] {
            assert_eq!(super::context_split(limit), want, "limit {limit}");
        }
    }
}
