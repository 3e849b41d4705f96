//! Small endpoints: versions, capabilities, account data, tags, typing, receipts,
//! read markers, presence.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};
use weft_protocol::RoomVersion;

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::rooms::access;
use crate::services::Services;
use crate::storage::{account, rooms};

type Data = web::Data<Services>;

/// Every Client-Server spec version served, listed one by one (Hydrogen looks for the exact
/// string "v1.11"; matrix-js-sdk needs one of v1.1–v1.13).
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2",
    "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
];

/// Unstable features served (each named by its MSC): MSC3391, deleting account data.
pub const UNSTABLE_FEATURES: &[&str] = &["org.matrix.msc3391", "org.matrix.simplified_msc3575"];

pub async fn versions() -> HttpResponse {
    let unstable: serde_json::Map<String, Value> = UNSTABLE_FEATURES
        .iter()
        .map(|f| ((*f).to_owned(), json!(true)))
        .collect();
    HttpResponse::Ok().json(json!({"versions": SPEC_VERSIONS, "unstable_features": unstable}))
}

pub async fn capabilities(s: Data, _user: AuthedUser) -> HttpResponse {
    let available: serde_json::Map<String, Value> = RoomVersion::ALL
        .iter()
        .map(|v| {
            (
                v.as_str().to_owned(),
                json!(if v.is_stable() { "stable" } else { "unstable" }),
            )
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "capabilities": {
            "m.change_password": {"enabled": true},
            "m.room_versions": {"default": s.core.config.rooms.default_version, "available": available},
            "m.set_displayname": {"enabled": true},
            "m.set_avatar_url": {"enabled": true},
            "m.3pid_changes": {"enabled": false},
        }
    }))
}

fn own(user: &AuthedUser, path_user: &str) -> Result<()> {
    if path_user != user.user_id.as_str() {
        return Err(Error::forbidden(
            "cannot access another user's account data",
        ));
    }
    Ok(())
}

pub use crate::account_data::{modify_account_data, set_account_data};

/// Deleted account data is stored as `{}` (what `/sync` shows for it, as MSC3391 says);
/// reading it answers 404 like data never set.
fn is_deleted(content: &str) -> bool {
    content.trim() == "{}"
}

async fn get_account_data_inner(
    s: &Services,
    user_id: &str,
    room_id: &str,
    kind: &str,
) -> Result<HttpResponse> {
    let (u, r, t) = (user_id.to_owned(), room_id.to_owned(), kind.to_owned());
    let found = s
        .core
        .db
        .read(move |c| account::get_account_data(c, &u, &r, &t))
        .await?;
    let content = found
        .filter(|c| !is_deleted(c))
        .ok_or_else(|| Error::not_found("account data not found"))?;
    let v: Value = serde_json::from_str(&content).map_err(|e| Error::internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(v))
}

pub async fn get_account_data(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (u, kind) = path.into_inner();
    own(&user, &u)?;
    get_account_data_inner(&s, &u, "", &kind).await
}

