//! Queries: server version, profiles, room aliases, the public room directory.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::federation::auth::Signed;
use crate::services::Services;
use crate::storage::{rooms, users};

type Data = web::Data<Services>;

pub async fn version() -> HttpResponse {
    HttpResponse::Ok()
        .json(json!({"server": {"name": "weft", "version": env!("CARGO_PKG_VERSION")}}))
}

#[derive(Deserialize)]
pub struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

pub async fn profile(
    s: Data,
    _signed: Signed,
    q: web::Query<ProfileQuery>,
) -> Result<HttpResponse> {
    let user =
        ruma::UserId::parse(&q.user_id).map_err(|_| Error::invalid_param("invalid user ID"))?;
    if !s.core.is_local(user.server_name().as_str()) {
        return Err(Error::invalid_param("user is not on this server"));
    }
    let u = q.user_id.clone();
    let row = s.core.db.read(move |c| users::get_user(c, &u)).await?;
    let row = row.ok_or_else(|| Error::not_found("unknown user"))?;
    let mut body = json!({});
    if q.field.as_deref().is_none_or(|f| f == "displayname")
        && let Some(n) = row.displayname
    {
        body["displayname"] = json!(n);
    }
    if q.field.as_deref().is_none_or(|f| f == "avatar_url")
        && let Some(a) = row.avatar_url
    {
        body["avatar_url"] = json!(a);
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize)]
pub struct DirectoryQuery {
    room_alias: String,
}

pub async fn directory(
    s: Data,
    _signed: Signed,
    q: web::Query<DirectoryQuery>,
) -> Result<HttpResponse> {
    let alias = ruma::RoomAliasId::parse(&q.room_alias)
        .map_err(|_| Error::invalid_param("invalid room alias"))?;
    if !s.core.is_local(alias.server_name().as_str()) {
        return Err(Error::not_found("alias is not on this server"));
    }
    let a = alias.to_string();
    let (room_id, servers) = s
        .core
        .db
        .read(move |c| {
            let Some((room_id, _)) = rooms::get_alias(c, &a)? else {
                return Ok((None, Vec::new()));
            };
            let mut servers: Vec<String> = rooms::members_with(c, &room_id, "join")?
                .iter()
                .filter_map(|u| u.split_once(':').map(|(_, s)| s.to_owned()))
                .collect();
            servers.sort();
            servers.dedup();
            Ok((Some(room_id), servers))
        })
        .await?;
    let room_id = room_id.ok_or_else(|| Error::not_found("room alias not found"))?;
    let mut servers = servers;
    if let Some(pos) = servers.iter().position(|x| s.core.is_local(x)) {
        let ours = servers.remove(pos);
        servers.insert(0, ours);
    } else {
        servers.insert(0, s.server_name().to_owned());
    }
    Ok(HttpResponse::Ok().json(json!({"room_id": room_id, "servers": servers})))
}

#[derive(Deserialize)]
pub struct PublicRoomsQuery {
    limit: Option<usize>,
    since: Option<String>,
}

pub async fn public_rooms(
    s: Data,
    _signed: Signed,
    q: web::Query<PublicRoomsQuery>,
) -> Result<HttpResponse> {
    let list =
        crate::rooms::directory::public_rooms_list(&s.core, q.limit, q.since.as_deref()).await?;
    Ok(HttpResponse::Ok().json(list))
}

pub async fn public_rooms_post(s: Data, signed: Signed) -> Result<HttpResponse> {
    let body: Value = signed.json()?;
    let limit = body
        .get("limit")
        .and_then(|l| l.as_u64())
        .map(|l| l as usize);
    let since = body
        .get("since")
        .and_then(|s| s.as_str())
        .map(str::to_owned);
    let list = crate::rooms::directory::public_rooms_list(&s.core, limit, since.as_deref()).await?;
    Ok(HttpResponse::Ok().json(list))
}
