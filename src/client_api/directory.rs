//! Room aliases and the public room directory.

use actix_web::{HttpResponse, web};
use ruma::OwnedRoomId;
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

/// Resolves `!room:server` or `#alias:server` to a room ID and the servers to join it
/// through: local aliases from the directory, remote ones asked of the alias's server
/// (through [`crate::services::Remote`]).
pub async fn resolve(s: &Services, id_or_alias: &str) -> Result<(OwnedRoomId, Vec<String>)> {
    if id_or_alias.starts_with('!') {
        let id = OwnedRoomId::try_from(id_or_alias)
            .map_err(|_| Error::invalid_param("invalid room ID"))?;
        return Ok((id, Vec::new()));
    }
    if !id_or_alias.starts_with('#') {
        return Err(Error::invalid_param("expected a room ID or alias"));
    }
    let alias = ruma::RoomAliasId::parse(id_or_alias)
        .map_err(|_| Error::invalid_param("invalid room alias"))?;
    if !s.core.is_local(alias.server_name().as_str()) {
        return s.remote()?.query_alias(s, &alias).await;
    }
    let a = alias.to_string();
    let found = s.core.db.read(move |c| rooms::get_alias(c, &a)).await?;
    match found {
        Some((room_id, _)) => Ok((
            OwnedRoomId::try_from(room_id).map_err(|e| Error::internal(e.to_string()))?,
            vec![s.server_name().to_owned()],
        )),
        None => Err(Error::not_found("room alias not found")),
    }
}

pub async fn get_alias(s: Data, path: web::Path<String>) -> Result<HttpResponse> {
    let (room_id, servers) = resolve(&s, &path.into_inner()).await?;
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
    access::require_joined(&s.core, room_id.as_str(), user.user_id.as_str()).await?;
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
    let (room_id, creator) = found.ok_or_else(|| Error::not_found("room alias not found"))?;
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
    drop_from_canonical_alias(&s, &user, &room_id, &alias).await;
    Ok(HttpResponse::Ok().json(json!({})))
}

/// The `m.room.canonical_alias` content without `alias`, or `None` when it does not name it.
fn without_alias(content: &Value, alias: &str) -> Option<Value> {
    let names_it = content.get("alias").and_then(|a| a.as_str()) == Some(alias);
    let alt: Vec<Value> = content
        .get("alt_aliases")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    let in_alt = alt.iter().any(|a| a.as_str() == Some(alias));
    if !names_it && !in_alt {
        return None;
    }
    let mut out = content.as_object().cloned().unwrap_or_default();
    if names_it {
        out.remove("alias");
    }
    if in_alt {
        let kept: Vec<Value> = alt
            .into_iter()
            .filter(|a| a.as_str() != Some(alias))
            .collect();
        out.insert("alt_aliases".into(), Value::Array(kept));
    }
    Some(Value::Object(out))
}

/// A deleted alias leaves the room's canonical alias event (as Synapse does: sent by the
/// deleting user; when they lack the power, the event stays and this is logged).
async fn drop_from_canonical_alias(s: &Services, user: &AuthedUser, room_id: &str, alias: &str) {
    let Ok(room) = ruma::OwnedRoomId::try_from(room_id) else {
        return;
    };
    let r = room_id.to_owned();
    let content = s
        .core
        .db
        .read(move |c| {
            let Some(id) = state::current_state_entry(c, &r, "m.room.canonical_alias", "")? else {
                return Ok(None);
            };
            Ok(events::get_event(c, &id)?
                .and_then(|row| serde_json::from_str::<Value>(&row.json).ok())
                .and_then(|v| v.get("content").cloned()))
        })
        .await;
    let Ok(Some(content)) = content else {
        return;
    };
    let Some(new_content) = without_alias(&content, alias) else {
        return;
    };
    let draft = weft_protocol::builder::EventDraft::state(
        "m.room.canonical_alias",
        "",
        user.user_id.clone(),
        new_content,
    );
    let sent = s
        .rooms
        .send(&room, crate::rooms::messages::SendEvent::draft(draft))
        .await;
    if let Err(e) | Ok(Err(e)) = sent.map(|r| r.map(|_| ())) {
        tracing::info!(room = %room_id, alias, error = %e, "deleted alias stays in the canonical alias event");
    }
}

