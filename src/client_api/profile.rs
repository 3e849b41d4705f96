//! Profiles: display name and avatar, mirrored into the user's member events.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;
use weft_protocol::builder::EventDraft;

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::rooms::messages::SendEvent;
use crate::services::Services;
use crate::storage::{rooms, state, users};

type Data = web::Data<Services>;

async fn local_profile(s: &Services, user_id: &str) -> Result<(Option<String>, Option<String>)> {
    let id = ruma::UserId::parse(user_id).map_err(|_| Error::invalid_param("invalid user ID"))?;
    if !s.core.is_local(id.server_name().as_str()) {
        return Err(Error::not_found("profile not found"));
    }
    let u = user_id.to_owned();
    let row = s.core.db.read(move |c| users::get_user(c, &u)).await?;
    let row = row.ok_or_else(|| Error::not_found("profile not found"))?;
    Ok((row.displayname, row.avatar_url))
}

pub async fn get_profile(s: Data, path: web::Path<String>) -> Result<HttpResponse> {
    let (name, avatar) = local_profile(&s, &path).await?;
    let mut body = json!({});
    if let Some(n) = name {
        body["displayname"] = json!(n);
    }
    if let Some(a) = avatar {
        body["avatar_url"] = json!(a);
    }
    Ok(HttpResponse::Ok().json(body))
}

pub async fn get_displayname(s: Data, path: web::Path<String>) -> Result<HttpResponse> {
    let (name, _) = local_profile(&s, &path).await?;
    Ok(HttpResponse::Ok().json(match name {
        Some(n) => json!({"displayname": n}),
        None => json!({}),
    }))
}

pub async fn get_avatar_url(s: Data, path: web::Path<String>) -> Result<HttpResponse> {
    let (_, avatar) = local_profile(&s, &path).await?;
    Ok(HttpResponse::Ok().json(match avatar {
        Some(a) => json!({"avatar_url": a}),
        None => json!({}),
    }))
}

#[derive(Deserialize)]
pub struct DisplayName {
    displayname: Option<String>,
}

#[derive(Deserialize)]
pub struct AvatarUrl {
    avatar_url: Option<String>,
}

/// Re-sends the user's member event in every joined room with the new profile.
async fn update_member_events(
    s: &Services,
    user: &AuthedUser,
    field: &'static str,
    value: Option<String>,
) -> Result<()> {
    let u = user.user_id.to_string();
    let joined = s
        .core
        .db
        .read(move |c| {
            let mut out = Vec::new();
            for m in rooms::rooms_for_user(c, &u)? {
                if m.membership != "join" {
                    continue;
                }
                if let Some(id) = state::current_state_entry(c, &m.room_id, "m.room.member", &u)?
                    && let Some(row) = crate::storage::events::get_event(c, &id)?
                {
                    out.push((m.room_id, row.json));
                }
            }
            Ok(out)
        })
        .await?;
    for (room_id, json) in joined {
        let mut content = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v.get("content").cloned())
            .unwrap_or_else(|| json!({"membership": "join"}));
        match &value {
            Some(v) => content[field] = json!(v),
            None => {
                if let Some(o) = content.as_object_mut() {
                    o.remove(field);
                }
            }
        }
        let Ok(room_id) = ruma::OwnedRoomId::try_from(room_id) else {
            continue;
        };
        let draft = EventDraft::state(
            "m.room.member",
            user.user_id.as_str(),
            user.user_id.clone(),
            content,
        );
        if let Err(e) = s.rooms.send(&room_id, SendEvent::draft(draft)).await? {
            tracing::warn!(room = %room_id, error = %e, "could not update member event with new profile");
        }
    }
    Ok(())
}

pub async fn set_displayname(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<DisplayName>,
) -> Result<HttpResponse> {
    if path.as_str() != user.user_id.as_str() {
        return Err(Error::forbidden("cannot set another user's profile"));
    }
    let (u, n) = (user.user_id.to_string(), body.displayname.clone());
    s.core
        .db
        .write(user.user_id.as_str(), move |c| {
            users::set_displayname(c, &u, n.as_deref())
        })
        .await?;
    update_member_events(&s, &user, "displayname", body.displayname).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn set_avatar_url(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<AvatarUrl>,
) -> Result<HttpResponse> {
    if path.as_str() != user.user_id.as_str() {
        return Err(Error::forbidden("cannot set another user's profile"));
    }
    let (u, a) = (user.user_id.to_string(), body.avatar_url.clone());
    s.core
        .db
        .write(user.user_id.as_str(), move |c| {
            users::set_avatar_url(c, &u, a.as_deref())
        })
        .await?;
    update_member_events(&s, &user, "avatar_url", body.avatar_url).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}
