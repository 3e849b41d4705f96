//! Leaves across servers: `make_leave`/`send_leave` served to a leaving server, and a local
//! user leaving (rejecting an invite to) a room we hold no copy of.

use super::*;

pub async fn make_leave(
    s: Data,
    signed: Signed,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (room, user) = path.into_inner();
    let v = make_membership(&s, &signed.origin, &room, &user, "leave", None).await?;
    Ok(HttpResponse::Ok().json(v))
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
        return crate::federation::linearized::participant::decline_invite(s, room, user).await;
    }
    let fed = s
        .federation()
        .cloned()
        .ok_or_else(|| Error::forbidden("federation is disabled"))?;
    let mut last_err = Error::not_found("no server in the room could be reached");
    for server in servers.iter().filter(|srv| !s.core.is_local(srv)) {
        let resp = match ask_template(&fed, server, "leave", room, user).await {
            Ok(r) => r,
            Err(e) => {
                last_err = e;
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
        match send_signed(&fed, server, "v2/send_leave", room, &leave, "").await {
            Ok(_) => {
                record_remote_membership(s, &leave, version, Vec::new()).await?;
                return Ok(());
            }
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// Records locally that a user declined a remote invite (or withdrew a knock) nobody could be
/// told about, through the room's actor (`DeclineOutOfBand`).
pub async fn forget_remote_invite(
    s: &Services,
    room: &OwnedRoomId,
    user: &OwnedUserId,
) -> Result<()> {
    let msg = crate::rooms::messages::DeclineOutOfBand {
        user_id: user.to_string(),
    };
    s.rooms.send(room, msg).await?
}
