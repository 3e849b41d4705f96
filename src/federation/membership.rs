//! Membership across servers, both directions.
//!
//! Inbound (we are resident in the room): `make_join`/`send_join`, `make_leave`/
//! `send_leave`, `make_knock`/`send_knock` hand out templates built on our current state and
//! take the signed event back through the room actor like any received PDU, then deliver it
//! to the room's other servers; `invite` counter-signs an invite for one of our users and
//! records it so their `/sync` shows it.
//!
//! Outbound (a local user and a room elsewhere): joining fetches a template from a resident
//! server, signs it, and sends it with `send_join`; the answer's state and auth chain are
//! checked and stored as outliers, and the join enters the room actor with that state as
//! the state before it (creating the room here). Inviting a remote user has the room actor
//! build the invite, has the invitee's server sign it, then appends it. Rejecting a remote
//! invite uses `make_leave`/`send_leave` with the inviting server.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};
use weft_protocol::builder::{self, EventDraft, Position};
use weft_protocol::{Pdu, RoomVersion, auth, canonical};

use super::auth::Signed;
use super::client::enc;
use super::inbound::{gaps, verify};
use crate::error::{Error, Result};
use crate::rooms::messages::{BuildEvent, GetSnapshot, InboundOutcome, InboundPdus};
use crate::rooms::outliers;
use crate::services::Services;
use crate::storage::events::{self, EventRow, NewEvent};
use crate::storage::{now_ms, rooms, state};

type Data = web::Data<Services>;

fn server_of(user: &str) -> &str {
    user.split_once(':').map(|(_, s)| s).unwrap_or_default()
}

fn vers_of(req: &HttpRequest) -> Vec<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k == "ver")
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn room_id(s: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(s).map_err(|_| Error::invalid_param("invalid room ID"))
}

// -------------------------------------------------------------------------------------
// Inbound
// -------------------------------------------------------------------------------------

/// Builds a membership template for a remote user on our current state.
async fn make_membership(
    s: &Services,
    origin: &str,
    room: &str,
    user: &str,
    membership: &str,
    vers: Option<Vec<String>>,
) -> Result<Value> {
    let room_id = room_id(room)?;
    let user_id =
        OwnedUserId::try_from(user).map_err(|_| Error::invalid_param("invalid user ID"))?;
    if user_id.server_name().as_str() != origin {
        return Err(Error::forbidden("the user is not on the requesting server"));
    }
    let snap = s.rooms.send(&room_id, GetSnapshot).await??;
    if snap.version.is_linearized() {
        // LM: only the hub hands out templates (it orders events whether or not any of its
        // users is joined).
        super::linearized::hub::require_hub(s, room).await?;
    } else if !snap
        .state
        .joined_servers()
        .iter()
        .any(|srv| s.core.is_local(srv))
    {
        return Err(Error::forbidden("this server is not in the room"));
    }
    if let Some(vers) = vers {
        let vers = if vers.is_empty() {
            vec!["1".to_owned()]
        } else {
            vers
        };
        if !vers.iter().any(|v| v == snap.version.as_str()) {
            return Err(Error::IncompatibleRoomVersion(format!(
                "room version {} is not among the supported versions",
                snap.version
            )));
        }
    }
    let content = json!({"membership": membership});
    let mut draft = EventDraft::state("m.room.member", user, user_id.clone(), content.clone());
    draft.origin_server_ts = now_ms() as u64;
    let auth_events = auth::select_auth_events(
        snap.version,
        "m.room.member",
        &user_id,
        Some(user),
        &content,
        &snap.state.ids(),
    )
    .map_err(|e| Error::BadJson(e.0))?;
    let position = Position {
        version: snap.version,
        room_id: Some(&room_id),
        prev_events: snap.extremities.iter().rev().take(10).cloned().collect(),
        auth_events,
        depth: snap.max_depth + 1,
    };
    let index = snap.state.index();
    let hashes = |id: &ruma::EventId| {
        snap.extremity_hashes.get(id).cloned().or_else(|| {
            index
                .get(id)
                .and_then(|e| weft_protocol::pdu::reference_hash(e.json(), snap.version).ok())
        })
    };
    let template = builder::pdu_template_citing(&draft, &position, &hashes)
        .map_err(|e| Error::BadJson(e.to_string()))?;
    // Would the event be allowed now? (The signed event is checked again on send.)
    let probe = Pdu::from_json(template.clone(), snap.version)
        .map_err(|e| Error::BadJson(e.to_string()))?;
    auth::check_state_dependent(snap.version, &probe, |t, k| {
        snap.state.as_map().get(&(t.clone(), k.to_owned())).cloned()
    })
    .map_err(|e| Error::forbidden(format!("{membership} not allowed: {}", e.0)))?;
    Ok(json!({"event": canonical::to_value(&template), "room_version": snap.version.as_str()}))
}

