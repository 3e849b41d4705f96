//! Device-list changes: recording that a user's devices or keys changed (who to wake, which
//! servers to tell), and computing `device_lists.changed` / `left` for `/sync` and
//! `/keys/changes`.
//!
//! A change is one `device_list_changes` row at a stream position. Local readers learn of it
//! through `/sync` (they share a joined room with the user); remote servers through the
//! EDUs queued here in the same transaction.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use super::{OutboundEdu, federation, keys, server_of};
use crate::storage::{AnyConnection, StorageResult, e2ee as store, rooms};

/// The local users (including `user_id` itself when local) and the remote servers that share
/// a joined room with `user_id`.
pub fn audience(
    conn: &mut AnyConnection,
    user_id: &str,
    our_server: &str,
) -> StorageResult<(Vec<String>, Vec<String>)> {
    let sharing = rooms::users_sharing_rooms(conn, user_id)?;
    let mut local = Vec::new();
    let mut servers = BTreeSet::new();
    for u in sharing {
        match server_of(&u) {
            Some(s) if s == our_server => local.push(u),
            Some(s) => {
                servers.insert(s.to_owned());
            }
            None => {}
        }
    }
    if server_of(user_id) == Some(our_server) && !local.iter().any(|u| u == user_id) {
        local.push(user_id.to_owned());
    }
    Ok((local, servers.into_iter().collect()))
}

/// Records a change of `user_id`'s devices or keys at `pos` visible to everyone sharing a
/// room with them; returns the local users to wake.
pub fn record(
    conn: &mut AnyConnection,
    pos: i64,
    user_id: &str,
    our_server: &str,
) -> StorageResult<Vec<String>> {
    store::insert_device_list_change(conn, pos, user_id, None)?;
    Ok(audience(conn, user_id, our_server)?.0)
}

/// Records a change of `user_id`'s keys that only `observer` may see (their own signature
/// on `user_id`'s master key); returns the user to wake.
pub fn record_for(
    conn: &mut AnyConnection,
    pos: i64,
    user_id: &str,
    observer: &str,
) -> StorageResult<Vec<String>> {
    store::insert_device_list_change(conn, pos, user_id, Some(observer))?;
    Ok(vec![observer.to_owned()])
}

/// Queues `m.device_list_update` EDUs about one local device for every server sharing a room
/// with its owner. `pos` (the change's stream position) is the EDU's `stream_id`; `prev_id`
/// is the owner's previous change.
pub fn announce_device(
    conn: &mut AnyConnection,
    pos: i64,
    user_id: &str,
    device_id: &str,
    deleted: bool,
    our_server: &str,
) -> StorageResult<Vec<OutboundEdu>> {
    let (_, servers) = audience(conn, user_id, our_server)?;
    if servers.is_empty() {
        return Ok(Vec::new());
    }
    let prev = store::last_device_list_change(conn, user_id, pos)?;
    let (keys, display_name) = if deleted {
        (None, None)
    } else {
        let keys = keys::device_keys_json(conn, user_id, device_id)?;
        let name = crate::storage::users::get_device(conn, user_id, device_id)?
            .and_then(|d| d.display_name);
        (keys, name)
    };
    let content = federation::device_list_update_content(
        user_id,
        device_id,
        display_name.as_deref(),
        pos,
        prev.into_iter().collect(),
        deleted,
        keys,
    );
    queue(conn, &servers, "m.device_list_update", &content)
}

/// Queues an `m.signing_key_update` EDU with the user's current master and self-signing keys
/// for every server sharing a room with them.
pub fn announce_signing_keys(
    conn: &mut AnyConnection,
    user_id: &str,
    our_server: &str,
) -> StorageResult<Vec<OutboundEdu>> {
    let (_, servers) = audience(conn, user_id, our_server)?;
    if servers.is_empty() {
        return Ok(Vec::new());
    }
    let master = keys::cross_signing_json(conn, user_id, "master", None)?;
    let self_signing = keys::cross_signing_json(conn, user_id, "self_signing", None)?;
    let content = federation::signing_key_update_content(user_id, master, self_signing);
    queue(conn, &servers, "m.signing_key_update", &content)
}