pub async fn room_aliases(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let room_id = path.into_inner();
    access::require_joined(&s.core, &room_id, user.user_id.as_str()).await?;
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
    let parsed = ruma::OwnedRoomId::try_from(room_id.as_str())
        .map_err(|_| Error::invalid_param("invalid room ID"))?;
    access::require_joined(&s.core, &room_id, user.user_id.as_str()).await?;
    // Publishing speaks for the room: it takes the power to name the room's canonical
    // alias (Synapse's rule), unless the caller is a server admin.
    if !user.is_admin {
        let snapshot = s
            .rooms
            .send(&parsed, crate::rooms::messages::GetSnapshot)
            .await??;
        let pl = snapshot.state.power_levels(snapshot.version);
        if pl.user_level(user.user_id.as_str()) < pl.event_level("m.room.canonical_alias", true) {
            return Err(Error::forbidden(
                "changing the room's directory visibility needs the power to set its canonical alias",
            ));
        }
    }
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

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (MSC3266, and its unstable
/// `im.nheko.summary` paths): a room's preview for someone deciding whether to join. Shown
/// when the room is world-readable, publicly joinable or knockable, or the caller has a
/// membership in it; otherwise (or when this server does not hold the room) 404, so the
/// answer says nothing about private rooms. Authentication is optional.
pub async fn summary(
    s: Data,
    user: Option<AuthedUser>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let (room_id, _) = resolve(&s, &path.into_inner()).await?;
    let r = room_id.to_string();
    let viewer = user.as_ref().map(|u| u.user_id.to_string());
    let found = s
        .core
        .db
        .read(move |c| {
            let Some(room) = rooms::get_room(c, &r)? else {
                return Ok(None);
            };
            let mut entry = crate::rooms::directory::room_summary(c, &r)?;
            let ids = state::current_state(c, &r)?;
            let content = |c: &mut crate::storage::AnyConnection,
                           t: &str|
             -> crate::storage::StorageResult<Option<Value>> {
                match ids.get(&(t.to_owned(), String::new())) {
                    Some(id) => Ok(events::get_event(c, id)?
                        .and_then(|row| serde_json::from_str::<Value>(&row.json).ok())
                        .and_then(|v| v.get("content").cloned())),
                    None => Ok(None),
                }
            };
            let membership = match &viewer {
                Some(u) => rooms::get_membership(c, &r, u)?
                    .filter(|m| !m.forgotten)
                    .map(|m| m.membership),
                None => None,
            };
            let join_rules = content(c, "m.room.join_rules")?.unwrap_or(json!({}));
            let join_rule = join_rules
                .get("join_rule")
                .and_then(|j| j.as_str())
                .unwrap_or("invite")
                .to_owned();
            let allowed: Vec<String> = join_rules
                .get("allow")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.get("room_id").and_then(|r| r.as_str()))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let in_allowed_room = match &viewer {
                Some(u) if join_rule.contains("restricted") => {
                    let mut any = false;
                    for room in &allowed {
                        if rooms::get_membership(c, room, u)?
                            .is_some_and(|m| m.membership == "join")
                        {
                            any = true;
                            break;
                        }
                    }
                    any
                }
                _ => false,
            };
            let world_readable = entry["world_readable"] == json!(true);
            let visible = world_readable
                || matches!(join_rule.as_str(), "public" | "knock" | "knock_restricted")
                || in_allowed_room
                || membership
                    .as_deref()
                    .is_some_and(|m| matches!(m, "join" | "invite" | "knock" | "leave"));
            if !visible {
                return Ok(None);
            }
            if let Some(t) = content(c, "m.room.create")?
                .and_then(|v| v.get("type").cloned())
                .filter(|t| t.is_string())
            {
                entry["room_type"] = t;
            }
            if let Some(alg) =
                content(c, "m.room.encryption")?.and_then(|v| v.get("algorithm").cloned())
            {
                entry["encryption"] = alg.clone();
                entry["im.nheko.summary.encryption"] = alg;
            }
            entry["room_version"] = json!(room.room_version);
            entry["im.nheko.summary.room_version"] = json!(room.room_version);
            if join_rule.contains("restricted") {
                entry["allowed_room_ids"] = json!(allowed);
            }
            if let Some(m) = membership {
                entry["membership"] = json!(m);
            }
            Ok(Some(entry))
        })
        .await?;
    let entry = found.ok_or_else(|| Error::not_found("room not found or not visible to you"))?;
    Ok(HttpResponse::Ok().json(entry))
}

pub async fn public_rooms(s: Data, q: web::Query<PublicRoomsQuery>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(
        crate::rooms::directory::public_rooms_list(&s.core, q.limit, q.since.as_deref()).await?,
    ))
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
    let mut list =
        crate::rooms::directory::public_rooms_list(&s.core, limit, since.as_deref()).await?;
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

#[cfg(test)]
mod tests {
    use super::without_alias;
    use serde_json::json;

    #[test]
    fn removing_an_alias_from_the_canonical_alias() {
        let cases = [
            (json!({"alias": "#a:x"}), "#a:x", Some(json!({}))),
            (
                json!({"alias": "#a:x", "alt_aliases": ["#b:x"]}),
                "#b:x",
                Some(json!({"alias": "#a:x", "alt_aliases": []})),
            ),
            (
                json!({"alias": "#a:x", "alt_aliases": ["#a:x", "#c:x"]}),
                "#a:x",
                Some(json!({"alt_aliases": ["#c:x"]})),
            ),
            (json!({"alias": "#a:x"}), "#z:x", None),
            (json!({}), "#a:x", None),
        ];
        for (content, alias, want) in cases {
            assert_eq!(without_alias(&content, alias), want, "{content} {alias}");
        }
    }
}