pub async fn make_join(
    s: Data,
    signed: Signed,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, user) = path.into_inner();
    let v = make_membership(
        &s,
        &signed.origin,
        &room,
        &user,
        "join",
        Some(vers_of(&req)),
    )
    .await?;
    Ok(HttpResponse::Ok().json(v))
}

pub async fn make_leave(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, user) = path.into_inner();
    let v = make_membership(&s, &signed.origin, &room, &user, "leave", None).await?;
    Ok(HttpResponse::Ok().json(v))
}

pub async fn make_knock(
    s: Data,
    signed: Signed,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, user) = path.into_inner();
    let v = make_membership(
        &s,
        &signed.origin,
        &room,
        &user,
        "knock",
        Some(vers_of(&req)),
    )
    .await?;
    Ok(HttpResponse::Ok().json(v))
}

/// Checks and appends a signed membership event sent by the user's server.
async fn accept_membership(
    s: &Services,
    signed: &Signed,
    room: &str,
    event_id: &str,
    membership: &str,
) -> Result<(Pdu, RoomVersion)> {
    let room_id = room_id(room)?;
    let r = room.to_owned();
    let version = s
        .core
        .db
        .read(move |c| rooms::get_room(c, &r))
        .await?
        .and_then(|row| RoomVersion::parse(&row.room_version))
        .ok_or_else(|| Error::not_found("unknown room"))?;
    let raw: Value = signed.json()?;
    let pdu = verify::parse(&raw, version).map_err(Error::BadJson)?;
    if pdu.event_id().as_str() != event_id || pdu.room_id() != &*room_id {
        return Err(Error::bad_json(
            "event ID or room ID does not match the request",
        ));
    }
    if pdu.kind_str() != "m.room.member"
        || pdu.membership().as_deref() != Some(membership)
        || pdu.state_key() != Some(pdu.sender().as_str())
        || pdu.sender().server_name().as_str() != signed.origin
    {
        return Err(Error::bad_json(format!(
            "not a {membership} of a user of the requesting server"
        )));
    }
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::forbidden("federation is disabled"))?;
    let checked = verify::check_many(&fed, vec![(pdu, version)])
        .await
        .pop()
        .ok_or_else(|| Error::internal("no check result"))?;
    let checked = checked.map_err(Error::Forbidden)?;
    if checked.redacted {
        return Err(Error::forbidden("content hash mismatch"));
    }
    let outcome = s
        .rooms
        .admit(
            &room_id,
            InboundPdus {
                pdus: vec![(checked.pdu.clone(), None)],
                local: true,
                version: None,
            },
        )
        .await?
        .pop();
    match outcome {
        Some(InboundOutcome::Accepted) => Ok((checked.pdu, version)),
        Some(InboundOutcome::Missing { prev, auth }) => {
            // Built on a template from us: every prev/auth event should be ours.
            Err(Error::bad_json(format!(
                "unknown prev/auth events {prev:?} {auth:?}"
            )))
        }
        Some(other) => Err(Error::forbidden(format!("{membership} refused: {other:?}"))),
        None => Err(Error::internal("no outcome")),
    }
}

fn pdu_value(row: &EventRow) -> Value {
    serde_json::from_str(&row.json).unwrap_or(Value::Null)
}

