//! Knocks across servers: `make_knock`/`send_knock` served to a knocking server, and a local
//! user knocking on a room held elsewhere (recorded with the room preview the resident
//! server sent, so the user's `/sync` shows it).

use super::*;

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

/// Knocks on a room held by other servers: `make_knock`/`send_knock`, then records the knock
/// (with the room preview the resident server sent) so the user's `/sync` shows it.
pub async fn knock_remote(
    s: &Services,
    room: &OwnedRoomId,
    user: &OwnedUserId,
    servers: &[String],
    reason: Option<String>,
) -> Result<OwnedEventId> {
    let fed = outbound(s)?;
    let mut last_err = Error::not_found("no server in the room could be reached");
    for server in servers.iter().filter(|srv| !s.core.is_local(srv)) {
        let resp = match ask_template(&fed, server, "knock", room, user).await {
            Ok(r) => r,
            Err(e) => {
                last_err = e;
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
        match send_signed(&fed, server, "v1/send_knock", room, &knock, "").await {
            Ok(resp) => {
                let stripped = resp
                    .get("knock_room_state")
                    .and_then(|v| v.as_array())
                    .cloned()
                    .unwrap_or_default();
                record_remote_membership(s, &knock, version, stripped).await?;
                return Ok(knock.owned_event_id());
            }
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}
