//! Server-side key backup (`/room_keys`), as the spec's "Server-side key backups" section
//! describes. The server stores each user's backup versions (algorithm and `auth_data`,
//! both opaque) and, per version, one copy of each Megolm session key (`session_data`,
//! encrypted for the backup key, stored as given).
//!
//! * Versions are numbered per user, never reused (a deleted version keeps its row).
//!   "The current version" is the newest version not deleted; keys may be uploaded only to
//!   it (otherwise 403 `M_WRONG_ROOM_KEYS_VERSION` with the current version).
//! * Which of two copies of a session key to keep is the protocol rule
//!   `weft_protocol::key_backup::replaces`.
//! * Every change to a version's keys bumps its `etag`, so a client can tell whether
//!   another device changed the backup; answers to uploads and deletions carry the new
//!   `etag` and `count`.
//! * Each request is one write job on the user's shard, so the read-compare-write of a
//!   key upload is atomic with respect to the user's other requests.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use weft_protocol::key_backup::{self as rules, KeyMeta};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::backup::{self as store, KeyRow, VersionRow};
use crate::storage::{StorageError, StorageResult};

/// Room ID → session ID → `KeyBackupData`.
pub type Keys = BTreeMap<String, BTreeMap<String, Value>>;

/// `count` and `etag` of a version after a change.
pub struct Summary {
    pub count: i64,
    pub etag: String,
}

impl Summary {
    pub fn to_json(&self) -> Value {
        json!({"count": self.count, "etag": self.etag})
    }
}

/// Parses a version path or query value; a malformed one names no version (404).
pub fn parse_version(v: &str) -> Result<i64> {
    v.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::not_found(format!("unknown backup version {v}")))
}

fn check_version_body(algorithm: &Value, auth_data: &Value) -> Result<String> {
    let algorithm = algorithm
        .as_str()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::bad_json("algorithm must be a non-empty string"))?;
    if !auth_data.is_object() {
        return Err(Error::bad_json("auth_data must be an object"));
    }
    Ok(algorithm.to_owned())
}

pub async fn create_version(
    core: &Core,
    user_id: &str,
    algorithm: &Value,
    auth_data: &Value,
) -> Result<String> {
    let algorithm = check_version_body(algorithm, auth_data)?;
    let (u, auth) = (user_id.to_owned(), auth_data.to_string());
    let version = core
        .db
        .write(user_id, move |c| {
            store::create_version(c, &u, &algorithm, &auth)
        })
        .await?;
    Ok(version.to_string())
}

fn version_json(row: &VersionRow, count: i64) -> StorageResult<Value> {
    let auth: Value = serde_json::from_str(&row.auth_data)
        .map_err(|e| StorageError::Corrupt(format!("backup auth_data: {e}")))?;
    Ok(json!({
        "algorithm": row.algorithm,
        "auth_data": auth,
        "count": count,
        "etag": row.etag.to_string(),
        "version": row.version.to_string(),
    }))
}

/// The given version, or the current one; 404 `M_NOT_FOUND` when there is none.
pub async fn get_version(core: &Core, user_id: &str, version: Option<&str>) -> Result<Value> {
    let version = version.map(parse_version).transpose()?;
    let u = user_id.to_owned();
    let found = core
        .db
        .read(move |c| {
            let row = match version {
                Some(v) => store::get_version(c, &u, v)?,
                None => store::current_version(c, &u)?,
            };
            match row {
                Some(row) => {
                    let count = store::count_keys(c, &u, row.version)?;
                    Ok(Some(version_json(&row, count)?))
                }
                None => Ok(None),
            }
        })
        .await?;
    found.ok_or_else(|| Error::not_found("no backup found"))
}

/// Replaces a version's `auth_data`; the algorithm may not change, and a `version` in the
/// body must name the path's version.
pub async fn update_version(core: &Core, user_id: &str, version: &str, body: &Value) -> Result<()> {
    let v = parse_version(version)?;
    let algorithm = check_version_body(&body["algorithm"], &body["auth_data"])?;
    if let Some(named) = body.get("version")
        && named.as_str() != Some(version)
    {
        return Err(Error::invalid_param(
            "the version in the body does not match the path",
        ));
    }
    let (u, auth) = (user_id.to_owned(), body["auth_data"].to_string());
    core.db
        .write(user_id, move |c| {
            let Some(row) = store::get_version(c, &u, v)? else {
                return Ok(Err(Error::not_found("unknown backup version")));
            };
            if row.algorithm != algorithm {
                return Ok(Err(Error::invalid_param(
                    "the algorithm of a backup version cannot change",
                )));
            }
            store::update_auth_data(c, &u, v, &auth)?;
            Ok(Ok(()))
        })
        .await?
}

pub async fn delete_version(core: &Core, user_id: &str, version: &str) -> Result<()> {
    let v = parse_version(version)?;
    let u = user_id.to_owned();
    let deleted = core
        .db
        .write(user_id, move |c| store::delete_version(c, &u, v))
        .await?;
    if !deleted {
        return Err(Error::not_found("unknown backup version"));
    }
    Ok(())
}