/// The state before an event and the auth chain of that state and the event.
async fn state_and_chain(s: &Services, event_id: &str) -> Result<(Vec<Value>, Vec<Value>)> {
    let e = event_id.to_owned();
    let (st, chain) = s
        .core
        .db
        .read(move |c| {
            let Some(row) = events::get_event(c, &e)? else {
                return Ok((Vec::new(), Vec::new()));
            };
            let ids: Vec<String> = match row.state_before {
                Some(g) => state::load_group(c, g)?.into_values().collect(),
                None => Vec::new(),
            };
            let st = events::get_events(c, &ids)?;
            let mut roots = ids.clone();
            roots.push(e.clone());
            let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
            let mut stack: Vec<String> = Vec::new();
            for r in events::get_events(c, &roots)? {
                stack.extend(auth_of(&r));
            }
            let mut chain = Vec::new();
            while let Some(id) = stack.pop() {
                if !seen.insert(id.clone()) {
                    continue;
                }
                if let Some(r) = events::get_event(c, &id)? {
                    stack.extend(auth_of(&r));
                    chain.push(r);
                }
            }
            chain.sort_by_key(|r| r.depth);
            Ok((st, chain))
        })
        .await?;
    Ok((
        st.iter().map(pdu_value).collect(),
        chain.iter().map(pdu_value).collect(),
    ))
}

fn auth_of(row: &EventRow) -> Vec<String> {
    serde_json::from_str::<Value>(&row.json)
        .ok()
        .and_then(|v| v.get("auth_events").cloned())
        .and_then(|a| serde_json::from_value::<Vec<String>>(a).ok())
        .unwrap_or_default()
}

async fn send_join_body(
    s: &Services,
    signed: &Signed,
    room: &str,
    event_id: &str,
) -> Result<Value> {
    let (pdu, _version) = accept_membership(s, signed, room, event_id, "join").await?;
    let (st, chain) = state_and_chain(s, event_id).await?;
    let r = room.to_owned();
    let members = s
        .core
        .db
        .read(move |c| rooms::members_with(c, &r, "join"))
        .await?;
    let mut servers: Vec<String> = members.iter().map(|m| server_of(m).to_owned()).collect();
    servers.sort();
    servers.dedup();
    Ok(json!({
        "origin": s.server_name(),
        "state": st,
        "auth_chain": chain,
        "event": pdu.to_federation_value(),
        "members_omitted": false,
        "servers_in_room": servers,
    }))
}

pub async fn send_join_v2(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, event_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(send_join_body(&s, &signed, &room, &event_id).await?))
}

pub async fn send_join_v1(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, event_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(json!([
        200,
        send_join_body(&s, &signed, &room, &event_id).await?
    ])))
}

pub async fn send_leave_v2(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, event_id) = path.into_inner();
    accept_membership(&s, &signed, &room, &event_id, "leave").await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn send_leave_v1(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, event_id) = path.into_inner();
    accept_membership(&s, &signed, &room, &event_id, "leave").await?;
    Ok(HttpResponse::Ok().json(json!([200, {}])))
}

pub async fn send_knock(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, event_id) = path.into_inner();
    accept_membership(&s, &signed, &room, &event_id, "knock").await?;
    let rid = room_id(&room)?;
    let snap = s.rooms.send(&rid, GetSnapshot).await??;
    Ok(HttpResponse::Ok().json(json!({"knock_room_state": snap.state.stripped_for_invite(None)})))
}

#[derive(Deserialize)]
pub struct InviteBody {
    room_version: String,
    event: Value,
    #[serde(default)]
    invite_room_state: Vec<Value>,
}

