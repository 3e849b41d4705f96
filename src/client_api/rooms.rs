//! Room creation and membership: createRoom, join, invite, leave, forget, kick, ban, unban,
//! joined_rooms.

use actix_web::{HttpResponse, web};
use ruma::{OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::json;
use weft_protocol::RoomVersion;
use weft_protocol::builder::{self, Position};

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::rooms::access;
use crate::rooms::create::{self, CreateRoomRequest};
use crate::rooms::messages::InitRoom;
use crate::services::Services;
use crate::storage::{self, rooms, users};

type Data = web::Data<Services>;

fn parse_room_id(s: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(s).map_err(|_| Error::invalid_param("invalid room ID"))
}

fn parse_user_id(s: &str) -> Result<OwnedUserId> {
    OwnedUserId::try_from(s).map_err(|_| Error::invalid_param("invalid user ID"))
}

/// The caller's display name and avatar (for membership events).
pub async fn profile_of(s: &Services, user_id: &str) -> Result<(Option<String>, Option<String>)> {
    let u = user_id.to_owned();
    let row = s.core.db.read(move |c| users::get_user(c, &u)).await?;
    Ok(row
        .map(|r| (r.displayname, r.avatar_url))
        .unwrap_or((None, None)))
}

pub async fn create_room(
    s: Data,
    user: AuthedUser,
    JsonBody(req): JsonBody<CreateRoomRequest>,
) -> Result<HttpResponse> {
    s.limits.create_room(user.user_id.as_str())?;
    let version_id = req
        .room_version
        .clone()
        .unwrap_or_else(|| s.core.config.rooms.default_version.clone());
    let version = RoomVersion::parse(&version_id).ok_or_else(|| {
        Error::UnsupportedRoomVersion(format!("room version {version_id} is not supported"))
    })?;
    let alias = match &req.room_alias_name {
        Some(name) => {
            if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
                return Err(Error::InvalidParam("invalid room_alias_name".into()));
            }
            let alias = format!("#{name}:{}", s.server_name());
            ruma::RoomAliasId::parse(&alias)
                .map_err(|_| Error::InvalidParam("invalid room_alias_name".into()))?;
            let a = alias.clone();
            if s.core
                .db
                .read(move |c| rooms::get_alias(c, &a))
                .await?
                .is_some()
            {
                return Err(Error::RoomInUse("room alias already taken".into()));
            }
            Some(alias)
        }
        None => None,
    };
    let profile = profile_of(&s, user.user_id.as_str()).await?;
    let mut plan = create::plan(&req, &user.user_id, version, alias.as_deref(), profile)?;
    // Remote invitees' servers must sign their invites: those go out after creation.
    let remote_invites: Vec<OwnedUserId> = plan
        .invites
        .iter()
        .filter(|u| !s.core.is_local(u.server_name().as_str()))
        .cloned()
        .collect();
    plan.rest.retain(|d| {
        !(d.kind == "m.room.member"
            && d.content.get("membership").and_then(|m| m.as_str()) == Some("invite")
            && d.state_key
                .as_deref()
                .is_some_and(|k| remote_invites.iter().any(|u| u.as_str() == k)))
    });

    // The create event: in v12 it names the room, so it is built before the room exists.
    let room_id_v11 = (!version.room_id_from_create_event())
        .then(|| format!("!{}:{}", crate::random::random_string(18), s.server_name()))
        .map(|r| parse_room_id(&r))
        .transpose()?;
    let mut create_draft = plan.create.clone();
    create_draft.origin_server_ts = storage::now_ms() as u64;
    let position = Position {
        version,
        room_id: room_id_v11.as_deref(),
        prev_events: vec![],
        auth_events: vec![],
        depth: 1,
    };
    let create_pdu = builder::build_pdu(&create_draft, &position, s.server_name(), &s.core.key)
        .map_err(|e| Error::bad_json(e.to_string()))?;
    let room_id = create_pdu.room_id().to_owned();

    s.rooms.create(&room_id, version)?;
    s.rooms
        .send(
            &room_id,
            InitRoom {
                version,
                create: create_pdu,
                drafts: plan.rest,
            },
        )
        .await??;

    for target in &remote_invites {
        if let Err(e) = match s.remote() {
            Ok(r) => r.invite(&s, &room_id, &user.user_id, target, None).await,
            Err(e) => Err(e),
        } {
            tracing::warn!(room = %room_id, invitee = %target, error = %e, "could not invite a remote user");
        }
    }
    if let Some(alias) = &alias {
        let (a, r, u) = (alias.clone(), room_id.to_string(), user.user_id.to_string());
        s.core
            .db
            .write(alias, move |c| rooms::create_alias(c, &a, &r, &u))
            .await?;
    }
    if plan.publish {
        let r = room_id.to_string();
        s.core
            .db
            .write(room_id.as_str(), move |c| rooms::set_public(c, &r, true))
            .await?;
    }
    tracing::info!(room = %room_id, version = %version, creator = %user.user_id, "room created");
    let mut body = json!({"room_id": room_id});
    if let Some(alias) = alias {
        body["room_alias"] = json!(alias);
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Deserialize, Default)]
pub struct JoinBody {
    reason: Option<String>,
}

