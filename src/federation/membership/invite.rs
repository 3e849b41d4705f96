//! Invites across servers: an invite for one of our users (checked against the room's state
//! when we hold the room, counter-signed, recorded apart from memberships when we do not),
//! and a local user inviting a remote one (the invitee's server signs first).

use super::*;

#[derive(Deserialize)]
pub struct InviteBody {
    room_version: String,
    event: Value,
    #[serde(default)]
    invite_room_state: Vec<Value>,
}

/// Records an invite (or knock, or our leave a remote server took) of a local user to a room
/// we may hold no copy of, through the room's actor (`RecordOutOfBand`). Such an out-of-band
/// membership never replaces a join (or ban) held in a room we know: that one changes only
/// through the room's events (403 `M_FORBIDDEN` otherwise).
pub(crate) async fn record_remote_membership(
    s: &Services,
    pdu: &Pdu,
    version: RoomVersion,
    stripped: Vec<Value>,
) -> Result<()> {
    let room_id = OwnedRoomId::try_from(pdu.room_id().as_str())
        .map_err(|_| Error::bad_json("invalid room ID"))?;
    let msg = crate::rooms::messages::RecordOutOfBand {
        pdu: std::sync::Arc::new(pdu.clone()),
        version,
        stripped,
    };
    s.rooms.send(&room_id, msg).await?
}

/// An invite for a room we hold: checked against the room's current state like any event
/// (an invite of a joined or banned user, or from a sender who may not invite, is 403
/// `M_FORBIDDEN`). `false` when we hold no copy of the room.
pub(super) async fn check_invite_against_room(
    s: &Services,
    pdu: &Pdu,
    version: RoomVersion,
) -> Result<bool> {
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
    let checked = verify::check_one_whole(&fed, pdu, version).await?;
    let known = check_invite_against_room(&s, &checked.pdu, version).await?;
    let mut obj = checked.pdu.json();
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
            pdus: vec![(std::sync::Arc::new(signed_pdu.clone()), None)],
            local: false,
            version: None,
            checked_events: Vec::new(),
            txn_record: None,
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

/// Invites a remote user to a room we are in: the invitee's server signs the invite first.
pub async fn invite_remote(
    s: &Services,
    room: &OwnedRoomId,
    sender: &OwnedUserId,
    target: &OwnedUserId,
    reason: Option<String>,
) -> Result<OwnedEventId> {
    if let Some(id) =
        crate::federation::linearized::participant::invite(s, room, sender, target, reason.clone())
            .await?
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
    let obj = signed_back.json();
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
                pdus: vec![(std::sync::Arc::new(signed_back), None)],
                local: true,
                version: None,
                checked_events: Vec::new(),
                txn_record: None,
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