/// Records an invite (or knock) of a local user to a room we may hold no copy of. Such an
/// out-of-band membership never replaces a join (or ban) held in a room we know: that one
/// changes only through the room's events (403 `M_FORBIDDEN` otherwise).
pub(crate) async fn record_remote_membership(
    s: &Services,
    pdu: &Pdu,
    version: RoomVersion,
    stripped: Vec<Value>,
) -> Result<()> {
    let target = pdu.state_key().unwrap_or_default().to_owned();
    let stream = s.core.notifier.allocate();
    let row = NewEvent {
        event_id: pdu.event_id().to_string(),
        room_id: pdu.room_id().to_string(),
        stream_ordering: None,
        depth: pdu.depth().min(i64::MAX as u64) as i64,
        event_type: pdu.kind_str(),
        state_key: pdu.state_key().map(str::to_owned),
        sender: pdu.sender().to_string(),
        origin_server_ts: pdu.origin_server_ts().min(i64::MAX as u64) as i64,
        json: pdu.to_canonical_string(),
        state_before: None,
        state_after: None,
        outlier: true,
        rejected: None,
        soft_failed: false,
        redacted_by: None,
    };
    let membership = pdu.membership().unwrap_or_default();
    let (room, t, sender, eid) = (
        pdu.room_id().to_string(),
        target.clone(),
        pdu.sender().to_string(),
        pdu.event_id().to_string(),
    );
    let invite_state = Value::Array(stripped).to_string();
    let res = s
        .core
        .db
        .write(pdu.room_id().as_str(), move |c| {
            let known = rooms::get_room(c, &room)?.is_some();
            if known
                && rooms::get_membership(c, &room, &t)?
                    .is_some_and(|m| matches!(m.membership.as_str(), "join" | "ban"))
            {
                return Ok(false);
            }
            events::insert_event(c, &row)?;
            // A room we are in keeps its own version row; others get the version recorded.
            if !known {
                rooms::set_known_version(c, &room, version.as_str())?;
            }
            rooms::set_membership(
                c,
                &room,
                &t,
                &membership,
                &eid,
                stream,
                &sender,
                Some(&invite_state),
            )?;
            Ok(true)
        })
        .await;
    s.core.notifier.complete(
        &[stream],
        if matches!(res, Ok(true)) {
            vec![target]
        } else {
            Vec::new()
        },
    );
    if !res? {
        tracing::info!(room = %pdu.room_id(), user = %pdu.state_key().unwrap_or_default(), "out-of-band membership refused: the user's membership in a room we know changes only by its events");
        return Err(Error::forbidden(
            "the user's membership in this room is decided by the room's state",
        ));
    }
    Ok(())
}

/// An invite for a room we hold: checked against the room's current state like any event
/// (an invite of a joined or banned user, or from a sender who may not invite, is 403
/// `M_FORBIDDEN`). `false` when we hold no copy of the room.
async fn check_invite_against_room(s: &Services, pdu: &Pdu, version: RoomVersion) -> Result<bool> {
    let Ok(room_id) = OwnedRoomId::try_from(pdu.room_id().as_str()) else {
        return Ok(false);
    };
    let r = room_id.to_string();
    let held = s.core.db.read(move |c| rooms::get_room(c, &r)).await?;
    let Some(row) = held else {
        return Ok(false);
    };
    if row.room_version != version.as_str() {
        return Err(Error::bad_json(format!(
            "the room has version {}, not {}",
            row.room_version,
            version.as_str()
        )));
    }
    let snap = match s.rooms.send(&room_id, GetSnapshot).await? {
        Ok(snap) => snap,
        Err(_) => return Ok(false),
    };
    auth::check_state_dependent(version, pdu, |t, k| {
        snap.state.as_map().get(&(t.clone(), k.to_owned())).cloned()
    })
    .map_err(|e| {
        tracing::info!(room = %room_id, event = %pdu.event_id(), reason = %e.0, "invite refused by the room's state");
        Error::forbidden(format!("invite not allowed by the room's state: {}", e.0))
    })?;
    Ok(true)
}