async fn join_room(
    s: &Services,
    user: &AuthedUser,
    room_id: &OwnedRoomId,
    reason: Option<String>,
    mut servers: Vec<String>,
) -> Result<()> {
    let local_room = access::held_here(&s.core, room_id.as_str()).await?;
    let (name, avatar) = profile_of(s, user.user_id.as_str()).await?;
    let mut content = json!({"membership": "join"});
    if let Some(n) = name {
        content["displayname"] = json!(n);
    }
    if let Some(a) = avatar {
        content["avatar_url"] = json!(a);
    }
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        content["reason"] = json!(r);
    }
    if local_room {
        // A room everyone has left: no server is in it any more to vouch for a join, so
        // (like Synapse) there is nobody to ask.
        let r = room_id.to_string();
        let anyone_joined = s
            .core
            .db
            .read(move |c| rooms::members_with(c, &r, "join"))
            .await?
            .into_iter()
            .next()
            .is_some();
        if !anyone_joined {
            return Err(Error::not_found(
                "no server in the room can be asked: every member has left",
            ));
        }
        s.rooms
            .send_member(room_id, &user.user_id, user.user_id.as_str(), content, None)
            .await?;
        return Ok(());
    }
    // A room held elsewhere: ask a resident server. Candidates: what the client named, the
    // server that invited us, the server in the room ID.
    if let Some(m) = access::membership(&s.core, room_id.as_str(), user.user_id.as_str()).await?
        && let Some((_, srv)) = m.sender.split_once(':')
    {
        servers.push(srv.to_owned());
    }
    if let Some(srv) = room_id.server_name() {
        servers.push(srv.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    servers.retain(|x| seen.insert(x.clone()) && !s.core.is_local(x));
    if servers.is_empty() {
        return Err(Error::not_found("no known servers for this room"));
    }
    s.remote()?
        .join(s, &user.user_id, room_id, &servers, content)
        .await?;
    Ok(())
}

/// `server_name` / `via` query parameters (repeatable).
fn via_servers(req: &actix_web::HttpRequest) -> Vec<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k == "server_name" || k == "via")
        .map(|(_, v)| v.into_owned())
        .collect()
}

pub async fn knock(
    s: Data,
    user: AuthedUser,
    req: actix_web::HttpRequest,
    path: web::Path<String>,
    JsonBody(body): JsonBody<JoinBody>,
) -> Result<HttpResponse> {
    let (room_id, mut servers) = super::directory::resolve(&s, &path.into_inner()).await?;
    let local_room = access::held_here(&s.core, room_id.as_str()).await?;
    if local_room {
        let content = json!({"membership": "knock"});
        s.rooms
            .send_member(
                &room_id,
                &user.user_id,
                user.user_id.as_str(),
                content,
                body.reason,
            )
            .await?;
    } else {
        servers.extend(via_servers(&req));
        if let Some(srv) = room_id.server_name() {
            servers.push(srv.to_string());
        }
        let mut seen = std::collections::HashSet::new();
        servers.retain(|x| seen.insert(x.clone()) && !s.core.is_local(x));
        if servers.is_empty() {
            return Err(Error::not_found("no known servers for this room"));
        }
        s.remote()?
            .knock(&s, &room_id, &user.user_id, &servers, body.reason)
            .await?;
    }
    Ok(HttpResponse::Ok().json(json!({"room_id": room_id})))
}

pub async fn join_by_id_or_alias(
    s: Data,
    user: AuthedUser,
    req: actix_web::HttpRequest,
    path: web::Path<String>,
    JsonBody(body): JsonBody<JoinBody>,
) -> Result<HttpResponse> {
    let (room_id, mut servers) = super::directory::resolve(&s, &path.into_inner()).await?;
    servers.extend(via_servers(&req));
    join_room(&s, &user, &room_id, body.reason, servers).await?;
    Ok(HttpResponse::Ok().json(json!({"room_id": room_id})))
}

