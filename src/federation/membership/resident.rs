//! The resident side of a membership handshake: a template built on our current state for
//! a remote user (`make_join`/`make_leave`/`make_knock`), and the signed event taken back
//! through the room actor like any received PDU, then delivered to the room's other servers.

use super::*;

/// Builds a membership template for a remote user on our current state.
pub(super) async fn make_membership(
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
        crate::federation::linearized::hub::require_hub(s, room).await?;
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
                .and_then(|e| weft_protocol::pdu::reference_hash(&e.json(), snap.version).ok())
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

/// Checks and appends a signed membership event sent by the user's server.
pub(super) async fn accept_membership(
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
    let checked = verify::check_one_whole(&fed, pdu, version).await?;
    let outcome = s
        .rooms
        .admit(
            &room_id,
            InboundPdus {
                pdus: vec![(std::sync::Arc::new(checked.pdu.clone()), None)],
                local: true,
                version: None,
                checked_events: Vec::new(),
                txn_record: None,
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
