//! Serving history to other servers: `/event`, `/state`, `/state_ids`, `/event_auth`,
//! `/backfill`, `/get_missing_events`. A server only gets events its users may see
//! (history visibility and its users' memberships in the state before each event, or its
//! presence in the room now for `shared` history: [`server_may_see`]).
//!
//! Every endpoint first asks the same question of the point it names (the event, the event
//! whose state is asked, the events to walk back from): may the requesting server see it?
//! A server with no member in the room at that point (nor now, for `shared` history) gets
//! 403 `M_FORBIDDEN`, unless the history there is `world_readable`; an unknown event or
//! room is 404. Rejected events are never served.

use std::collections::{BTreeMap, HashMap, HashSet};

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use weft_protocol::visibility::{HistoryVisibility, server_may_see};

use crate::error::{Error, Result};
use crate::federation::auth::Signed;
use crate::services::Services;
use crate::storage::events::EventRow;
use crate::storage::state::StateIds;
use crate::storage::{AnyConnection, StorageResult, events, now_ms, rooms, state};

type Data = web::Data<Services>;

fn server_of(user: &str) -> &str {
    user.split_once(':').map(|(_, s)| s).unwrap_or_default()
}

fn pdu_value(row: &EventRow) -> Value {
    serde_json::from_str(&row.json).unwrap_or(Value::Null)
}

fn content_of(conn: &mut AnyConnection, event_id: &str) -> StorageResult<Option<Value>> {
    Ok(events::get_event(conn, event_id)?
        .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
        .and_then(|v| v.get("content").cloned()))
}

/// Visibility of events to one server, with a per-request cache of state groups.
struct ServerView<'a> {
    server: &'a str,
    groups: HashMap<i64, bool>,
    currently_in_room: Option<bool>,
}

impl ServerView<'_> {
    fn in_room_now(&mut self, conn: &mut AnyConnection, room_id: &str) -> StorageResult<bool> {
        if let Some(v) = self.currently_in_room {
            return Ok(v);
        }
        let joined = rooms::members_with(conn, room_id, "join")?;
        let v = joined.iter().any(|u| server_of(u) == self.server);
        self.currently_in_room = Some(v);
        Ok(v)
    }

    fn may_see(&mut self, conn: &mut AnyConnection, row: &EventRow) -> StorageResult<bool> {
        let Some(g) = row.state_before else {
            return self.in_room_now(conn, &row.room_id);
        };
        if let Some(v) = self.groups.get(&g) {
            return Ok(*v);
        }
        let st = state::load_group(conn, g)?;
        let hv = match st.get(&("m.room.history_visibility".to_owned(), String::new())) {
            Some(id) => HistoryVisibility::from_content(content_of(conn, id)?.as_ref()),
            None => HistoryVisibility::Shared,
        };
        let mut memberships = Vec::new();
        for ((t, k), id) in &st {
            if t == "m.room.member"
                && server_of(k) == self.server
                && let Some(c) = content_of(conn, id)?
                && let Some(m) = c.get("membership").and_then(|m| m.as_str())
            {
                memberships.push(m.to_owned());
            }
        }
        let now = hv == HistoryVisibility::Shared && self.in_room_now(conn, &row.room_id)?;
        let v = server_may_see(hv, memberships.iter().map(String::as_str), now);
        self.groups.insert(g, v);
        Ok(v)
    }
}

/// Whether `server` may see the event of `row` (for endpoints outside this module, such as
/// the Linearized Matrix `event` and `backfill`).
pub(crate) fn server_may_see_row(
    conn: &mut AnyConnection,
    server: &str,
    row: &EventRow,
) -> StorageResult<bool> {
    let mut view = ServerView {
        server,
        groups: HashMap::new(),
        currently_in_room: None,
    };
    view.may_see(conn, row)
}

/// The gate of every history endpoint: the origin has a member in the room now, or may see
/// at least one of `points` (events of `room_id`; this covers `world_readable` history and
/// members at that point). 404 for an unknown room or when none of the points is known
/// here, 403 otherwise. What is then served is still filtered event by event.
pub(crate) async fn require_may_see(
    s: &Services,
    origin: &str,
    room_id: &str,
    points: Vec<String>,
) -> Result<()> {
    let (o, r) = (origin.to_owned(), room_id.to_owned());
    let verdict = s
        .core
        .db
        .read(move |c| {
            if rooms::get_room(c, &r)?.is_none() {
                return Ok(None);
            }
            let mut view = ServerView {
                server: &o,
                groups: HashMap::new(),
                currently_in_room: None,
            };
            let mut known = false;
            for p in &points {
                let Some(row) = events::get_event(c, p)? else {
                    continue;
                };
                if row.room_id != r || row.rejected.is_some() {
                    continue;
                }
                known = true;
                if view.in_room_now(c, &r)? || view.may_see(c, &row)? {
                    return Ok(Some(true));
                }
            }
            Ok(known.then_some(false))
        })
        .await?;
    match verdict {
        None => Err(Error::not_found("unknown room or event")),
        Some(false) => {
            tracing::info!(
                origin,
                room = room_id,
                "history refused to a server with no member in the room"
            );
            Err(Error::forbidden(
                "your server has no member in the room at that point",
            ))
        }
        Some(true) => Ok(()),
    }
}

