//! Rooms: list (with member, event and state counts), show, delete (every local member
//! leaves; aliases and the directory entry go; history is purged on request), and purge
//! history before a point.

use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId};
use serde::Serialize;
use serde_json::json;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::services::Services;
use crate::storage::admin::{self as astore, RoomSummary};
use crate::storage::rooms as rstore;

pub async fn list(core: &Core) -> Result<Vec<RoomSummary>> {
    let server = core.server_name().to_owned();
    Ok(core
        .db
        .read(move |c| astore::list_rooms(c, &server))
        .await?)
}

#[derive(Debug, Serialize)]
pub struct RoomDetail {
    #[serde(flatten)]
    pub summary: RoomSummary,
    pub members: Vec<serde_json::Value>,
    pub aliases: Vec<String>,
}

pub fn parse_room_id(room: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(room).map_err(|e| Error::invalid_param(format!("not a room ID: {e}")))
}

pub async fn show(core: &Core, room_id: &str) -> Result<RoomDetail> {
    let (r, server) = (room_id.to_owned(), core.server_name().to_owned());
    let (summary, members, aliases) = core
        .db
        .read(move |c| {
            Ok((
                astore::room_summary(c, &r, &server)?,
                astore::room_members(c, &r)?,
                rstore::aliases_for_room(c, &r)?,
            ))
        })
        .await?;
    let summary = summary.ok_or_else(|| Error::not_found("no such room"))?;
    Ok(RoomDetail {
        summary,
        members: members
            .into_iter()
            .map(|(u, m)| json!({"user_id": u, "membership": m}))
            .collect(),
        aliases,
    })
}

pub use crate::rooms::messages::PurgePoint;

/// Deletes the room's non-state events before the point, through the room's actor (which
/// runs it after its pending batch, fenced in a cluster); returns how many.
pub async fn purge(s: &Services, room_id: &str, point: PurgePoint) -> Result<usize> {
    let room = known_room(&s.core, room_id).await?;
    let purged = s
        .rooms
        .send(&room, crate::rooms::messages::PurgeHistory { point })
        .await??;
    purged_or_not_found(room_id, purged)
}

/// The same from the offline CLI (`weft room purge`), a process of its own with no room
/// actors: it writes on the room's writer directly, so run it with the server stopped.
pub async fn purge_offline(core: &Core, room_id: &str, point: PurgePoint) -> Result<usize> {
    let room = known_room(core, room_id).await?;
    let r = room.to_string();
    let purged = core
        .db
        .write(room.as_str(), move |c| {
            crate::rooms::persist::purge_history_job(c, &r, &point)
        })
        .await?;
    purged_or_not_found(room_id, purged)
}

async fn known_room(core: &Core, room_id: &str) -> Result<OwnedRoomId> {
    let room = parse_room_id(room_id)?;
    let r = room.to_string();
    let exists = core
        .db
        .read(move |c| rstore::get_room(c, &r))
        .await?
        .is_some();
    if !exists {
        return Err(Error::not_found("no such room"));
    }
    Ok(room)
}

fn purged_or_not_found(room_id: &str, purged: Option<usize>) -> Result<usize> {
    match purged {
        Some(n) => {
            tracing::info!(room = room_id, purged = n, "purged room history");
            Ok(n)
        }
        None => Err(Error::not_found("no such event in the room")),
    }
}

/// A local user leaves a room (through the room's actor).
pub async fn leave(s: &Services, room_id: &str, user_id: &str) -> Result<()> {
    let room = parse_room_id(room_id)?;
    let user = OwnedUserId::try_from(user_id)
        .map_err(|e| Error::internal(format!("stored user ID: {e}")))?;
    s.rooms
        .send_member(
            &room,
            &user,
            user.as_str(),
            json!({"membership": "leave"}),
            None,
        )
        .await?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Deleted {
    pub left: Vec<String>,
    pub aliases_removed: Vec<String>,
    pub purged_events: usize,
}

/// Evacuates a room: every local member leaves, its aliases and directory entry are
/// removed, and with `purge` its history goes too.
pub async fn delete(s: &Arc<Services>, room_id: &str, with_history: bool) -> Result<Deleted> {
    let detail = show(&s.core, room_id).await?;
    let suffix = format!(":{}", s.server_name());
    let mut left = Vec::new();
    for m in &detail.members {
        let (Some(u), Some(ms)) = (m["user_id"].as_str(), m["membership"].as_str()) else {
            continue;
        };
        if u.ends_with(&suffix) && matches!(ms, "join" | "invite" | "knock") {
            leave(s, room_id, u).await?;
            left.push(u.to_owned());
        }
    }
    let (r, aliases) = (room_id.to_owned(), detail.aliases.clone());
    s.core
        .db
        .write(room_id, move |c| {
            for a in &aliases {
                rstore::delete_alias(c, a)?;
            }
            rstore::set_public(c, &r, false)
        })
        .await?;
    let purged_events = if with_history {
        purge(s, room_id, PurgePoint::Ts(i64::MAX))
            .await
            .or_else(|e| match e {
                Error::NotFound(_) => Ok(0),
                e => Err(e),
            })?
    } else {
        0
    };
    tracing::info!(
        room = room_id,
        left = left.len(),
        purged_events,
        "room deleted"
    );
    Ok(Deleted {
        left,
        aliases_removed: detail.aliases,
        purged_events,
    })
}