pub async fn invite_v2(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, event_id) = path.into_inner();
    let body: InviteBody = signed.json()?;
    let version = RoomVersion::parse(&body.room_version)
        .filter(|v| !v.is_linearized())
        .ok_or_else(|| {
            Error::IncompatibleRoomVersion(format!(
                "room version {} is not supported",
                body.room_version
            ))
        })?;
    let pdu = verify::parse(&body.event, version).map_err(Error::BadJson)?;
    if pdu.event_id().as_str() != event_id || pdu.room_id().as_str() != room {
        return Err(Error::bad_json(
            "event ID or room ID does not match the request",
        ));
    }
    let target = pdu.state_key().unwrap_or_default().to_owned();
    if pdu.kind_str() != "m.room.member"
        || pdu.membership().as_deref() != Some("invite")
        || pdu.sender().server_name().as_str() != signed.origin
    {
        return Err(Error::bad_json(
            "not an invite from a user of the requesting server",
        ));
    }
    let target_id =
        OwnedUserId::try_from(target.as_str()).map_err(|_| Error::bad_json("invalid invitee"))?;
    if !s.core.is_local(target_id.server_name().as_str()) {
        return Err(Error::bad_json("the invitee is not on this server"));
    }
    let t = target.clone();
    if s.core
        .db
        .read(move |c| crate::storage::users::get_user(c, &t))
        .await?
        .is_none()
    {
        return Err(Error::not_found("unknown user"));
    }
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::forbidden("federation is disabled"))?;
    let checked = verify::check_many(&fed, vec![(pdu, version)])
        .await
        .pop()
        .ok_or_else(|| Error::internal("no check result"))?;
    let checked = checked.map_err(Error::Forbidden)?;
    if checked.redacted {
        return Err(Error::forbidden("content hash mismatch"));
    }
    let known = check_invite_against_room(&s, &checked.pdu, version).await?;
    let mut obj = checked.pdu.json().clone();
    builder::add_signature(&mut obj, version, s.server_name(), &s.core.key)
        .map_err(|e| Error::internal(e.to_string()))?;
    let signed_pdu = Pdu::from_json_with_id(checked.pdu.owned_event_id(), obj, version)
        .map_err(|e| Error::internal(e.to_string()))?;
    // A room we hold: the invite is an event of our copy, admitted like any other (it
    // will also arrive by /send, but the invitee may join before that). Only when our copy
    // cannot place it yet (its prev events are unknown here) is it kept out of band.
    let mut placed = false;
    if known && let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) {
        let msg = InboundPdus {
            pdus: vec![(signed_pdu.clone(), None)],
            local: false,
            version: None,
        };
        match s.rooms.admit(&room_id, msg).await?.pop() {
            Some(InboundOutcome::Accepted) => placed = true,
            Some(InboundOutcome::Rejected(r)) | Some(InboundOutcome::SoftFailed(r)) => {
                tracing::info!(room = %room, reason = %r, "invite refused by the room");
                return Err(Error::forbidden(format!("invite not allowed: {r}")));
            }
            other => {
                tracing::debug!(room = %room, ?other, "invite not placed in our copy of the room yet")
            }
        }
    }
    if !placed {
        record_remote_membership(&s, &signed_pdu, version, body.invite_room_state).await?;
    }
    tracing::info!(room = %room, invitee = %target, inviter = %signed_pdu.sender(), "accepted an invite from another server");
    Ok(HttpResponse::Ok().json(json!({"event": signed_pdu.to_federation_value()})))
}

pub async fn invite_v1(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    // v1 carries the bare event; room versions 1 and 2 only in practice. Answer like v2.
    let (room, event_id) = path.into_inner();
    let raw: Value = signed.json()?;
    let version = {
        let r = room.clone();
        s.core
            .db
            .read(move |c| rooms::room_version(c, &r))
            .await?
            .unwrap_or_else(|| "10".into())
    };
    let wrapped = json!({"room_version": version, "event": raw, "invite_room_state": []});
    let resigned = Signed {
        origin: signed.origin.clone(),
        body: web::Bytes::from(wrapped.to_string()),
    };
    let resp = invite_v2(s, resigned, web::Path::from((room, event_id))).await?;
    Ok(resp)
}

// -------------------------------------------------------------------------------------
// Outbound
// -------------------------------------------------------------------------------------

/// Supported room versions as `ver=` query parameters.
fn ver_query() -> String {
    // Includes Linearized Matrix (joined through `linearized::participant`).
    super::linearized::participant::make_join_versions()
}

/// Turns a `make_join`/`make_leave`/`make_knock` template into our signed event: drops what
/// the resident server may not choose for us, stamps the time, adds `extra` content, hashes
/// and signs, and checks the result is `membership` for `user`.
fn sign_template(
    s: &Services,
    server: &str,
    template: Value,
    version: RoomVersion,
    user: &OwnedUserId,
    membership: &str,
    extra: &Value,
) -> Result<Pdu> {
    let mut obj = canonical::value_to_object(template).map_err(|e| Error::Remote(e.to_string()))?;
    // `event_id` (v1/v2) is minted anew on our server by `finish_event`.
    for k in ["origin", "event_id", "hashes", "signatures", "unsigned"] {
        obj.remove(k);
    }
    obj.insert(
        "origin_server_ts".into(),
        ruma::CanonicalJsonValue::Integer(ruma::Int::try_from(now_ms()).unwrap_or_default()),
    );
    if let (Some(ruma::CanonicalJsonValue::Object(content)), Some(extra)) =
        (obj.get_mut("content"), extra.as_object())
    {
        for (k, v) in extra {
            if k != "membership"
                && let Ok(cv) = canonical::value_to_canonical(v.clone())
            {
                content.insert(k.clone(), cv);
            }
        }
    }
    let pdu = builder::finish_event(obj, version, s.server_name(), &s.core.key)
        .map_err(|e| Error::Remote(e.to_string()))?;
    if pdu.sender() != user
        || pdu.state_key() != Some(user.as_str())
        || pdu.membership().as_deref() != Some(membership)
    {
        return Err(Error::Remote(format!(
            "{server} sent a bad {membership} template"
        )));
    }
    Ok(pdu)
}

