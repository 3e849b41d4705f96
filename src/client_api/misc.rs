//! Small endpoints: versions, capabilities, push rules, account data, typing, receipts,
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

pub async fn versions() -> HttpResponse {
    HttpResponse::Ok().json(json!({"versions": SPEC_VERSIONS, "unstable_features": {"org.matrix.simplified_msc3575": true}}))
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

pub async fn push_rules(user: AuthedUser) -> Result<HttpResponse> {
    let text = include_str!("default_push_rules.json").replace("@USER_ID@", user.user_id.as_str());
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(v))
}

pub async fn push_rules_global(user: AuthedUser) -> Result<HttpResponse> {
    let text = include_str!("default_push_rules.json").replace("@USER_ID@", user.user_id.as_str());
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(v["global"].clone()))
}

fn own(user: &AuthedUser, path_user: &str) -> Result<()> {
    if path_user != user.user_id.as_str() {
        return Err(Error::forbidden(
            "cannot access another user's account data",
        ));
    }
    Ok(())
}

/// Writes account data and wakes the user's syncs.
pub async fn set_account_data(
    s: &Services,
    user_id: &str,
    room_id: &str,
    kind: &str,
    content: &Value,
) -> Result<()> {
    let pos = s.core.notifier.allocate();
    let (u, r, t, c) = (
        user_id.to_owned(),
        room_id.to_owned(),
        kind.to_owned(),
        content.to_string(),
    );
    let res = s
        .core
        .db
        .write(user_id, move |conn| {
            account::set_account_data(conn, &u, &r, &t, &c, pos)
        })
        .await;
    match res {
        Ok(()) => {
            s.core.notifier.complete(&[pos], [user_id.to_owned()]);
            Ok(())
        }
        Err(e) => {
            s.core.notifier.complete(&[pos], []);
            Err(e.into())
        }
    }
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
    let content = found.ok_or_else(|| Error::not_found("account data not found"))?;
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
    access::require_joined(&s, &room_id, user.user_id.as_str()).await?;
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
    let Some(fed) = s.federation() else { return };
    let mut servers: Vec<&str> = members
        .iter()
        .filter_map(|m| m.split_once(':').map(|(_, s)| s))
        .collect();
    servers.sort_unstable();
    servers.dedup();
    for server in servers {
        if !s.core.is_local(server)
            && let Err(e) = fed.sender.send_edu(server, edu.clone()).await
        {
            tracing::warn!(destination = server, error = %e, "could not queue an EDU");
        }
    }
}

/// Stores a receipt and wakes the room's local members; receipts of local users also go to
/// the room's other servers (`federate`).
pub async fn store_receipt(
    s: &Services,
    room_id: &str,
    user_id: &str,
    kind: &str,
    event_id: &str,
    thread_id: Option<&str>,
    federate: bool,
) -> Result<()> {
    let r = room_id.to_owned();
    let members = s
        .core
        .db
        .read(move |c| rooms::members_with(c, &r, "join"))
        .await?;
    if federate && kind == "m.read" {
        let mut data = json!({"ts": crate::storage::now_ms()});
        if let Some(t) = thread_id {
            data["thread_id"] = json!(t);
        }
        let edu = json!({"edu_type": "m.receipt", "content": {room_id: {"m.read": {user_id: {"event_ids": [event_id], "data": data}}}}});
        edu_to_room_servers(s, &members, edu).await;
    }
    let suffix = format!(":{}", s.server_name());
    let mut audience: Vec<String> = members
        .into_iter()
        .filter(|m| m.ends_with(&suffix))
        .collect();
    if kind == "m.read.private" {
        audience = vec![user_id.to_owned()];
    }
    let pos = s.core.notifier.allocate();
    let (r, u, k, e, t) = (
        room_id.to_owned(),
        user_id.to_owned(),
        kind.to_owned(),
        event_id.to_owned(),
        thread_id.unwrap_or("").to_owned(),
    );
    let now = crate::storage::now_ms();
    let res = s
        .core
        .db
        .write(room_id, move |c| {
            account::set_receipt(c, &r, &u, &k, &t, &e, now, pos)
        })
        .await;
    s.core
        .notifier
        .complete(&[pos], if res.is_ok() { audience } else { Vec::new() });
    res?;
    Ok(())
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
    access::require_joined(&s, &room_id, user.user_id.as_str()).await?;
    match kind.as_str() {
        "m.read" | "m.read.private" => {
            store_receipt(
                &s,
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
    access::require_joined(&s, &room_id, user.user_id.as_str()).await?;
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
            store_receipt(&s, &room_id, user.user_id.as_str(), kind, e, None, true).await?;
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