/// Validates an upload: room IDs, and every `KeyBackupData`.
fn parse_upload(keys: &Keys) -> Result<Vec<(String, String, KeyMeta, String)>> {
    let mut out = Vec::new();
    for (room, sessions) in keys {
        ruma::RoomId::parse(room)
            .map_err(|_| Error::invalid_param(format!("invalid room ID {room}")))?;
        for (session, data) in sessions {
            if session.is_empty() {
                return Err(Error::invalid_param("empty session ID"));
            }
            let meta = rules::parse_key_data(data).map_err(Error::BadJson)?;
            out.push((
                room.clone(),
                session.clone(),
                meta,
                data["session_data"].to_string(),
            ));
        }
    }
    Ok(out)
}

/// Stores uploaded keys into the current version (keeping the better copy of each).
pub async fn put_keys(core: &Core, user_id: &str, version: &str, keys: Keys) -> Result<Summary> {
    let requested = parse_version(version)?;
    let upload = parse_upload(&keys)?;
    let u = user_id.to_owned();
    core.db
        .write(user_id, move |c| {
            match store::current_version(c, &u)? {
                None => return Ok(Err(Error::not_found("no backup version exists"))),
                Some(cur) if cur.version == requested => {}
                Some(cur) => {
                    return Ok(Err(Error::WrongRoomKeysVersion {
                        current_version: Some(cur.version.to_string()),
                    }));
                }
            }
            let mut changed = false;
            for (room, session, meta, data) in upload {
                let stored = store::get_keys(c, &u, requested, Some(&room), Some(&session))?;
                let keep_new = match stored.first() {
                    None => true,
                    Some(row) => rules::replaces(
                        &KeyMeta {
                            first_message_index: row.first_message_index,
                            forwarded_count: row.forwarded_count,
                            is_verified: row.is_verified,
                        },
                        &meta,
                    ),
                };
                if keep_new {
                    store::put_key(
                        c,
                        &KeyRow {
                            user_id: u.clone(),
                            version: requested,
                            room_id: room,
                            session_id: session,
                            first_message_index: meta.first_message_index,
                            forwarded_count: meta.forwarded_count,
                            is_verified: meta.is_verified,
                            session_data: data,
                        },
                    )?;
                    changed = true;
                }
            }
            summary(c, &u, requested, changed).map(Ok)
        })
        .await?
}

fn summary(
    c: &mut crate::storage::AnyConnection,
    user_id: &str,
    version: i64,
    changed: bool,
) -> StorageResult<Summary> {
    let etag = if changed {
        store::bump_etag(c, user_id, version)?
    } else {
        store::get_version(c, user_id, version)?
            .map(|v| v.etag)
            .unwrap_or(0)
    };
    Ok(Summary {
        count: store::count_keys(c, user_id, version)?,
        etag: etag.to_string(),
    })
}

fn key_json(row: &KeyRow) -> StorageResult<Value> {
    let data: Value = serde_json::from_str(&row.session_data)
        .map_err(|e| StorageError::Corrupt(format!("backup session_data: {e}")))?;
    Ok(json!({
        "first_message_index": row.first_message_index,
        "forwarded_count": row.forwarded_count,
        "is_verified": row.is_verified,
        "session_data": data,
    }))
}

/// Keys of a version, narrowed to a room and a session as asked, grouped as
/// `{room: {session: data}}`.
pub async fn get_keys(
    core: &Core,
    user_id: &str,
    version: &str,
    room_id: Option<String>,
    session_id: Option<String>,
) -> Result<BTreeMap<String, Map<String, Value>>> {
    let v = parse_version(version)?;
    let u = user_id.to_owned();
    let rows = core
        .db
        .read(move |c| {
            if store::get_version(c, &u, v)?.is_none() {
                return Ok(None);
            }
            let rows = store::get_keys(c, &u, v, room_id.as_deref(), session_id.as_deref())?;
            let mut out: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
            for row in &rows {
                out.entry(row.room_id.clone())
                    .or_default()
                    .insert(row.session_id.clone(), key_json(row)?);
            }
            Ok(Some(out))
        })
        .await?;
    rows.ok_or_else(|| Error::not_found("unknown backup version"))
}

/// Deletes keys of a version, narrowed as asked.
pub async fn delete_keys(
    core: &Core,
    user_id: &str,
    version: &str,
    room_id: Option<String>,
    session_id: Option<String>,
) -> Result<Summary> {
    let v = parse_version(version)?;
    let u = user_id.to_owned();
    core.db
        .write(user_id, move |c| {
            if store::get_version(c, &u, v)?.is_none() {
                return Ok(Err(Error::not_found("unknown backup version")));
            }
            let n = store::delete_keys(c, &u, v, room_id.as_deref(), session_id.as_deref())?;
            summary(c, &u, v, n > 0).map(Ok)
        })
        .await?
}
