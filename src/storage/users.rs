//! Accounts: users, devices, access tokens (stored as SHA-256 hashes) and profiles.

use diesel::prelude::*;

use super::schema::{access_tokens, devices, users};
use super::{AnyConnection, StorageResult};

#[derive(Debug, Clone, Queryable)]
pub struct UserRow {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub deactivated: bool,
    pub created_ts: i64,
}

#[derive(Debug, Clone, Queryable)]
pub struct DeviceRow {
    pub user_id: String,
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub created_ts: i64,
    pub last_seen_ip: Option<String>,
}

/// Creates a user; `Ok(false)` if the ID is taken.
pub fn create_user(
    conn: &mut AnyConnection,
    user_id: &str,
    password_hash: Option<&str>,
    is_admin: bool,
    displayname: Option<&str>,
    now: i64,
) -> StorageResult<bool> {
    if get_user(conn, user_id)?.is_some() {
        return Ok(false);
    }
    diesel::insert_into(users::table)
        .values((
            users::user_id.eq(user_id),
            users::password_hash.eq(password_hash),
            users::is_admin.eq(is_admin),
            users::displayname.eq(displayname),
            users::avatar_url.eq(None::<String>),
            users::deactivated.eq(false),
            users::created_ts.eq(now),
        ))
        .execute(conn)?;
    Ok(true)
}

pub fn get_user(conn: &mut AnyConnection, user_id: &str) -> StorageResult<Option<UserRow>> {
    Ok(users::table
        .filter(users::user_id.eq(user_id))
        .first::<UserRow>(conn)
        .optional()?)
}

pub fn count_users(conn: &mut AnyConnection) -> StorageResult<i64> {
    Ok(users::table.count().get_result(conn)?)
}

pub fn set_password(conn: &mut AnyConnection, user_id: &str, hash: &str) -> StorageResult<()> {
    diesel::update(users::table.filter(users::user_id.eq(user_id)))
        .set(users::password_hash.eq(hash))
        .execute(conn)?;
    Ok(())
}

pub fn set_deactivated(conn: &mut AnyConnection, user_id: &str, on: bool) -> StorageResult<()> {
    diesel::update(users::table.filter(users::user_id.eq(user_id)))
        .set(users::deactivated.eq(on))
        .execute(conn)?;
    Ok(())
}

pub fn set_displayname(
    conn: &mut AnyConnection,
    user_id: &str,
    name: Option<&str>,
) -> StorageResult<()> {
    diesel::update(users::table.filter(users::user_id.eq(user_id)))
        .set(users::displayname.eq(name))
        .execute(conn)?;
    Ok(())
}

pub fn set_avatar_url(
    conn: &mut AnyConnection,
    user_id: &str,
    url: Option<&str>,
) -> StorageResult<()> {
    diesel::update(users::table.filter(users::user_id.eq(user_id)))
        .set(users::avatar_url.eq(url))
        .execute(conn)?;
    Ok(())
}

/// Creates the device if new (keeping an existing device's name unless a new one is given).
pub fn upsert_device(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    now: i64,
) -> StorageResult<bool> {
    let existing = get_device(conn, user_id, device_id)?;
    match existing {
        Some(_) => {
            if let Some(name) = display_name {
                set_device_name(conn, user_id, device_id, name)?;
            }
            Ok(false)
        }
        None => {
            diesel::insert_into(devices::table)
                .values((
                    devices::user_id.eq(user_id),
                    devices::device_id.eq(device_id),
                    devices::display_name.eq(display_name),
                    devices::last_seen_ts.eq(Some(now)),
                    devices::created_ts.eq(now),
                ))
                .execute(conn)?;
            Ok(true)
        }
    }
}

pub fn get_device(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<Option<DeviceRow>> {
    Ok(devices::table
        .filter(devices::user_id.eq(user_id))
        .filter(devices::device_id.eq(device_id))
        .first::<DeviceRow>(conn)
        .optional()?)
}

pub fn list_devices(conn: &mut AnyConnection, user_id: &str) -> StorageResult<Vec<DeviceRow>> {
    Ok(devices::table
        .filter(devices::user_id.eq(user_id))
        .order(devices::device_id.asc())
        .load::<DeviceRow>(conn)?)
}

/// Records when and from where a device was last seen (no-op for a deleted device).
pub fn set_last_seen(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    ts: i64,
    ip: &str,
) -> StorageResult<()> {
    diesel::update(
        devices::table
            .filter(devices::user_id.eq(user_id))
            .filter(devices::device_id.eq(device_id)),
    )
    .set((
        devices::last_seen_ts.eq(Some(ts)),
        devices::last_seen_ip.eq(Some(ip)),
    ))
    .execute(conn)?;
    Ok(())
}

pub fn set_device_name(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    name: &str,
) -> StorageResult<()> {
    diesel::update(
        devices::table
            .filter(devices::user_id.eq(user_id))
            .filter(devices::device_id.eq(device_id)),
    )
    .set(devices::display_name.eq(name))
    .execute(conn)?;
    Ok(())
}

/// Deletes a device and every token issued to it; returns the hashes of removed tokens.
pub fn delete_device(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<Vec<String>> {
    let hashes: Vec<String> = access_tokens::table
        .filter(access_tokens::user_id.eq(user_id))
        .filter(access_tokens::device_id.eq(device_id))
        .select(access_tokens::token_hash)
        .load(conn)?;
    diesel::delete(
        access_tokens::table
            .filter(access_tokens::user_id.eq(user_id))
            .filter(access_tokens::device_id.eq(device_id)),
    )
    .execute(conn)?;
    diesel::delete(
        devices::table
            .filter(devices::user_id.eq(user_id))
            .filter(devices::device_id.eq(device_id)),
    )
    .execute(conn)?;
    Ok(hashes)
}

pub fn insert_token(
    conn: &mut AnyConnection,
    token_hash: &str,
    user_id: &str,
    device_id: &str,
    now: i64,
) -> StorageResult<()> {
    diesel::insert_into(access_tokens::table)
        .values((
            access_tokens::token_hash.eq(token_hash),
            access_tokens::user_id.eq(user_id),
            access_tokens::device_id.eq(device_id),
            access_tokens::created_ts.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// The user and device a token hash belongs to, with the user's admin flag.
pub fn lookup_token(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> StorageResult<Option<(String, String, bool)>> {
    let row: Option<(String, String)> = access_tokens::table
        .filter(access_tokens::token_hash.eq(token_hash))
        .select((access_tokens::user_id, access_tokens::device_id))
        .first(conn)
        .optional()?;
    let Some((user_id, device_id)) = row else {
        return Ok(None);
    };
    let user = get_user(conn, &user_id)?;
    Ok(match user {
        Some(u) if !u.deactivated => Some((user_id, device_id, u.is_admin)),
        _ => None,
    })
}

pub fn delete_token(conn: &mut AnyConnection, token_hash: &str) -> StorageResult<()> {
    diesel::delete(access_tokens::table.filter(access_tokens::token_hash.eq(token_hash)))
        .execute(conn)?;
    Ok(())
}

/// Deletes every token of a user; returns the removed hashes.
pub fn delete_all_tokens(conn: &mut AnyConnection, user_id: &str) -> StorageResult<Vec<String>> {
    let hashes: Vec<String> = access_tokens::table
        .filter(access_tokens::user_id.eq(user_id))
        .select(access_tokens::token_hash)
        .load(conn)?;
    diesel::delete(access_tokens::table.filter(access_tokens::user_id.eq(user_id)))
        .execute(conn)?;
    Ok(hashes)
}
