//! `/_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]` and
//! `/_matrix/client/v1/rooms/{roomId}/threads`. The index is `storage::relations`; events
//! are rendered (with their own bundled aggregations) by `rooms::view`. What the caller
//! may see is bounded like `/messages`: the parent must be visible, and related events
//! only within the caller's readable window of the room.
//!
//! Pagination tokens are stream positions (`/relations`) or offsets into the thread list
//! (`/threads`), as decimal strings.

use std::collections::HashSet;

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::events::{readable_window, room, viewer, visible_event};
use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::rooms::view::{self, Versions};
use crate::services::Services;
use crate::storage::{events, relations};

type Data = web::Data<Services>;

/// How deep `recurse=true` follows relations of relations.
const MAX_DEPTH: usize = 3;

#[derive(Deserialize)]
pub struct RelationsQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<i64>,
    dir: Option<String>,
    recurse: Option<bool>,
}

fn token(t: &str) -> Result<i64> {
    t.parse::<i64>()
        .map_err(|_| Error::invalid_param("invalid pagination token"))
}

async fn relations_inner(
    s: &Services,
    user: &AuthedUser,
    room_id: &str,
    event_id: &str,
    rel_type: Option<String>,
    event_type: Option<String>,
    q: &RelationsQuery,
) -> Result<HttpResponse> {
    let room_id = room(room_id)?;
    let (floor, ceiling) = readable_window(s, room_id.as_str(), user.user_id.as_str()).await?;
    visible_event(s, user, &room_id, event_id).await?;
    let backwards = match q.dir.as_deref() {
        Some("b") | None => true,
        Some("f") => false,
        Some(_) => return Err(Error::invalid_param("dir must be b or f")),
    };
    let limit = q.limit.unwrap_or(5).clamp(1, 100);
    let from = q.from.as_deref().map(token).transpose()?;
    let to = q.to.as_deref().map(token).transpose()?;
    let (lo, hi) = if backwards {
        (
            floor.max(to.unwrap_or(i64::MIN)),
            ceiling.min(from.map(|f| f - 1).unwrap_or(i64::MAX)),
        )
    } else {
        (
            floor.max(from.unwrap_or(i64::MIN)),
            ceiling.min(to.unwrap_or(i64::MAX)),
        )
    };
    let recurse = q.recurse.unwrap_or(false);
    let v = viewer(user);
    let (parent, r) = (event_id.to_owned(), room_id.to_string());
    let (chunk, next, depth) = s
        .core
        .db
        .read(move |c| {
            // Parents to look under: the event, and with recursion what relates to it.
            let mut rows = Vec::new();
            let mut frontier = vec![parent];
            let mut seen: HashSet<String> = HashSet::new();
            let mut depth = 0;
            while !frontier.is_empty() && depth < if recurse { MAX_DEPTH } else { 1 } {
                depth += 1;
                let mut next_level = Vec::new();
                for p in &frontier {
                    for row in relations::page(c, p, None, None, lo, hi, i64::MAX, backwards)? {
                        if row.room_id == r && seen.insert(row.event_id.clone()) {
                            next_level.push(row.event_id.clone());
                            rows.push(row);
                        }
                    }
                }
                frontier = next_level;
            }
            rows.retain(|row| {
                rel_type.as_deref().is_none_or(|t| row.rel_type == t)
                    && event_type.as_deref().is_none_or(|t| row.event_type == t)
            });
            rows.sort_by_key(|row| row.stream_ordering);
            if backwards {
                rows.reverse();
            }
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            let next = if more {
                rows.last().map(|row| row.stream_ordering)
            } else {
                None
            };
            let ids: Vec<String> = rows.iter().map(|row| row.event_id.clone()).collect();
            let mut evs = events::get_events(c, &ids)?;
            let order: std::collections::HashMap<&str, usize> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            evs.sort_by_key(|e| {
                order
                    .get(e.event_id.as_str())
                    .copied()
                    .unwrap_or(usize::MAX)
            });
            let version = Versions::default().get(c, &r)?;
            let chunk = view::client_events(c, &evs, version, &v)?;
            Ok((chunk, next, depth))
        })
        .await?;
    let mut body = json!({"chunk": chunk});
    if let Some(n) = next {
        body["next_batch"] = json!(n.to_string());
    }
    if let Some(f) = &q.from {
        body["prev_batch"] = json!(f);
    }
    if recurse {
        body["recursion_depth"] = json!(depth);
    }
    Ok(HttpResponse::Ok().json(body))
}