/// The full auth chain of some events, as rows.
fn auth_chain_rows(conn: &mut AnyConnection, roots: &[String]) -> StorageResult<Vec<EventRow>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    for r in roots {
        if let Some(row) = events::get_event(conn, r)? {
            stack.extend(auth_ids(&row));
        }
    }
    while let Some(id) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        if let Some(row) = events::get_event(conn, &id)? {
            stack.extend(auth_ids(&row).into_iter().filter(|a| !seen.contains(a)));
            out.push(row);
        }
    }
    out.sort_by_key(|r| r.depth);
    Ok(out)
}

fn auth_ids(row: &EventRow) -> Vec<String> {
    serde_json::from_str::<Value>(&row.json)
        .ok()
        .and_then(|v| v.get("auth_events").cloned())
        .and_then(|a| serde_json::from_value::<Vec<String>>(a).ok())
        .unwrap_or_default()
}

fn prev_ids(row: &EventRow) -> Vec<String> {
    serde_json::from_str::<Value>(&row.json)
        .ok()
        .and_then(|v| v.get("prev_events").cloned())
        .and_then(|a| serde_json::from_value::<Vec<String>>(a).ok())
        .unwrap_or_default()
}

pub async fn get_event(s: Data, signed: Signed, path: web::Path<String>) -> Result<HttpResponse> {
    let event_id = path.into_inner();
    let origin = signed.origin.clone();
    let found = s
        .core
        .db
        .read(move |c| {
            let Some(row) = events::get_event(c, &event_id)? else {
                return Ok(None);
            };
            if row.rejected.is_some() {
                return Ok(None);
            }
            let mut view = ServerView {
                server: &origin,
                groups: HashMap::new(),
                currently_in_room: None,
            };
            Ok(Some(view.may_see(c, &row)?.then(|| pdu_value(&row))))
        })
        .await?;
    let pdu = found
        .ok_or_else(|| Error::not_found("event not found"))?
        .ok_or_else(|| {
            tracing::info!(origin = %signed.origin, "event refused to a server with no member in the room");
            Error::forbidden("your server has no member in the room at that point")
        })?;
    Ok(HttpResponse::Ok()
        .json(json!({"origin": s.server_name(), "origin_server_ts": now_ms(), "pdus": [pdu]})))
}

#[derive(Deserialize)]
pub struct AtEvent {
    event_id: String,
}

/// The state before an event and its auth chain, as rows.
async fn state_at(
    s: &Services,
    room_id: String,
    event_id: String,
) -> Result<(Vec<EventRow>, Vec<EventRow>)> {
    let found = s
        .core
        .db
        .read(move |c| {
            let Some(row) = events::get_event(c, &event_id)? else {
                return Ok(None);
            };
            if row.room_id != room_id {
                return Ok(None);
            }
            let Some(g) = row.state_before else {
                return Ok(None);
            };
            let ids: StateIds = state::load_group(c, g)?;
            let list: Vec<String> = ids.into_values().collect();
            let rows = events::get_events(c, &list)?;
            let chain = auth_chain_rows(c, &list)?;
            Ok(Some((rows, chain)))
        })
        .await?;
    found.ok_or_else(|| Error::not_found("state at that event is not known here"))
}

pub async fn get_state(
    s: Data,
    signed: Signed,
    path: web::Path<String>,
    q: web::Query<AtEvent>,
) -> Result<HttpResponse> {
    let room_id = path.into_inner();
    require_may_see(&s, &signed.origin, &room_id, vec![q.event_id.clone()]).await?;
    let (st, chain) = state_at(&s, room_id, q.event_id.clone()).await?;
    Ok(HttpResponse::Ok().json(json!({
        "pdus": st.iter().map(pdu_value).collect::<Vec<_>>(),
        "auth_chain": chain.iter().map(pdu_value).collect::<Vec<_>>(),
    })))
}

pub async fn get_state_ids(
    s: Data,
    signed: Signed,
    path: web::Path<String>,
    q: web::Query<AtEvent>,
) -> Result<HttpResponse> {
    let room_id = path.into_inner();
    require_may_see(&s, &signed.origin, &room_id, vec![q.event_id.clone()]).await?;
    let (st, chain) = state_at(&s, room_id, q.event_id.clone()).await?;
    Ok(HttpResponse::Ok().json(json!({
        "pdu_ids": st.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>(),
        "auth_chain_ids": chain.iter().map(|r| r.event_id.clone()).collect::<Vec<_>>(),
    })))
}