/// Joins a local user to a room held by other servers.
pub async fn join_remote(
    s: &Services,
    user: &OwnedUserId,
    room: &OwnedRoomId,
    servers: &[String],
    content_extra: Value,
) -> Result<OwnedEventId> {
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::not_found("no known servers (federation disabled)"))?;
    let mut last_err = Error::not_found("no server in the room could be reached");
    for server in servers.iter().filter(|srv| !s.core.is_local(srv)) {
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            enc(room.as_str()),
            enc(user.as_str()),
            ver_query()
        );
        let resp = match fed.client.request("GET", server, &path, None).await {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(server, error = %e, "make_join failed");
                last_err = e.into();
                continue;
            }
        };
        let version_id = resp
            .get("room_version")
            .and_then(|v| v.as_str())
            .unwrap_or("1");
        if RoomVersion::parse(version_id).is_some_and(|v| v.is_linearized()) {
            match super::linearized::participant::join_via(
                s,
                server,
                room,
                user,
                &resp,
                content_extra.clone(),
            )
            .await
            {
                Ok(id) => return Ok(id),
                Err(e) => {
                    tracing::info!(server, error = %e, "LM join failed");
                    last_err = e;
                    continue;
                }
            }
        }
        let Some(version) = RoomVersion::parse(version_id).filter(|v| !v.is_linearized()) else {
            last_err = Error::IncompatibleRoomVersion(format!(
                "room version {version_id} is not supported"
            ));
            continue;
        };
        let Some(template) = resp.get("event").cloned() else {
            last_err = Error::Remote(format!("{server} sent no join template"));
            continue;
        };
        match complete_join(
            s,
            &fed,
            server,
            room,
            user,
            version,
            template,
            content_extra.clone(),
        )
        .await
        {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::info!(server, error = %e, "send_join failed");
                last_err = e;
            }
        }
    }
    Err(last_err)
}

#[allow(clippy::too_many_arguments)]
async fn complete_join(
    s: &Services,
    fed: &std::sync::Arc<super::Federation>,
    server: &str,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    version: RoomVersion,
    template: Value,
    content_extra: Value,
) -> Result<OwnedEventId> {
    let join = sign_template(s, server, template, version, user, "join", &content_extra)?;
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        enc(room.as_str()),
        enc(join.event_id().as_str())
    );
    let resp = fed
        .client
        .request("PUT", server, &path, Some(&join.to_federation_value()))
        .await?;

    // The room's state and auth chain: check, store as outliers.
    let mut raws = resp
        .get("auth_chain")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    let state_raws = resp
        .get("state")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    raws.extend(state_raws.iter().cloned());
    let pdus = gaps::checked_pdus(fed, &raws, version, room.as_str()).await;
    let state_event_ids: std::collections::HashSet<String> = state_raws
        .iter()
        .filter_map(|r| {
            verify::parse(r, version)
                .ok()
                .map(|p| p.event_id().to_string())
        })
        .collect();
    let mut state_ids: HashMap<(String, String), String> = HashMap::new();
    for p in &pdus {
        if state_event_ids.contains(p.event_id().as_str())
            && let Some(k) = p.state_key()
        {
            state_ids.insert((p.kind_str(), k.to_owned()), p.event_id().to_string());
        }
    }
    if !state_ids.contains_key(&("m.room.create".to_owned(), String::new())) {
        return Err(Error::Remote(format!(
            "{server} sent no create event in the room state"
        )));
    }
    let rejected = outliers::store(&s.core, room.as_str(), version, pdus).await?;
    if !rejected.is_empty() {
        // Rejected events are never state: the join's state is what remains.
        tracing::warn!(room = %room, count = rejected.len(), "some of the room's state failed its auth checks; left out");
        let bad: std::collections::HashSet<&String> = rejected.iter().collect();
        state_ids.retain(|_, id| !bad.contains(id));
    }
    // A resident server may have countersigned the join (restricted rooms).
    let join = match resp.get("event") {
        Some(ev) => match verify::parse(ev, version) {
            Ok(p) if p.event_id() == join.event_id() => p,
            _ => join,
        },
        None => join,
    };
    let id = join.owned_event_id();
    let outcome = s
        .rooms
        .admit(
            room,
            InboundPdus {
                pdus: vec![(join, Some(state_ids))],
                local: false,
                version: Some(version),
            },
        )
        .await?
        .pop();
    match outcome {
        Some(InboundOutcome::Accepted) | Some(InboundOutcome::SoftFailed(_)) => {
            tracing::info!(room = %room, user = %user, via = server, "joined a room over federation");
            Ok(id)
        }
        other => Err(Error::Remote(format!(
            "our join could not be applied: {other:?}"
        ))),
    }
}

