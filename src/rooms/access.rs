//! Who may read what: membership lookups for the client API's read endpoints, and alias
//! resolution.

use ruma::OwnedRoomId;

use crate::error::{Error, Result};
use crate::services::Services;
use crate::storage::rooms::{self, MembershipRow};

/// The caller's membership row, whatever it is.
pub async fn membership(
    s: &Services,
    room_id: &str,
    user_id: &str,
) -> Result<Option<MembershipRow>> {
    let (r, u) = (room_id.to_owned(), user_id.to_owned());
    Ok(s.core
        .db
        .read(move |c| rooms::get_membership(c, &r, &u))
        .await?)
}

/// Requires the caller to be joined to the room.
pub async fn require_joined(s: &Services, room_id: &str, user_id: &str) -> Result<MembershipRow> {
    match membership(s, room_id, user_id).await? {
        Some(m) if m.membership == "join" => Ok(m),
        _ => Err(Error::forbidden("you are not joined to this room")),
    }
}

/// Resolves `!room:server` or `#alias:server` to a room ID (local aliases; remote aliases are
/// asked over federation by the caller when this answers `None`).
pub async fn resolve(s: &Services, id_or_alias: &str) -> Result<(OwnedRoomId, Vec<String>)> {
    if id_or_alias.starts_with('!') {
        let id = OwnedRoomId::try_from(id_or_alias)
            .map_err(|_| Error::invalid_param("invalid room ID"))?;
        return Ok((id, Vec::new()));
    }
    if !id_or_alias.starts_with('#') {
        return Err(Error::invalid_param("expected a room ID or alias"));
    }
    let alias = ruma::RoomAliasId::parse(id_or_alias)
        .map_err(|_| Error::invalid_param("invalid room alias"))?;
    if !s.core.is_local(alias.server_name().as_str()) {
        let fed = s
            .federation()
            .ok_or_else(|| Error::not_found("room alias not found"))?;
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            crate::net::enc(alias.as_str())
        );
        let resp = fed
            .client
            .request("GET", alias.server_name().as_str(), &path, None)
            .await?;
        let room_id = resp
            .get("room_id")
            .and_then(|r| r.as_str())
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| Error::Remote("bad directory answer".into()))?;
        let servers = resp
            .get("servers")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        return Ok((room_id, servers));
    }
    let a = alias.to_string();
    let found = s.core.db.read(move |c| rooms::get_alias(c, &a)).await?;
    match found {
        Some((room_id, _)) => Ok((
            OwnedRoomId::try_from(room_id).map_err(|e| Error::internal(e.to_string()))?,
            vec![s.server_name().to_owned()],
        )),
        None => Err(Error::not_found("room alias not found")),
    }
}