pub async fn get_event_auth(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room_id, event_id) = path.into_inner();
    require_may_see(&s, &signed.origin, &room_id, vec![event_id.clone()]).await?;
    let chain = s
        .core
        .db
        .read(move |c| match events::get_event(c, &event_id)? {
            Some(row) if row.room_id == room_id => Ok(Some(auth_chain_rows(c, &[event_id])?)),
            _ => Ok(None),
        })
        .await?
        .ok_or_else(|| Error::not_found("event not found"))?;
    Ok(HttpResponse::Ok()
        .json(json!({"auth_chain": chain.iter().map(pdu_value).collect::<Vec<_>>()})))
}

/// Walks `prev_events` backwards from `from` (excluding `stop`), newest depth first.
#[allow(clippy::too_many_arguments)]
fn walk_back(
    conn: &mut AnyConnection,
    room_id: &str,
    from: Vec<String>,
    include_from: bool,
    stop: &HashSet<String>,
    limit: usize,
    min_depth: i64,
    view: &mut ServerView<'_>,
) -> StorageResult<Vec<EventRow>> {
    let mut queue: BTreeMap<(i64, String), ()> = BTreeMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    for id in from {
        if let Some(row) = events::get_event(conn, &id)? {
            if include_from {
                queue.insert((row.depth, row.event_id.clone()), ());
            } else {
                for p in prev_ids(&row) {
                    if let Some(pr) = events::get_event(conn, &p)? {
                        queue.insert((pr.depth, pr.event_id.clone()), ());
                    }
                }
            }
        }
    }
    while out.len() < limit {
        let Some(((_, id), ())) = queue.pop_last() else {
            break;
        };
        if !seen.insert(id.clone()) || stop.contains(&id) {
            continue;
        }
        let Some(row) = events::get_event(conn, &id)? else {
            continue;
        };
        if row.room_id != room_id || row.depth < min_depth {
            continue;
        }
        for p in prev_ids(&row) {
            if !seen.contains(&p)
                && let Some(pr) = events::get_event(conn, &p)?
            {
                queue.insert((pr.depth, pr.event_id.clone()), ());
            }
        }
        if row.rejected.is_none() && view.may_see(conn, &row)? {
            out.push(row);
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
pub struct BackfillQuery {
    limit: Option<usize>,
}

pub async fn backfill(
    s: Data,
    signed: Signed,
    req: actix_web::HttpRequest,
    path: web::Path<String>,
    q: web::Query<BackfillQuery>,
) -> Result<HttpResponse> {
    let room_id = path.into_inner();
    // `v` may repeat: parse the query by hand.
    let vs: Vec<String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k == "v")
        .map(|(_, v)| v.into_owned())
        .collect();
    if vs.is_empty() {
        return Err(Error::MissingParam("missing v".into()));
    }
    require_may_see(&s, &signed.origin, &room_id, vs.clone()).await?;
    let limit = q.limit.unwrap_or(10).clamp(1, 100);
    let origin = signed.origin.clone();
    let r = room_id.clone();
    let rows = s
        .core
        .db
        .read(move |c| {
            let mut view = ServerView {
                server: &origin,
                groups: HashMap::new(),
                currently_in_room: None,
            };
            walk_back(c, &r, vs, true, &HashSet::new(), limit, i64::MIN, &mut view)
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "origin": s.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": rows.iter().map(pdu_value).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
pub struct MissingEventsBody {
    #[serde(default)]
    earliest_events: Vec<String>,
    latest_events: Vec<String>,
    limit: Option<usize>,
    min_depth: Option<i64>,
}

pub async fn get_missing_events(
    s: Data,
    signed: Signed,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let room_id = path.into_inner();
    let body: MissingEventsBody = signed.json()?;
    require_may_see(&s, &signed.origin, &room_id, body.latest_events.clone()).await?;
    let limit = body.limit.unwrap_or(10).clamp(1, 100);
    let origin = signed.origin.clone();
    let r = room_id.clone();
    let mut rows = s
        .core
        .db
        .read(move |c| {
            let stop: HashSet<String> = body.earliest_events.into_iter().collect();
            let mut view = ServerView {
                server: &origin,
                groups: HashMap::new(),
                currently_in_room: None,
            };
            walk_back(
                c,
                &r,
                body.latest_events,
                false,
                &stop,
                limit,
                body.min_depth.unwrap_or(0),
                &mut view,
            )
        })
        .await?;
    rows.sort_by_key(|r| r.depth);
    Ok(HttpResponse::Ok().json(json!({"events": rows.iter().map(pdu_value).collect::<Vec<_>>()})))
}