/// Invites a remote user to a room we are in: the invitee's server signs the invite first.
pub async fn invite_remote(
    s: &Services,
    room: &OwnedRoomId,
    sender: &OwnedUserId,
    target: &OwnedUserId,
    reason: Option<String>,
) -> Result<OwnedEventId> {
    if let Some(id) =
        super::linearized::participant::invite(s, room, sender, target, reason.clone()).await?
    {
        return Ok(id);
    }
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::forbidden("federation is disabled"))?;
    let mut content = json!({"membership": "invite"});
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    let draft = EventDraft::state("m.room.member", target.as_str(), sender.clone(), content);
    let (pdu, version, stripped) = s.rooms.send(room, BuildEvent { draft }).await??;
    let body = json!({
        "room_version": version.as_str(),
        "event": pdu.to_federation_value(),
        "invite_room_state": stripped,
    });
    let dest = target.server_name().as_str();
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        enc(room.as_str()),
        enc(pdu.event_id().as_str())
    );
    let resp = fed.client.request("PUT", dest, &path, Some(&body)).await?;
    let returned = resp
        .get("event")
        .ok_or_else(|| Error::Remote(format!("{dest} returned no event")))?;
    let signed_back = verify::parse(returned, version).map_err(Error::Remote)?;
    if signed_back.event_id() != pdu.event_id() {
        return Err(Error::Remote(format!("{dest} changed the invite event")));
    }
    // The invitee's server must have signed it.
    let obj = signed_back.json().clone();
    if !fed.keys.ensure(dest, &[], 0).await {
        tracing::info!(
            destination = dest,
            "could not fetch the invitee server's keys"
        );
    }
    let bytes = weft_protocol::signatures::signing_bytes(&obj, version)
        .map_err(|e| Error::Remote(e.to_string()))?;
    weft_protocol::signatures::verify_server_signature(
        &obj,
        dest,
        bytes.as_bytes(),
        0,
        false,
        &fed.keys.lookup(),
    )
    .map_err(|e| Error::Remote(format!("{dest} did not sign the invite: {e}")))?;
    let outcome = s
        .rooms
        .admit(
            room,
            InboundPdus {
                pdus: vec![(signed_back, None)],
                local: true,
                version: None,
            },
        )
        .await?
        .pop();
    match outcome {
        Some(InboundOutcome::Accepted) => Ok(pdu.owned_event_id()),
        other => Err(Error::forbidden(format!(
            "invite could not be applied: {other:?}"
        ))),
    }
}