/// Queues one EDU per destination in the federation outbound queue, in the caller's
/// transaction (so it is sent if and only if the change commits).
pub fn queue(
    conn: &mut AnyConnection,
    servers: &[String],
    edu_type: &str,
    content: &Value,
) -> StorageResult<Vec<OutboundEdu>> {
    let text = content.to_string();
    let mut out = Vec::with_capacity(servers.len());
    for s in servers {
        crate::delivery::enqueue_edu_in_txn(conn, s, edu_type, &text)?;
        out.push(OutboundEdu {
            destination: s.clone(),
            edu_type: edu_type.to_owned(),
            content: content.clone(),
        });
    }
    Ok(out)
}

/// `device_lists` for `user_id` over `(after, upto]`: `(changed, left)`.
///
/// * changed: users sharing a joined room with `user_id` (the user included) whose devices or
///   keys changed; users who joined one of `user_id`'s rooms; everyone in a room `user_id`
///   joined.
/// * left: users who left one of `user_id`'s rooms, or were in a room `user_id` left, and now
///   share no joined room with `user_id`.
pub fn changes(
    conn: &mut AnyConnection,
    user_id: &str,
    after: i64,
    upto: i64,
) -> StorageResult<(Vec<String>, Vec<String>)> {
    if upto <= after {
        return Ok((Vec::new(), Vec::new()));
    }
    let raw = store::device_list_changes_between(conn, user_id, after, upto)?;
    let own_changed = raw.iter().any(|u| u == user_id);
    // Candidates first; who shares a room with the user (a read over every member of every
    // room of theirs) is asked only when there is a candidate to check against it.
    let mut changed: BTreeSet<String> = raw.into_iter().collect();
    let mut left_candidates: BTreeSet<String> = BTreeSet::new();

    let mine = rooms::rooms_for_user(conn, user_id)?;
    let mut joined_rooms = Vec::new();
    for m in &mine {
        let changed_now = m.stream_ordering > after && m.stream_ordering <= upto;
        match m.membership.as_str() {
            "join" => {
                if changed_now {
                    // We joined: everyone in the room is new to us.
                    changed.extend(rooms::members_with(conn, &m.room_id, "join")?);
                }
                joined_rooms.push(m.room_id.clone());
            }
            "leave" | "ban" if changed_now => {
                left_candidates.extend(rooms::members_with(conn, &m.room_id, "join")?);
            }
            _ => {}
        }
    }
    for (_room, other, membership) in
        store::membership_changes_in(conn, &joined_rooms, after, upto)?
    {
        if membership == "join" {
            changed.insert(other);
        } else if membership == "leave" || membership == "ban" {
            left_candidates.insert(other);
        }
    }
    changed.remove(user_id);
    left_candidates.remove(user_id);
    let sharing: HashSet<String> = if changed.is_empty() && left_candidates.is_empty() {
        HashSet::new()
    } else {
        rooms::users_sharing_rooms(conn, user_id)?
            .into_iter()
            .collect()
    };
    changed.retain(|u| sharing.contains(u));
    // Our own device-list changes are reported to ourselves: our other devices must learn
    // of a new or deleted one. Membership changes of our own are not.
    if own_changed {
        changed.insert(user_id.to_owned());
    }
    let left: Vec<String> = left_candidates
        .into_iter()
        .filter(|u| !sharing.contains(u))
        .collect();
    Ok((changed.into_iter().collect(), left))
}

/// A local device is being deleted: drops its keys and pending to-device messages and, if it
/// had identity keys, records the change at `pos` and tells remote servers. Returns the
/// local users to wake.
pub fn forget_device(
    conn: &mut AnyConnection,
    pos: i64,
    user_id: &str,
    device_id: &str,
    our_server: &str,
) -> StorageResult<Vec<String>> {
    store::delete_to_device_of_device(conn, user_id, device_id)?;
    if !store::delete_all_keys_of_device(conn, user_id, device_id)? {
        return Ok(Vec::new());
    }
    let wake = record(conn, pos, user_id, our_server)?;
    announce_device(conn, pos, user_id, device_id, true, our_server)?;
    Ok(wake)
}
