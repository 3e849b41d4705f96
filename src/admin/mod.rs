//! Operations an operator runs: on users, rooms, keys and the database. One implementation
//! behind both the admin API (`/_weft/admin/v1/...`, for admins of a running server) and the
//! `weft` admin commands (which open the configuration directly, whether or not the server
//! runs).
//!
//! What needs a room actor (making a deactivated user leave their rooms, evacuating a room)
//! runs only inside the server: a second process must never write events to a room whose
//! actor lives elsewhere. A command-line deactivation therefore marks the user and removes
//! their tokens at once, and the server makes them leave their rooms ([`sweep_deactivated`],
//! at start-up and every few seconds).

pub mod db;
pub mod rooms;
pub mod status;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use crate::services::Services;

/// How often the server looks for deactivated users still in rooms.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Makes deactivated users leave the rooms they are still in (and forgets their cached
/// tokens). Runs in the server.
pub async fn sweep_deactivated(s: &Arc<Services>) {
    let server = s.server_name().to_owned();
    let pending = match s
        .core
        .db
        .read(move |c| crate::storage::admin::deactivated_still_in_rooms(c, &server))
        .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "could not look for deactivated users");
            return;
        }
    };
    for (user_id, room_id) in pending {
        s.tokens.forget_user(&user_id);
        if let Err(e) = rooms::leave(s, &room_id, &user_id).await {
            tracing::warn!(user = %user_id, room = %room_id, error = %e, "deactivated user could not leave a room");
        } else {
            tracing::info!(user = %user_id, room = %room_id, "deactivated user left a room");
        }
    }
}

/// Our signing key and retired keys, as the operator sees them.
pub fn keys_json(core: &crate::core::Core) -> serde_json::Value {
    let old: serde_json::Map<String, serde_json::Value> = core
        .old_keys
        .iter()
        .map(|k| {
            (
                k.key_id.clone(),
                serde_json::json!({"key": k.key, "expired_ts": k.expired_ts}),
            )
        })
        .collect();
    serde_json::json!({
        "server_name": core.server_name(),
        "verify_keys": { core.key.key_id(): { "key": core.key.public_key_b64() } },
        "old_verify_keys": old,
        "key_path": core.config.signing_key_path().display().to_string(),
    })
}
