//! Key backup rows: a user's backup versions and the session keys stored in each. The
//! caller (`crate::key_backup`) decides which copy of a key to keep; these functions only
//! read and write rows, always inside one write job per request.

use diesel::prelude::*;

use super::schema::{backup_keys, backup_versions};
use super::{AnyConnection, StorageResult};

#[derive(Debug, Clone, Queryable)]
pub struct VersionRow {
    pub user_id: String,
    pub version: i64,
    pub algorithm: String,
    pub auth_data: String,
    pub etag: i64,
    pub deleted: bool,
}

#[derive(Debug, Clone, Queryable)]
pub struct KeyRow {
    pub user_id: String,
    pub version: i64,
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    pub session_data: String,
}

/// Creates the next version (numbers are never reused) and returns its number.
pub fn create_version(
    conn: &mut AnyConnection,
    user_id: &str,
    algorithm: &str,
    auth_data: &str,
) -> StorageResult<i64> {
    let max: Option<i64> = backup_versions::table
        .filter(backup_versions::user_id.eq(user_id))
        .select(diesel::dsl::max(backup_versions::version))
        .first(conn)?;
    let version = max.unwrap_or(0) + 1;
    diesel::insert_into(backup_versions::table)
        .values((
            backup_versions::user_id.eq(user_id),
            backup_versions::version.eq(version),
            backup_versions::algorithm.eq(algorithm),
            backup_versions::auth_data.eq(auth_data),
            backup_versions::etag.eq(0i64),
            backup_versions::deleted.eq(false),
        ))
        .execute(conn)?;
    Ok(version)
}

/// The newest version that is not deleted.
pub fn current_version(
    conn: &mut AnyConnection,
    user_id: &str,
) -> StorageResult<Option<VersionRow>> {
    Ok(backup_versions::table
        .filter(backup_versions::user_id.eq(user_id))
        .filter(backup_versions::deleted.eq(false))
        .order(backup_versions::version.desc())
        .first::<VersionRow>(conn)
        .optional()?)
}

/// A version that is not deleted.
pub fn get_version(
    conn: &mut AnyConnection,
    user_id: &str,
    version: i64,
) -> StorageResult<Option<VersionRow>> {
    Ok(backup_versions::table
        .filter(backup_versions::user_id.eq(user_id))
        .filter(backup_versions::version.eq(version))
        .filter(backup_versions::deleted.eq(false))
        .first::<VersionRow>(conn)
        .optional()?)
}

pub fn update_auth_data(
    conn: &mut AnyConnection,
    user_id: &str,
    version: i64,
    auth_data: &str,
) -> StorageResult<()> {
    diesel::update(
        backup_versions::table
            .filter(backup_versions::user_id.eq(user_id))
            .filter(backup_versions::version.eq(version)),
    )
    .set(backup_versions::auth_data.eq(auth_data))
    .execute(conn)?;
    Ok(())
}

/// Marks a version deleted and drops its keys; `false` if there was no such version.
pub fn delete_version(
    conn: &mut AnyConnection,
    user_id: &str,
    version: i64,
) -> StorageResult<bool> {
    let n = diesel::update(
        backup_versions::table
            .filter(backup_versions::user_id.eq(user_id))
            .filter(backup_versions::version.eq(version))
            .filter(backup_versions::deleted.eq(false)),
    )
    .set(backup_versions::deleted.eq(true))
    .execute(conn)?;
    delete_keys(conn, user_id, version, None, None)?;
    Ok(n > 0)
}

/// Drops every version and key of a user (account deactivation).
pub fn delete_all(conn: &mut AnyConnection, user_id: &str) -> StorageResult<()> {
    diesel::update(backup_versions::table.filter(backup_versions::user_id.eq(user_id)))
        .set(backup_versions::deleted.eq(true))
        .execute(conn)?;
    diesel::delete(backup_keys::table.filter(backup_keys::user_id.eq(user_id))).execute(conn)?;
    Ok(())
}

/// Bumps a version's etag (after its keys changed) and returns the new value.
pub fn bump_etag(conn: &mut AnyConnection, user_id: &str, version: i64) -> StorageResult<i64> {
    diesel::update(
        backup_versions::table
            .filter(backup_versions::user_id.eq(user_id))
            .filter(backup_versions::version.eq(version)),
    )
    .set(backup_versions::etag.eq(backup_versions::etag + 1))
    .execute(conn)?;
    Ok(backup_versions::table
        .filter(backup_versions::user_id.eq(user_id))
        .filter(backup_versions::version.eq(version))
        .select(backup_versions::etag)
        .first(conn)?)
}

pub fn count_keys(conn: &mut AnyConnection, user_id: &str, version: i64) -> StorageResult<i64> {
    Ok(backup_keys::table
        .filter(backup_keys::user_id.eq(user_id))
        .filter(backup_keys::version.eq(version))
        .count()
        .get_result(conn)?)
}

/// Keys of a version, optionally narrowed to a room and a session.
pub fn get_keys(
    conn: &mut AnyConnection,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> StorageResult<Vec<KeyRow>> {
    let mut q = backup_keys::table
        .filter(backup_keys::user_id.eq(user_id))
        .filter(backup_keys::version.eq(version))
        .into_boxed();
    if let Some(r) = room_id {
        q = q.filter(backup_keys::room_id.eq(r.to_owned()));
    }
    if let Some(sid) = session_id {
        q = q.filter(backup_keys::session_id.eq(sid.to_owned()));
    }
    Ok(
        q.order((backup_keys::room_id.asc(), backup_keys::session_id.asc()))
            .load::<KeyRow>(conn)?,
    )
}

/// Writes (or replaces) one key.
pub fn put_key(conn: &mut AnyConnection, row: &KeyRow) -> StorageResult<()> {
    diesel::delete(
        backup_keys::table
            .filter(backup_keys::user_id.eq(&row.user_id))
            .filter(backup_keys::version.eq(row.version))
            .filter(backup_keys::room_id.eq(&row.room_id))
            .filter(backup_keys::session_id.eq(&row.session_id)),
    )
    .execute(conn)?;
    diesel::insert_into(backup_keys::table)
        .values((
            backup_keys::user_id.eq(&row.user_id),
            backup_keys::version.eq(row.version),
            backup_keys::room_id.eq(&row.room_id),
            backup_keys::session_id.eq(&row.session_id),
            backup_keys::first_message_index.eq(row.first_message_index),
            backup_keys::forwarded_count.eq(row.forwarded_count),
            backup_keys::is_verified.eq(row.is_verified),
            backup_keys::session_data.eq(&row.session_data),
        ))
        .execute(conn)?;
    Ok(())
}

/// Deletes keys of a version, optionally narrowed; returns how many went.
pub fn delete_keys(
    conn: &mut AnyConnection,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> StorageResult<usize> {
    let mut q = diesel::delete(backup_keys::table)
        .filter(backup_keys::user_id.eq(user_id))
        .filter(backup_keys::version.eq(version))
        .into_boxed();
    if let Some(r) = room_id {
        q = q.filter(backup_keys::room_id.eq(r.to_owned()));
    }
    if let Some(sid) = session_id {
        q = q.filter(backup_keys::session_id.eq(sid.to_owned()));
    }
    Ok(q.execute(conn)?)
}
