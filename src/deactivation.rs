//! Leaving rooms and deactivating accounts: the service functions behind `POST /leave`,
//! `POST /account/deactivate` and the admin API's deactivation (which calls
//! [`deactivate`] too, so both paths do exactly the same).
//!
//! Deactivation, in this order:
//! 1. mark the account deactivated (from here on its tokens resolve to nothing and a login
//!    answers 403 `M_USER_DEACTIVATED`), and drop its tokens from the token cache;
//! 2. delete every device (with its tokens, device keys, one-time and fallback keys and
//!    pending to-device messages; each deletion is a device-list change peers are told of),
//!    the cross-signing keys, the key backup and the pushers (with their queued pushes);
//! 3. leave every room the user is joined to, invited to or knocking on (a room that
//!    refuses, e.g. because its server is down, is logged and skipped: the account stays
//!    deactivated).
//!
//! The account row stays (user IDs are never reused).

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::json;

use crate::error::{Error, Result};
use crate::rooms::access;
use crate::services::Services;
use crate::storage::{backup, e2ee as e2ee_store, rooms, users};

/// Leaves a room (or declines an invite, or withdraws a knock). Leaving a room one has
/// already left is not an error; a room one was never in is 404.
pub async fn leave_room(
    s: &Services,
    room_id: &OwnedRoomId,
    user_id: &OwnedUserId,
    reason: Option<String>,
) -> Result<()> {
    let current = access::membership(&s.core, room_id.as_str(), user_id.as_str()).await?;
    let local_room = access::held_here(&s.core, room_id.as_str()).await?;
    if !local_room
        && let Some(m) = &current
        && matches!(m.membership.as_str(), "invite" | "knock")
    {
        // Declining an invite to a room held elsewhere: tell the inviting server.
        let servers: Vec<String> = m
            .sender
            .split_once(':')
            .map(|(_, srv)| vec![srv.to_owned()])
            .unwrap_or_default();
        if let Err(e) = s.remote()?.leave(s, room_id, user_id, &servers).await {
            tracing::info!(room = %room_id, error = %e, "could not reach the inviting server; declining locally");
            s.remote()?.forget_invite(s, room_id, user_id).await?;
        }
        return Ok(());
    }
    match current.as_ref().map(|m| m.membership.as_str()) {
        Some("join" | "invite" | "knock") => {
            s.rooms
                .send_member(
                    room_id,
                    user_id,
                    user_id.as_str(),
                    json!({"membership": "leave"}),
                    reason,
                )
                .await?;
            Ok(())
        }
        // Already out: leaving is idempotent.
        Some("leave" | "ban") => Ok(()),
        _ => Err(Error::not_found("you are not in this room")),
    }
}

/// What a deactivation did.
#[derive(Debug, Default)]
pub struct Deactivated {
    pub devices_removed: usize,
    pub rooms_left: usize,
    /// Rooms the leave could not be sent to (logged).
    pub rooms_failed: usize,
}

/// Deactivates a local account (see the module comment). Deactivating an account twice
/// is harmless; an unknown user is 404.
pub async fn deactivate(s: &Services, user_id: &OwnedUserId) -> Result<Deactivated> {
    let u = user_id.to_string();
    let hashes = s
        .core
        .db
        .write(user_id.as_str(), move |c| {
            if users::get_user(c, &u)?.is_none() {
                return Ok(None);
            }
            users::set_deactivated(c, &u, true)?;
            let hashes = users::delete_all_tokens(c, &u)?;
            e2ee_store::delete_cross_signing_keys(c, &u)?;
            backup::delete_all(c, &u)?;
            crate::storage::push::delete_pushers_of(c, &u)?;
            Ok(Some(hashes))
        })
        .await?
        .ok_or_else(|| Error::not_found("unknown user"))?;
    s.tokens.forget(&hashes);

    let u = user_id.to_string();
    let devices: Vec<String> = s
        .core
        .db
        .read(move |c| users::list_devices(c, &u))
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    let mut report = Deactivated {
        devices_removed: devices.len(),
        ..Default::default()
    };
    crate::devices::delete_devices(&s.core, &s.tokens, user_id.as_str(), devices).await?;

    let u = user_id.to_string();
    let memberships = s
        .core
        .db
        .read(move |c| rooms::rooms_for_user(c, &u))
        .await?;
    for m in memberships {
        if !matches!(m.membership.as_str(), "join" | "invite" | "knock") {
            continue;
        }
        let Ok(room_id) = OwnedRoomId::try_from(m.room_id.as_str()) else {
            continue;
        };
        match leave_room(s, &room_id, user_id, None).await {
            Ok(()) => report.rooms_left += 1,
            Err(e) => {
                report.rooms_failed += 1;
                tracing::warn!(user = %user_id, room = %room_id, error = %e, "deactivation: could not leave a room");
            }
        }
    }
    tracing::info!(user = %user_id, ?report, "deactivated account");
    Ok(report)
}