pub async fn put_account_data(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let (u, kind) = path.into_inner();
    own(&user, &u)?;
    if !body.is_object() {
        return Err(Error::bad_json("account data must be a JSON object"));
    }
    if kind == "m.fully_read" || kind == "m.push_rules" {
        return Err(Error::bad_json(format!("{kind} cannot be set here")));
    }
    set_account_data(&s, &u, "", &kind, &body).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn get_room_account_data(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (u, room, kind) = path.into_inner();
    own(&user, &u)?;
    get_account_data_inner(&s, &u, &room, &kind).await
}

pub async fn put_room_account_data(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let (u, room, kind) = path.into_inner();
    own(&user, &u)?;
    if !body.is_object() {
        return Err(Error::bad_json("account data must be a JSON object"));
    }
    ruma::RoomId::parse(&room).map_err(|_| Error::invalid_param("invalid room ID"))?;
    set_account_data(&s, &u, &room, &kind, &body).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
pub struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

pub async fn typing(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<TypingBody>,
) -> Result<HttpResponse> {
    let (room_id, path_user) = path.into_inner();
    if path_user != user.user_id.as_str() {
        return Err(Error::forbidden("cannot set another user's typing state"));
    }
    access::require_joined(&s.core, &room_id, user.user_id.as_str()).await?;
    let r = room_id.clone();
    let members = s
        .core
        .db
        .read(move |c| rooms::members_with(c, &r, "join"))
        .await?;
    let suffix = format!(":{}", s.server_name());
    let audience: Vec<String> = members
        .iter()
        .filter(|m| m.ends_with(&suffix))
        .cloned()
        .collect();
    let timeout = Duration::from_millis(body.timeout.unwrap_or(30_000).min(120_000));
    if s.typing.set(
        &room_id,
        user.user_id.as_str(),
        body.typing,
        timeout,
        audience.clone(),
    ) {
        s.core.notifier.wake(audience);
        let edu = json!({"edu_type": "m.typing", "content": {
            "room_id": room_id, "user_id": user.user_id, "typing": body.typing,
        }});
        edu_to_room_servers(&s, &members, edu).await;
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// Sends an EDU to every other server with members joined to a room.
pub async fn edu_to_room_servers(s: &Services, members: &[String], edu: Value) {
    let Ok(remote) = s.remote() else { return };
    let mut servers: Vec<&str> = members
        .iter()
        .filter_map(|m| m.split_once(':').map(|(_, s)| s))
        .collect();
    servers.sort_unstable();
    servers.dedup();
    for server in servers {
        if !s.core.is_local(server)
            && let Err(e) = remote.send_edu(server, edu.clone()).await
        {
            tracing::warn!(destination = server, error = %e, "could not queue an EDU");
        }
    }
}

#[derive(Deserialize, Default)]
pub struct ReceiptBody {
    thread_id: Option<String>,
}

pub async fn receipt(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<ReceiptBody>,
) -> Result<HttpResponse> {
    let (room_id, kind, event_id) = path.into_inner();
    access::require_joined(&s.core, &room_id, user.user_id.as_str()).await?;
    match kind.as_str() {
        "m.read" | "m.read.private" => {
            crate::rooms::receipts::store(
                &s.core,
                &room_id,
                user.user_id.as_str(),
                &kind,
                &event_id,
                body.thread_id.as_deref(),
                true,
            )
            .await?
        }
        "m.fully_read" => {
            set_account_data(
                &s,
                user.user_id.as_str(),
                &room_id,
                "m.fully_read",
                &json!({"event_id": event_id}),
            )
            .await?
        }
        _ => return Err(Error::invalid_param(format!("unknown receipt type {kind}"))),
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn read_markers(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let room_id = path.into_inner();
    access::require_joined(&s.core, &room_id, user.user_id.as_str()).await?;
    if let Some(e) = body.get("m.fully_read").and_then(|v| v.as_str()) {
        set_account_data(
            &s,
            user.user_id.as_str(),
            &room_id,
            "m.fully_read",
            &json!({"event_id": e}),
        )
        .await?;
    }
    for kind in ["m.read", "m.read.private"] {
        if let Some(e) = body.get(kind).and_then(|v| v.as_str()) {
            crate::rooms::receipts::store(
                &s.core,
                &room_id,
                user.user_id.as_str(),
                kind,
                e,
                None,
                true,
            )
            .await?;
        }
    }
    Ok(HttpResponse::Ok().json(json!({})))
}

/// A user's presence: state, status message, when set.
type PresenceEntry = (String, Option<String>, i64);

/// Presence as set by the user (in memory; not federated).
#[derive(Default)]
pub struct Presence(Mutex<HashMap<String, PresenceEntry>>);

#[derive(Deserialize)]
pub struct PresenceBody {
    presence: String,
    status_msg: Option<String>,
}

pub async fn set_presence(
    presence: web::Data<Presence>,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<PresenceBody>,
) -> Result<HttpResponse> {
    if path.as_str() != user.user_id.as_str() {
        return Err(Error::forbidden("cannot set another user's presence"));
    }
    if !matches!(body.presence.as_str(), "online" | "offline" | "unavailable") {
        return Err(Error::invalid_param(
            "presence must be online, offline or unavailable",
        ));
    }
    presence.0.lock().insert(
        user.user_id.to_string(),
        (body.presence, body.status_msg, crate::storage::now_ms()),
    );
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn get_presence(
    presence: web::Data<Presence>,
    _user: AuthedUser,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let entry = presence.0.lock().get(path.as_str()).cloned();
    Ok(HttpResponse::Ok().json(match entry {
        Some((p, msg, ts)) => json!({
            "presence": p,
            "status_msg": msg,
            "last_active_ago": (crate::storage::now_ms() - ts).max(0),
        }),
        None => json!({"presence": "offline"}),
    }))
}

/// `DELETE /user/{userId}/account_data/{type}` (MSC3391, also under its unstable prefix).
pub async fn delete_account_data(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (u, kind) = path.into_inner();
    own(&user, &u)?;
    set_account_data(&s, &u, "", &kind, &json!({})).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn delete_room_account_data(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (u, room, kind) = path.into_inner();
    own(&user, &u)?;
    ruma::RoomId::parse(&room).map_err(|_| Error::invalid_param("invalid room ID"))?;
    set_account_data(&s, &u, &room, &kind, &json!({})).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

// ---------------------------------------------------------------- room tags

/// The longest tag name accepted, in bytes.
const MAX_TAG_BYTES: usize = 255;

/// The tags of a room, from its `m.tag` room account data.
fn tags_of(content: Option<Value>) -> serde_json::Map<String, Value> {
    content
        .and_then(|c| c.get("tags").and_then(Value::as_object).cloned())
        .unwrap_or_default()
}

pub async fn get_tags(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (u, room) = path.into_inner();
    own(&user, &u)?;
    let (uu, r) = (u.clone(), room.clone());
    let found = s
        .core
        .db
        .read(move |c| account::get_account_data(c, &uu, &r, "m.tag"))
        .await?
        .and_then(|c| serde_json::from_str::<Value>(&c).ok());
    Ok(HttpResponse::Ok().json(json!({"tags": tags_of(found)})))
}

pub async fn put_tag(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let (u, room, tag) = path.into_inner();
    own(&user, &u)?;
    ruma::RoomId::parse(&room).map_err(|_| Error::invalid_param("invalid room ID"))?;
    if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
        return Err(Error::invalid_param(format!(
            "a tag must be 1 to {MAX_TAG_BYTES} bytes"
        )));
    }
    if !body.is_object() {
        return Err(Error::bad_json("a tag's content must be an object"));
    }
    if body.get("order").is_some_and(|o| !o.is_number()) {
        return Err(Error::bad_json("order must be a number"));
    }
    modify_account_data(&s, &u, &room, "m.tag", move |current| {
        let mut tags = tags_of(current);
        tags.insert(tag, body);
        Ok(json!({"tags": tags}))
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn delete_tag(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (u, room, tag) = path.into_inner();
    own(&user, &u)?;
    ruma::RoomId::parse(&room).map_err(|_| Error::invalid_param("invalid room ID"))?;
    modify_account_data(&s, &u, &room, "m.tag", move |current| {
        let mut tags = tags_of(current);
        tags.remove(&tag);
        Ok(json!({"tags": tags}))
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}