pub async fn relations(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    q: web::Query<RelationsQuery>,
) -> Result<HttpResponse> {
    let (room_id, event_id) = path.into_inner();
    relations_inner(&s, &user, &room_id, &event_id, None, None, &q).await
}

pub async fn relations_of_type(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    q: web::Query<RelationsQuery>,
) -> Result<HttpResponse> {
    let (room_id, event_id, rel_type) = path.into_inner();
    relations_inner(&s, &user, &room_id, &event_id, Some(rel_type), None, &q).await
}

pub async fn relations_of_type_and_event_type(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String, String)>,
    q: web::Query<RelationsQuery>,
) -> Result<HttpResponse> {
    let (room_id, event_id, rel_type, event_type) = path.into_inner();
    relations_inner(
        &s,
        &user,
        &room_id,
        &event_id,
        Some(rel_type),
        Some(event_type),
        &q,
    )
    .await
}

#[derive(Deserialize)]
pub struct ThreadsQuery {
    include: Option<String>,
    from: Option<String>,
    limit: Option<i64>,
}

pub async fn threads(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    q: web::Query<ThreadsQuery>,
) -> Result<HttpResponse> {
    let room_id = room(&path.into_inner())?;
    let (floor, ceiling) = readable_window(&s, room_id.as_str(), user.user_id.as_str()).await?;
    let participated = match q.include.as_deref() {
        None | Some("all") => false,
        Some("participated") => true,
        Some(_) => return Err(Error::invalid_param("include must be all or participated")),
    };
    let offset = match q.from.as_deref() {
        Some(t) => usize::try_from(token(t)?)
            .map_err(|_| Error::invalid_param("invalid pagination token"))?,
        None => 0,
    };
    let limit = q.limit.unwrap_or(10).clamp(1, 100) as usize;
    let v = viewer(&user);
    let me = user.user_id.to_string();
    let r = room_id.to_string();
    let (chunk, next) = s
        .core
        .db
        .read(move |c| {
            let roots = relations::threads(c, &r)?;
            let ids: Vec<String> = roots.iter().map(|(id, _, _)| id.clone()).collect();
            let rows = events::get_events(c, &ids)?;
            let by_id: std::collections::HashMap<&str, &events::EventRow> = rows
                .iter()
                .map(|row| (row.event_id.as_str(), row))
                .collect();
            let mut list: Vec<events::EventRow> = Vec::new();
            for (id, _, senders) in &roots {
                let Some(row) = by_id.get(id.as_str()) else {
                    continue;
                };
                let visible = row.room_id == r
                    && !row.outlier
                    && row
                        .stream_ordering
                        .is_some_and(|p| p > floor && p <= ceiling);
                if !visible {
                    continue;
                }
                if participated && row.sender != me && !senders.contains(&me) {
                    continue;
                }
                list.push((*row).clone());
            }
            let total = list.len();
            let page: Vec<events::EventRow> = list.into_iter().skip(offset).take(limit).collect();
            let next = (offset + page.len() < total).then_some(offset + page.len());
            let version = Versions::default().get(c, &r)?;
            let chunk: Vec<Value> = view::client_events(c, &page, version, &v)?;
            Ok((chunk, next))
        })
        .await?;
    let mut body = json!({"chunk": chunk});
    if let Some(n) = next {
        body["next_batch"] = json!(n.to_string());
    }
    Ok(HttpResponse::Ok().json(body))
}

/// Registers the routes (full paths, not a `/_matrix/client/v1` scope, which would
/// swallow every other v1 path registered after it).
pub fn configure(cfg: &mut web::ServiceConfig) {
    use web::get;
    cfg.route(
        "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}",
        get().to(relations),
    )
    .route(
        "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}",
        get().to(relations_of_type),
    )
    .route(
        "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
        get().to(relations_of_type_and_event_type),
    )
    .route(
        "/_matrix/client/v1/rooms/{room_id}/threads",
        get().to(threads),
    );
}
