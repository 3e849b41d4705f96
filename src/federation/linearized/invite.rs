//! `POST /invite/{txnId}` in LM rooms (§9.3, §10).
//!
//! * As the invitee's server: a complete invite PDU from the room's hub, for one of our users.
//!   Checked (room version, shape, both signature layers, hashes), signed by us, recorded so
//!   the user's `/sync` shows it, and returned under both `event` ([E]) and `pdu` ([D]).
//! * As the hub, the draft's variant: a participant's invite *LPDU*, for a user of a server
//!   not in the room. The hub checks and completes it, sends it to the target's server, and
//!   answers with the appended event.

use actix_web::{HttpResponse, web};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};
use weft_protocol::{Pdu, RoomVersion, builder};

use crate::error::{Error, Result};
use crate::federation::FederationOf;
use crate::federation::auth::Signed;
use crate::federation::inbound::verify;
use crate::rooms::linearized::{FanoutChange, hub_of};
use crate::services::Services;

#[derive(Deserialize)]
pub struct InviteBody {
    room_version: String,
    event: Value,
    #[serde(default)]
    invite_room_state: Vec<Value>,
}

pub async fn invite(
    s: web::Data<Services>,
    signed: Signed,
    _txn: web::Path<String>,
) -> Result<HttpResponse> {
    let body: InviteBody = signed.json()?;
    match RoomVersion::parse(&body.room_version) {
        Some(RoomVersion::Linearized) => {}
        Some(v) => {
            return Err(Error::IncompatibleRoomVersion(format!(
                "room version {v} is not Linearized Matrix: use /_matrix/federation/v2/invite"
            )));
        }
        None => {
            return Err(Error::UnsupportedRoomVersion(format!(
                "room version {} is not supported",
                body.room_version
            )));
        }
    }
    let room = body
        .event
        .get("room_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json("the invite names no room_id"))?
        .to_owned();
    if super::is_lpdu(&body.event) {
        // The draft's participant invite: we must be the hub.
        super::hub::require_hub(&s, &room).await?;
        if body
            .event
            .pointer("/content/membership")
            .and_then(Value::as_str)
            != Some("invite")
        {
            return Err(Error::bad_json("not an invite"));
        }
        let (_, result) = super::hub::submit_lpdu(
            &s,
            &signed.origin,
            &room,
            &body.event,
            FanoutChange::default(),
        )
        .await;
        let pdu = result?.pdu.to_federation_value();
        return Ok(HttpResponse::Ok().json(json!({"event": pdu, "pdu": pdu})));
    }
    let pdu = verify::parse(&body.event, RoomVersion::Linearized).map_err(Error::BadJson)?;
    let target = pdu.state_key().unwrap_or_default().to_owned();
    if pdu.kind_str() != "m.room.member" || pdu.membership().as_deref() != Some("invite") {
        return Err(Error::bad_json("not an invite"));
    }
    let target_id =
        OwnedUserId::try_from(target.as_str()).map_err(|_| Error::bad_json("invalid invitee"))?;
    if !s.core.is_local(target_id.server_name().as_str()) {
        return Err(Error::bad_json("the invitee is not a user of this server"));
    }
    // The hub sends invites, also for its participants' users.
    let hub = hub_of(pdu.room_id()).unwrap_or_default();
    if signed.origin != hub {
        return Err(Error::forbidden(format!(
            "invites to this room come from its hub {hub}, not {}",
            signed.origin
        )));
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
    let checked = verify::check_one_whole(&fed, pdu, RoomVersion::Linearized).await?;
    let mut obj = checked.pdu.json();
    builder::add_signature(
        &mut obj,
        RoomVersion::Linearized,
        s.server_name(),
        &s.core.key,
    )
    .map_err(|e| Error::internal(e.to_string()))?;
    let ours = Pdu::from_json_with_id(checked.pdu.owned_event_id(), obj, RoomVersion::Linearized)
        .map_err(|e| Error::internal(e.to_string()))?;
    crate::federation::membership::record_remote_membership(
        &s,
        &ours,
        RoomVersion::Linearized,
        body.invite_room_state,
    )
    .await?;
    tracing::info!(room = %room, invitee = %target, inviter = %ours.sender(), hub = %hub, "accepted an invite to a Linearized Matrix room");
    let v = ours.to_federation_value();
    Ok(HttpResponse::Ok().json(json!({"event": v, "pdu": v})))
}
