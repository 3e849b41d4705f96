//! Users: list, show, create, deactivate, reset a password, grant or revoke admin.

use serde::Serialize;

use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::{admin as astore, rooms as rstore, users as ustore};

#[derive(Debug, Clone, Serialize)]
pub struct UserInfo {
    pub user_id: String,
    pub admin: bool,
    pub deactivated: bool,
    pub displayname: Option<String>,
    pub created_ts: i64,
    /// Only in `show`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_rooms: Option<Vec<String>>,
}

fn info(u: ustore::UserRow) -> UserInfo {
    UserInfo {
        user_id: u.user_id,
        admin: u.is_admin,
        deactivated: u.deactivated,
        displayname: u.displayname,
        created_ts: u.created_ts,
        devices: None,
        joined_rooms: None,
    }
}

/// A local user ID from `@local:server` or a bare localpart; `M_INVALID_PARAM` otherwise.
pub fn local_user_id(core: &Core, user: &str) -> Result<String> {
    let user = user.trim();
    if user.starts_with('@') {
        let id = ruma::UserId::parse(user)
            .map_err(|e| Error::invalid_param(format!("not a user ID: {e}")))?;
        if !core.is_local(id.server_name().as_str()) {
            return Err(Error::invalid_param("not a user of this server"));
        }
        Ok(id.to_string())
    } else {
        crate::accounts::validate_localpart(user, core.server_name())
            .map_err(|e| Error::invalid_param(e.to_string()))?;
        Ok(format!("@{user}:{}", core.server_name()))
    }
}

pub async fn list(core: &Core) -> Result<Vec<UserInfo>> {
    let rows = core.db.read(astore::list_users).await?;
    Ok(rows.into_iter().map(info).collect())
}

pub async fn show(core: &Core, user_id: &str) -> Result<UserInfo> {
    let u = user_id.to_owned();
    let (row, devices, rooms) = core
        .db
        .read(move |c| {
            let row = ustore::get_user(c, &u)?;
            let devices = ustore::list_devices(c, &u)?.len();
            let rooms: Vec<String> = rstore::rooms_for_user(c, &u)?
                .into_iter()
                .filter(|m| m.membership == "join")
                .map(|m| m.room_id)
                .collect();
            Ok((row, devices, rooms))
        })
        .await?;
    let row = row.ok_or_else(|| Error::not_found("no such user"))?;
    let mut i = info(row);
    i.devices = Some(devices);
    i.joined_rooms = Some(rooms);
    Ok(i)
}

/// Creates a user (through [`crate::accounts::create_user`], which hashes the password).
pub async fn create(core: &Core, localpart: &str, password: String, admin: bool) -> Result<String> {
    if password.is_empty() {
        return Err(Error::invalid_param("the password must not be empty"));
    }
    crate::accounts::create_user(core, &localpart.to_lowercase(), Some(password), admin).await
}

async fn require_user(core: &Core, user_id: &str) -> Result<ustore::UserRow> {
    let u = user_id.to_owned();
    core.db
        .read(move |c| ustore::get_user(c, &u))
        .await?
        .ok_or_else(|| Error::not_found("no such user"))
}

/// Marks a user deactivated, drops their password and every access token. Returns the
/// removed token hashes (the server evicts them from its cache). Leaving their rooms is
/// done by the server ([`super::sweep_deactivated`]).
pub async fn deactivate(core: &Core, user_id: &str) -> Result<Vec<String>> {
    require_user(core, user_id).await?;
    let u = user_id.to_owned();
    let hashes = core
        .db
        .write(user_id, move |c| {
            astore::deactivate(c, &u)?;
            ustore::delete_all_tokens(c, &u)
        })
        .await?;
    tracing::info!(user = user_id, "user deactivated");
    Ok(hashes)
}

/// Sets a new password and logs the user out everywhere. Returns the removed token hashes.
pub async fn reset_password(core: &Core, user_id: &str, password: String) -> Result<Vec<String>> {
    if password.is_empty() {
        return Err(Error::invalid_param("the password must not be empty"));
    }
    let row = require_user(core, user_id).await?;
    if row.deactivated {
        return Err(Error::BadState("the user is deactivated".into()));
    }
    let hash = crate::accounts::hash_password(core, password).await?;
    let u = user_id.to_owned();
    let hashes = core
        .db
        .write(user_id, move |c| {
            ustore::set_password(c, &u, &hash)?;
            ustore::delete_all_tokens(c, &u)
        })
        .await?;
    tracing::info!(user = user_id, "password reset");
    Ok(hashes)
}

pub async fn set_admin(core: &Core, user_id: &str, admin: bool) -> Result<()> {
    require_user(core, user_id).await?;
    let u = user_id.to_owned();
    core.db
        .write(user_id, move |c| astore::set_admin(c, &u, admin))
        .await?;
    tracing::info!(user = user_id, admin, "admin flag changed");
    Ok(())
}