pub async fn join(
    s: Data,
    user: AuthedUser,
    req: actix_web::HttpRequest,
    path: web::Path<String>,
    JsonBody(body): JsonBody<JoinBody>,
) -> Result<HttpResponse> {
    let room_id = parse_room_id(&path.into_inner())?;
    join_room(&s, &user, &room_id, body.reason, via_servers(&req)).await?;
    Ok(HttpResponse::Ok().json(json!({"room_id": room_id})))
}

#[derive(Deserialize)]
pub struct TargetBody {
    user_id: String,
    reason: Option<String>,
}

pub async fn invite(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> Result<HttpResponse> {
    let room_id = parse_room_id(&path.into_inner())?;
    let target = parse_user_id(&body.user_id)?;
    if !s.core.is_local(target.server_name().as_str()) {
        s.remote()?
            .invite(&s, &room_id, &user.user_id, &target, body.reason)
            .await?;
        return Ok(HttpResponse::Ok().json(json!({})));
    }
    s.rooms
        .send_member(
            &room_id,
            &user.user_id,
            target.as_str(),
            json!({"membership": "invite"}),
            body.reason,
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn leave(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<JoinBody>,
) -> Result<HttpResponse> {
    let room_id = parse_room_id(&path.into_inner())?;
    crate::deactivation::leave_room(&s, &room_id, &user.user_id, body.reason).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn forget(s: Data, user: AuthedUser, path: web::Path<String>) -> Result<HttpResponse> {
    let room_id = parse_room_id(&path.into_inner())?;
    let current = access::membership(&s.core, room_id.as_str(), user.user_id.as_str()).await?;
    match current.as_ref().map(|m| m.membership.as_str()) {
        Some("leave" | "ban") => {
            let (r, u) = (room_id.to_string(), user.user_id.to_string());
            s.core
                .db
                .write(user.user_id.as_str(), move |c| rooms::forget(c, &r, &u))
                .await?;
            Ok(HttpResponse::Ok().json(json!({})))
        }
        Some(_) => Err(Error::BadState(
            "you must leave the room before forgetting it".into(),
        )),
        None => Err(Error::not_found("you are not in this room")),
    }
}

/// Sets another user's membership (kick, ban, unban), if their current membership is one of
/// `from` (`None`: any). The auth rules decide whether the sender may.
async fn moderate(
    s: &Services,
    user: &AuthedUser,
    room: String,
    body: TargetBody,
    membership: &str,
    from: Option<&[&str]>,
    refusal: &str,
) -> Result<HttpResponse> {
    let room_id = parse_room_id(&room)?;
    let target = parse_user_id(&body.user_id)?;
    if let Some(from) = from {
        let current = access::membership(&s.core, room_id.as_str(), target.as_str()).await?;
        if !current
            .as_ref()
            .is_some_and(|m| from.contains(&m.membership.as_str()))
        {
            return Err(Error::forbidden(refusal));
        }
    }
    let content = json!({"membership": membership});
    s.rooms
        .send_member(
            &room_id,
            &user.user_id,
            target.as_str(),
            content,
            body.reason,
        )
        .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn kick(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> Result<HttpResponse> {
    let from: &[&str] = &["join", "invite", "knock"];
    moderate(
        &s,
        &user,
        path.into_inner(),
        body,
        "leave",
        Some(from),
        "the user is not in the room",
    )
    .await
}

pub async fn ban(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> Result<HttpResponse> {
    moderate(&s, &user, path.into_inner(), body, "ban", None, "").await
}

pub async fn unban(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<TargetBody>,
) -> Result<HttpResponse> {
    moderate(
        &s,
        &user,
        path.into_inner(),
        body,
        "leave",
        Some(&["ban"]),
        "the user is not banned",
    )
    .await
}

pub async fn joined_rooms(s: Data, user: AuthedUser) -> Result<HttpResponse> {
    let u = user.user_id.to_string();
    let rows = s
        .core
        .db
        .read(move |c| rooms::rooms_for_user(c, &u))
        .await?;
    let joined: Vec<String> = rows
        .into_iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id)
        .collect();
    Ok(HttpResponse::Ok().json(json!({"joined_rooms": joined})))
}
