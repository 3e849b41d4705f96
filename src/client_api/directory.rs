//! Room aliases and the public room directory.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::rooms::access;
use crate::services::Services;
use crate::storage::{events, rooms, state};

type Data = web::Data<Services>;

fn local_alias(s: &Services, alias: &str) -> Result<String> {
    let a =
        ruma::RoomAliasId::parse(alias).map_err(|_| Error::invalid_param("invalid room alias"))?;
    if !s.core.is_local(a.server_name().as_str()) {
        return Err(Error::invalid_param("alias is not on this server"));
    }
    Ok(a.to_string())
}

pub async fn get_alias(s: Data, path: web::Path<String>) -> Result<HttpResponse> {
    let (room_id, servers) = access::resolve(&s, &path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(json!({"room_id": room_id, "servers": servers})))
}

#[derive(Deserialize)]
pub struct AliasBody {
    room_id: String,
}

pub async fn put_alias(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<AliasBody>,
) -> Result<HttpResponse> {
    let alias = local_alias(&s, &path.into_inner())?;
    let room_id = ruma::OwnedRoomId::try_from(body.room_id.as_str())
        .map_err(|_| Error::invalid_param("invalid room ID"))?;
    access::require_joined(&s, room_id.as_str(), user.user_id.as_str()).await?;
    let (a, r, u) = (alias.clone(), room_id.to_string(), user.user_id.to_string());
    let created = s
        .core
        .db
        .write(&alias, move |c| rooms::create_alias(c, &a, &r, &u))
        .await?;
    if !created {
        return Err(Error::Conflict("room alias already exists".into()));
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn delete_alias(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let alias = local_alias(&s, &path.into_inner())?;
    let a = alias.clone();
    let found = s.core.db.read(move |c| rooms::get_alias(c, &a)).await?;
    let (_, creator) = found.ok_or_else(|| Error::not_found("room alias not found"))?;
    if creator != user.user_id.as_str() && !user.is_admin {
        return Err(Error::forbidden(
            "only the alias's creator or an admin may delete it",
        ));
    }
    let a = alias.clone();
    s.core
        .db
        .write(&alias, move |c| rooms::delete_alias(c, &a))
        .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn room_aliases(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let room_id = path.into_inner();
    access::require_joined(&s, &room_id, user.user_id.as_str()).await?;
    let list = s
        .core
        .db
        .read(move |c| rooms::aliases_for_room(c, &room_id))
        .await?;
    Ok(HttpResponse::Ok().json(json!({"aliases": list})))
}

pub async fn get_visibility(s: Data, path: web::Path<String>) -> Result<HttpResponse> {
    let r = path.into_inner();
    let room = s.core.db.read(move |c| rooms::get_room(c, &r)).await?;
    let room = room.ok_or_else(|| Error::not_found("unknown room"))?;
    Ok(HttpResponse::Ok()
        .json(json!({"visibility": if room.is_public { "public" } else { "private" }})))
}

#[derive(Deserialize)]
pub struct VisibilityBody {
    visibility: String,
}

pub async fn set_visibility(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<VisibilityBody>,
) -> Result<HttpResponse> {
    let room_id = path.into_inner();
    let public = match body.visibility.as_str() {
        "public" => true,
        "private" => false,
        _ => return Err(Error::invalid_param("visibility must be public or private")),
    };
    access::require_joined(&s, &room_id, user.user_id.as_str()).await?;
    let r = room_id.clone();
    s.core
        .db
        .write(&room_id, move |c| rooms::set_public(c, &r, public))
        .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize, Default)]
pub struct PublicRoomsQuery {
    limit: Option<usize>,
    since: Option<String>,
}

/// One directory entry built from a room's current state.
pub fn room_summary(
    c: &mut crate::storage::AnyConnection,
    room_id: &str,
) -> crate::storage::StorageResult<Value> {
    let ids = state::current_state(c, room_id)?;
    let get = |c: &mut crate::storage::AnyConnection,
               t: &str|
     -> crate::storage::StorageResult<Option<Value>> {
        match ids.get(&(t.to_owned(), String::new())) {
            Some(id) => Ok(events::get_event(c, id)?
                .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
                .and_then(|v| v.get("content").cloned())),
            None => Ok(None),
        }
    };
    let name = get(c, "m.room.name")?.and_then(|v| v.get("name").cloned());
    let topic = get(c, "m.room.topic")?.and_then(|v| v.get("topic").cloned());
    let alias = get(c, "m.room.canonical_alias")?.and_then(|v| v.get("alias").cloned());
    let avatar = get(c, "m.room.avatar")?.and_then(|v| v.get("url").cloned());
    let join_rule = get(c, "m.room.join_rules")?
        .and_then(|v| v.get("join_rule").cloned())
        .unwrap_or(json!("invite"));
    let hv =
        get(c, "m.room.history_visibility")?.and_then(|v| v.get("history_visibility").cloned());
    let guest = get(c, "m.room.guest_access")?.and_then(|v| v.get("guest_access").cloned());
    let joined = rooms::members_with(c, room_id, "join")?.len();
    let mut entry = json!({
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": hv == Some(json!("world_readable")),
        "guest_can_join": guest == Some(json!("can_join")),
        "join_rule": join_rule,
    });
    for (k, v) in [
        ("name", name),
        ("topic", topic),
        ("canonical_alias", alias),
        ("avatar_url", avatar),
    ] {
        if let Some(v) = v {
            entry[k] = v;
        }
    }
    Ok(entry)
}

/// The public room list, paginated by offset tokens.
pub async fn public_rooms_list(
    s: &Services,
    limit: Option<usize>,
    since: Option<&str>,
) -> Result<Value> {
    let offset: usize = since
        .and_then(|t| t.strip_prefix('o'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let limit = limit.unwrap_or(100).clamp(1, 500);
    let (chunk, total) = s
        .core
        .db
        .read(move |c| {
            let all = rooms::public_rooms(c)?;
            let total = all.len();
            let mut chunk = Vec::new();
            for r in all.iter().skip(offset).take(limit) {
                chunk.push(room_summary(c, r)?);
            }
            Ok((chunk, total))
        })
        .await?;
    let mut body = json!({"chunk": chunk, "total_room_count_estimate": total});
    if offset + limit < total {
        body["next_batch"] = json!(format!("o{}", offset + limit));
    }
    if offset > 0 {
        body["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
    }
    Ok(body)
}

pub async fn public_rooms(s: Data, q: web::Query<PublicRoomsQuery>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(public_rooms_list(&s, q.limit, q.since.as_deref()).await?))
}

pub async fn public_rooms_post(
    s: Data,
    _user: AuthedUser,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let limit = body
        .get("limit")
        .and_then(|l| l.as_u64())
        .map(|l| l as usize);
    let since = body
        .get("since")
        .and_then(|s| s.as_str())
        .map(str::to_owned);
    let mut list = public_rooms_list(&s, limit, since.as_deref()).await?;
    if let Some(term) = body
        .get("filter")
        .and_then(|f| f.get("generic_search_term"))
        .and_then(|t| t.as_str())
        .map(str::to_lowercase)
        .filter(|t| !t.is_empty())
        && let Some(chunk) = list.get_mut("chunk").and_then(|c| c.as_array_mut())
    {
        chunk.retain(|r| {
            ["name", "topic", "canonical_alias"].iter().any(|k| {
                r.get(*k)
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| v.to_lowercase().contains(&term))
            })
        });
    }
    Ok(HttpResponse::Ok().json(list))
}
