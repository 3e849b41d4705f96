//! `/room_keys`: server-side key backup handlers (the rules are in `crate::key_backup`).

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::key_backup::{self, Keys};
use crate::services::Services;

type Data = web::Data<Services>;

#[derive(Deserialize)]
pub struct VersionQuery {
    version: Option<String>,
}

impl VersionQuery {
    fn required(&self) -> Result<&str> {
        self.version
            .as_deref()
            .ok_or_else(|| Error::MissingParam("the version query parameter is required".into()))
    }
}

#[derive(Deserialize)]
pub struct NewVersion {
    algorithm: Value,
    auth_data: Value,
}

pub async fn create_version(
    s: Data,
    user: AuthedUser,
    JsonBody(body): JsonBody<NewVersion>,
) -> Result<HttpResponse> {
    let version = key_backup::create_version(
        &s.core,
        user.user_id.as_str(),
        &body.algorithm,
        &body.auth_data,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({"version": version})))
}

pub async fn current_version(s: Data, user: AuthedUser) -> Result<HttpResponse> {
    let v = key_backup::get_version(&s.core, user.user_id.as_str(), None).await?;
    Ok(HttpResponse::Ok().json(v))
}

pub async fn get_version(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let v = key_backup::get_version(&s.core, user.user_id.as_str(), Some(&path)).await?;
    Ok(HttpResponse::Ok().json(v))
}

pub async fn update_version(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    if !body.is_object() {
        return Err(Error::bad_json("expected a JSON object"));
    }
    key_backup::update_version(&s.core, user.user_id.as_str(), &path, &body).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn delete_version(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    key_backup::delete_version(&s.core, user.user_id.as_str(), &path).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
pub struct RoomsBody {
    rooms: BTreeMap<String, SessionsBody>,
}

#[derive(Deserialize)]
pub struct SessionsBody {
    sessions: BTreeMap<String, Value>,
}

pub async fn put_all(
    s: Data,
    user: AuthedUser,
    q: web::Query<VersionQuery>,
    JsonBody(body): JsonBody<RoomsBody>,
) -> Result<HttpResponse> {
    let keys: Keys = body
        .rooms
        .into_iter()
        .map(|(r, sessions)| (r, sessions.sessions))
        .collect();
    let sum = key_backup::put_keys(&s.core, user.user_id.as_str(), q.required()?, keys).await?;
    Ok(HttpResponse::Ok().json(sum.to_json()))
}

pub async fn put_room(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    q: web::Query<VersionQuery>,
    JsonBody(body): JsonBody<SessionsBody>,
) -> Result<HttpResponse> {
    let keys: Keys = BTreeMap::from([(path.into_inner(), body.sessions)]);
    let sum = key_backup::put_keys(&s.core, user.user_id.as_str(), q.required()?, keys).await?;
    Ok(HttpResponse::Ok().json(sum.to_json()))
}

pub async fn put_session(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    q: web::Query<VersionQuery>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let (room, session) = path.into_inner();
    let keys: Keys = BTreeMap::from([(room, BTreeMap::from([(session, body)]))]);
    let sum = key_backup::put_keys(&s.core, user.user_id.as_str(), q.required()?, keys).await?;
    Ok(HttpResponse::Ok().json(sum.to_json()))
}

pub async fn get_all(
    s: Data,
    user: AuthedUser,
    q: web::Query<VersionQuery>,
) -> Result<HttpResponse> {
    let keys =
        key_backup::get_keys(&s.core, user.user_id.as_str(), q.required()?, None, None).await?;
    let rooms: serde_json::Map<String, Value> = keys
        .into_iter()
        .map(|(r, sessions)| (r, json!({"sessions": sessions})))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"rooms": rooms})))
}

pub async fn get_room(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    q: web::Query<VersionQuery>,
) -> Result<HttpResponse> {
    let room = path.into_inner();
    let mut keys = key_backup::get_keys(
        &s.core,
        user.user_id.as_str(),
        q.required()?,
        Some(room.clone()),
        None,
    )
    .await?;
    let sessions = keys.remove(&room).unwrap_or_default();
    Ok(HttpResponse::Ok().json(json!({"sessions": sessions})))
}

pub async fn get_session(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    q: web::Query<VersionQuery>,
) -> Result<HttpResponse> {
    let (room, session) = path.into_inner();
    let mut keys = key_backup::get_keys(
        &s.core,
        user.user_id.as_str(),
        q.required()?,
        Some(room.clone()),
        Some(session.clone()),
    )
    .await?;
    let data = keys
        .remove(&room)
        .and_then(|mut m| m.remove(&session))
        .ok_or_else(|| Error::not_found("no key backed up for this session"))?;
    Ok(HttpResponse::Ok().json(data))
}

pub async fn delete_all(
    s: Data,
    user: AuthedUser,
    q: web::Query<VersionQuery>,
) -> Result<HttpResponse> {
    let sum =
        key_backup::delete_keys(&s.core, user.user_id.as_str(), q.required()?, None, None).await?;
    Ok(HttpResponse::Ok().json(sum.to_json()))
}

pub async fn delete_room(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    q: web::Query<VersionQuery>,
) -> Result<HttpResponse> {
    let sum = key_backup::delete_keys(
        &s.core,
        user.user_id.as_str(),
        q.required()?,
        Some(path.into_inner()),
        None,
    )
    .await?;
    Ok(HttpResponse::Ok().json(sum.to_json()))
}

pub async fn delete_session(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    q: web::Query<VersionQuery>,
) -> Result<HttpResponse> {
    let (room, session) = path.into_inner();
    let sum = key_backup::delete_keys(
        &s.core,
        user.user_id.as_str(),
        q.required()?,
        Some(room),
        Some(session),
    )
    .await?;
    Ok(HttpResponse::Ok().json(sum.to_json()))
}
