//! Who may read what: membership lookups for the client API's read endpoints (and
//! deactivation). Alias resolution, which may ask another server, is the client API's
//! (`client_api/directory.rs`).

use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::rooms::{self, MembershipRow};

/// The caller's membership row, whatever it is.
pub async fn membership(
    core: &Core,
    room_id: &str,
    user_id: &str,
) -> Result<Option<MembershipRow>> {
    let (r, u) = (room_id.to_owned(), user_id.to_owned());
    Ok(core
        .db
        .read(move |c| rooms::get_membership(c, &r, &u))
        .await?)
}

/// Requires the caller to be joined to the room.
pub async fn require_joined(core: &Core, room_id: &str, user_id: &str) -> Result<MembershipRow> {
    match membership(core, room_id, user_id).await? {
        Some(m) if m.membership == "join" => Ok(m),
        _ => Err(Error::forbidden("you are not joined to this room")),
    }
}

/// Whether this server holds a copy of the room (it was created here, or a local user
/// joined it): a membership change for a room held only elsewhere goes over federation.
pub async fn held_here(core: &Core, room_id: &str) -> Result<bool> {
    let r = room_id.to_owned();
    Ok(core
        .db
        .read(move |c| rooms::get_room(c, &r))
        .await?
        .is_some())
}