/// Leaves a room we hold no copy of (rejecting an invite): `make_leave`/`send_leave` with a
/// server in the room, then records the leave locally.
pub async fn leave_remote(
    s: &Services,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    servers: &[String],
) -> Result<()> {
    let r = room.to_string();
    if s.core
        .db
        .read(move |c| rooms::room_version(c, &r))
        .await?
        .is_some_and(|v| RoomVersion::parse(&v).is_some_and(|v| v.is_linearized()))
    {
        return super::linearized::participant::decline_invite(s, room, user).await;
    }
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::forbidden("federation is disabled"))?;
    let mut last_err = Error::not_found("no server in the room could be reached");
    for server in servers.iter().filter(|srv| !s.core.is_local(srv)) {
        let path = format!(
            "/_matrix/federation/v1/make_leave/{}/{}",
            enc(room.as_str()),
            enc(user.as_str())
        );
        let resp = match fed.client.request("GET", server, &path, None).await {
            Ok(r) => r,
            Err(e) => {
                last_err = e.into();
                continue;
            }
        };
        let version = resp
            .get("room_version")
            .and_then(|v| v.as_str())
            .and_then(RoomVersion::parse)
            .unwrap_or(RoomVersion::V10);
        let Some(template) = resp.get("event").cloned() else {
            continue;
        };
        let leave = sign_template(s, server, template, version, user, "leave", &Value::Null)?;
        let path = format!(
            "/_matrix/federation/v2/send_leave/{}/{}",
            enc(room.as_str()),
            enc(leave.event_id().as_str())
        );
        match fed
            .client
            .request("PUT", server, &path, Some(&leave.to_federation_value()))
            .await
        {
            Ok(_) => {
                record_remote_membership(s, &leave, version, Vec::new()).await?;
                return Ok(());
            }
            Err(e) => last_err = e.into(),
        }
    }
    Err(last_err)
}

/// Records locally that a user declined a remote invite nobody could be told about.
pub async fn forget_remote_invite(
    s: &Services,
    room: &OwnedRoomId,
    user: &OwnedUserId,
) -> Result<()> {
    let stream = s.core.notifier.allocate();
    let (r, u) = (room.to_string(), user.to_string());
    let res = s
        .core
        .db
        .write(room.as_str(), move |c| {
            let Some(m) = rooms::get_membership(c, &r, &u)? else {
                return Ok(());
            };
            rooms::set_membership(c, &r, &u, "leave", &m.event_id, stream, &u, None)
        })
        .await;
    s.core.notifier.complete(
        &[stream],
        if res.is_ok() {
            vec![user.to_string()]
        } else {
            Vec::new()
        },
    );
    res?;
    Ok(())
}

/// Knocks on a room held by other servers: `make_knock`/`send_knock`, then records the knock
/// (with the room preview the resident server sent) so the user's `/sync` shows it.
pub async fn knock_remote(
    s: &Services,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    servers: &[String],
    reason: Option<String>,
) -> Result<OwnedEventId> {
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::not_found("no known servers (federation disabled)"))?;
    let mut last_err = Error::not_found("no server in the room could be reached");
    for server in servers.iter().filter(|srv| !s.core.is_local(srv)) {
        let path = format!(
            "/_matrix/federation/v1/make_knock/{}/{}?{}",
            enc(room.as_str()),
            enc(user.as_str()),
            ver_query()
        );
        let resp = match fed.client.request("GET", server, &path, None).await {
            Ok(r) => r,
            Err(e) => {
                last_err = e.into();
                continue;
            }
        };
        let Some(version) = resp
            .get("room_version")
            .and_then(|v| v.as_str())
            .and_then(RoomVersion::parse)
            .filter(|v| !v.is_linearized())
        else {
            last_err = Error::IncompatibleRoomVersion("unsupported room version".into());
            continue;
        };
        let Some(template) = resp.get("event").cloned() else {
            continue;
        };
        let extra = match &reason {
            Some(r) => json!({"reason": r}),
            None => Value::Null,
        };
        let knock = sign_template(s, server, template, version, user, "knock", &extra)?;
        let path = format!(
            "/_matrix/federation/v1/send_knock/{}/{}",
            enc(room.as_str()),
            enc(knock.event_id().as_str())
        );
        match fed
            .client
            .request("PUT", server, &path, Some(&knock.to_federation_value()))
            .await
        {
            Ok(resp) => {
                let stripped = resp
                    .get("knock_room_state")
                    .and_then(|v| v.as_array())
                    .cloned()
                    .unwrap_or_default();
                record_remote_membership(s, &knock, version, stripped).await?;
                return Ok(knock.owned_event_id());
            }
            Err(e) => last_err = e.into(),
        }
    }
    Err(last_err)
}
