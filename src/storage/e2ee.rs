//! End-to-end encryption storage: device keys, one-time and fallback keys, cross-signing keys
//! and their signatures, the to-device inbox, device-list changes, the remote device-list
//! cache. Every key is stored as the opaque JSON the client uploaded; see
//! `crate::e2ee` for what the rows mean and who writes them.
//!
//! Writes run inside the single writer (`Db::write`), so read-then-write sequences here (claim
//! a one-time key, replace a fallback key) are atomic. Claims shard by the key owner's user
//! ID, and a claim also checks that its `DELETE` removed the row, so even two writers racing
//! on PostgreSQL never hand out the same key twice.

use diesel::prelude::*;

use super::schema::{
    device_list_changes, e2e_cross_signing_keys, e2e_device_keys, e2e_fallback_keys,
    e2e_one_time_keys, e2e_signatures, memberships, remote_device_lists, to_device_inbound_ids,
    to_device_inbox, to_device_txns,
};
use super::{AnyConnection, StorageResult};

// ---------------------------------------------------------------- device keys

#[derive(Debug, Clone, Queryable)]
pub struct DeviceKeysRow {
    pub user_id: String,
    pub device_id: String,
    pub key_json: String,
    pub display_name: Option<String>,
}

pub fn get_device_keys(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<Option<DeviceKeysRow>> {
    Ok(e2e_device_keys::table
        .filter(e2e_device_keys::user_id.eq(user_id))
        .filter(e2e_device_keys::device_id.eq(device_id))
        .first::<DeviceKeysRow>(conn)
        .optional()?)
}

/// Every device with keys of a user, by device ID.
pub fn device_keys_of_user(
    conn: &mut AnyConnection,
    user_id: &str,
) -> StorageResult<Vec<DeviceKeysRow>> {
    Ok(e2e_device_keys::table
        .filter(e2e_device_keys::user_id.eq(user_id))
        .order(e2e_device_keys::device_id.asc())
        .load::<DeviceKeysRow>(conn)?)
}

/// Stores (replaces) a device's identity keys.
pub fn set_device_keys(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    key_json: &str,
    display_name: Option<&str>,
) -> StorageResult<()> {
    delete_device_keys(conn, user_id, device_id)?;
    diesel::insert_into(e2e_device_keys::table)
        .values((
            e2e_device_keys::user_id.eq(user_id),
            e2e_device_keys::device_id.eq(device_id),
            e2e_device_keys::key_json.eq(key_json),
            e2e_device_keys::display_name.eq(display_name),
        ))
        .execute(conn)?;
    Ok(())
}

/// Deletes a device's identity keys; whether there were any.
pub fn delete_device_keys(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<bool> {
    let n = diesel::delete(
        e2e_device_keys::table
            .filter(e2e_device_keys::user_id.eq(user_id))
            .filter(e2e_device_keys::device_id.eq(device_id)),
    )
    .execute(conn)?;
    Ok(n > 0)
}

/// Deletes every cached device of a (remote) user.
pub fn delete_all_device_keys(conn: &mut AnyConnection, user_id: &str) -> StorageResult<()> {
    diesel::delete(e2e_device_keys::table.filter(e2e_device_keys::user_id.eq(user_id)))
        .execute(conn)?;
    Ok(())
}

// ---------------------------------------------------------------- one-time keys

/// The stored JSON of a one-time key, if it is still unclaimed.
pub fn get_one_time_key(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
) -> StorageResult<Option<String>> {
    Ok(e2e_one_time_keys::table
        .filter(e2e_one_time_keys::user_id.eq(user_id))
        .filter(e2e_one_time_keys::device_id.eq(device_id))
        .filter(e2e_one_time_keys::algorithm.eq(algorithm))
        .filter(e2e_one_time_keys::key_id.eq(key_id))
        .select(e2e_one_time_keys::key_json)
        .first(conn)
        .optional()?)
}

/// The next upload sequence number of a device (keys are handed out oldest upload first).
pub fn next_one_time_key_seq(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<i64> {
    let max: Option<i64> = e2e_one_time_keys::table
        .filter(e2e_one_time_keys::user_id.eq(user_id))
        .filter(e2e_one_time_keys::device_id.eq(device_id))
        .select(diesel::dsl::max(e2e_one_time_keys::seq))
        .first(conn)?;
    Ok(max.unwrap_or(0) + 1)
}

pub fn insert_one_time_key(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
    key_json: &str,
    seq: i64,
) -> StorageResult<()> {
    diesel::insert_into(e2e_one_time_keys::table)
        .values((
            e2e_one_time_keys::user_id.eq(user_id),
            e2e_one_time_keys::device_id.eq(device_id),
            e2e_one_time_keys::algorithm.eq(algorithm),
            e2e_one_time_keys::key_id.eq(key_id),
            e2e_one_time_keys::key_json.eq(key_json),
            e2e_one_time_keys::seq.eq(seq),
        ))
        .execute(conn)?;
    Ok(())
}

/// Unclaimed one-time keys of a device, per algorithm.
pub fn one_time_key_counts(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<Vec<(String, i64)>> {
    Ok(e2e_one_time_keys::table
        .filter(e2e_one_time_keys::user_id.eq(user_id))
        .filter(e2e_one_time_keys::device_id.eq(device_id))
        .group_by(e2e_one_time_keys::algorithm)
        .select((e2e_one_time_keys::algorithm, diesel::dsl::count_star()))
        .load(conn)?)
}

/// Claims (removes and returns) the oldest unclaimed one-time key of a device for an
/// algorithm: `(key_id, key_json)`. A key whose `DELETE` removed nothing was taken by someone
/// else in between; the next one is tried.
pub fn claim_one_time_key(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> StorageResult<Option<(String, String)>> {
    for _ in 0..8 {
        let next: Option<(String, String)> = e2e_one_time_keys::table
            .filter(e2e_one_time_keys::user_id.eq(user_id))
            .filter(e2e_one_time_keys::device_id.eq(device_id))
            .filter(e2e_one_time_keys::algorithm.eq(algorithm))
            .order((
                e2e_one_time_keys::seq.asc(),
                e2e_one_time_keys::key_id.asc(),
            ))
            .select((e2e_one_time_keys::key_id, e2e_one_time_keys::key_json))
            .first(conn)
            .optional()?;
        let Some((key_id, json)) = next else {
            return Ok(None);
        };
        let removed = diesel::delete(
            e2e_one_time_keys::table
                .filter(e2e_one_time_keys::user_id.eq(user_id))
                .filter(e2e_one_time_keys::device_id.eq(device_id))
                .filter(e2e_one_time_keys::algorithm.eq(algorithm))
                .filter(e2e_one_time_keys::key_id.eq(&key_id)),
        )
        .execute(conn)?;
        if removed == 1 {
            return Ok(Some((key_id, json)));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------- fallback keys

#[derive(Debug, Clone, Queryable)]
pub struct FallbackKeyRow {
    pub user_id: String,
    pub device_id: String,
    pub algorithm: String,
    pub key_id: String,
    pub key_json: String,
    pub used: bool,
}

pub fn get_fallback_key(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> StorageResult<Option<FallbackKeyRow>> {
    Ok(e2e_fallback_keys::table
        .filter(e2e_fallback_keys::user_id.eq(user_id))
        .filter(e2e_fallback_keys::device_id.eq(device_id))
        .filter(e2e_fallback_keys::algorithm.eq(algorithm))
        .first::<FallbackKeyRow>(conn)
        .optional()?)
}

/// Replaces a device's fallback key for an algorithm (the new one is unused).
pub fn set_fallback_key(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
    key_json: &str,
) -> StorageResult<()> {
    diesel::delete(
        e2e_fallback_keys::table
            .filter(e2e_fallback_keys::user_id.eq(user_id))
            .filter(e2e_fallback_keys::device_id.eq(device_id))
            .filter(e2e_fallback_keys::algorithm.eq(algorithm)),
    )
    .execute(conn)?;
    diesel::insert_into(e2e_fallback_keys::table)
        .values((
            e2e_fallback_keys::user_id.eq(user_id),
            e2e_fallback_keys::device_id.eq(device_id),
            e2e_fallback_keys::algorithm.eq(algorithm),
            e2e_fallback_keys::key_id.eq(key_id),
            e2e_fallback_keys::key_json.eq(key_json),
            e2e_fallback_keys::used.eq(false),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn mark_fallback_key_used(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> StorageResult<()> {
    diesel::update(
        e2e_fallback_keys::table
            .filter(e2e_fallback_keys::user_id.eq(user_id))
            .filter(e2e_fallback_keys::device_id.eq(device_id))
            .filter(e2e_fallback_keys::algorithm.eq(algorithm)),
    )
    .set(e2e_fallback_keys::used.eq(true))
    .execute(conn)?;
    Ok(())
}

/// Algorithms for which the device has a fallback key that was never handed out.
pub fn unused_fallback_key_types(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<Vec<String>> {
    Ok(e2e_fallback_keys::table
        .filter(e2e_fallback_keys::user_id.eq(user_id))
        .filter(e2e_fallback_keys::device_id.eq(device_id))
        .filter(e2e_fallback_keys::used.eq(false))
        .order(e2e_fallback_keys::algorithm.asc())
        .select(e2e_fallback_keys::algorithm)
        .load(conn)?)
}

/// Deletes a device's one-time keys, fallback keys and identity keys and the signatures on
/// them; whether it had identity keys.
pub fn delete_all_keys_of_device(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<bool> {
    diesel::delete(
        e2e_one_time_keys::table
            .filter(e2e_one_time_keys::user_id.eq(user_id))
            .filter(e2e_one_time_keys::device_id.eq(device_id)),
    )
    .execute(conn)?;
    diesel::delete(
        e2e_fallback_keys::table
            .filter(e2e_fallback_keys::user_id.eq(user_id))
            .filter(e2e_fallback_keys::device_id.eq(device_id)),
    )
    .execute(conn)?;
    delete_signatures_on(conn, user_id, device_id)?;
    delete_device_keys(conn, user_id, device_id)
}

// ---------------------------------------------------------------- cross-signing keys

/// A user's cross-signing key of a type (`master`, `self_signing`, `user_signing`):
/// `(public key, JSON)`.
pub fn get_cross_signing_key(
    conn: &mut AnyConnection,
    user_id: &str,
    key_type: &str,
) -> StorageResult<Option<(String, String)>> {
    Ok(e2e_cross_signing_keys::table
        .filter(e2e_cross_signing_keys::user_id.eq(user_id))
        .filter(e2e_cross_signing_keys::key_type.eq(key_type))
        .select((
            e2e_cross_signing_keys::key_id,
            e2e_cross_signing_keys::key_json,
        ))
        .first(conn)
        .optional()?)
}

/// Deletes all cross-signing keys of a user (account deactivation).
pub fn delete_cross_signing_keys(conn: &mut AnyConnection, user_id: &str) -> StorageResult<()> {
    diesel::delete(
        e2e_cross_signing_keys::table.filter(e2e_cross_signing_keys::user_id.eq(user_id)),
    )
    .execute(conn)?;
    Ok(())
}

pub fn set_cross_signing_key(
    conn: &mut AnyConnection,
    user_id: &str,
    key_type: &str,
    key_id: &str,
    key_json: &str,
) -> StorageResult<()> {
    diesel::delete(
        e2e_cross_signing_keys::table
            .filter(e2e_cross_signing_keys::user_id.eq(user_id))
            .filter(e2e_cross_signing_keys::key_type.eq(key_type)),
    )
    .execute(conn)?;
    diesel::insert_into(e2e_cross_signing_keys::table)
        .values((
            e2e_cross_signing_keys::user_id.eq(user_id),
            e2e_cross_signing_keys::key_type.eq(key_type),
            e2e_cross_signing_keys::key_id.eq(key_id),
            e2e_cross_signing_keys::key_json.eq(key_json),
        ))
        .execute(conn)?;
    Ok(())
}

// ---------------------------------------------------------------- signatures

/// A signature uploaded with `/keys/signatures/upload`.
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct SignatureRow {
    pub target_user_id: String,
    pub target_key_id: String,
    pub signer_user_id: String,
    pub signer_key_id: String,
    pub signature: String,
}

pub fn put_signature(conn: &mut AnyConnection, row: &SignatureRow) -> StorageResult<()> {
    diesel::delete(
        e2e_signatures::table
            .filter(e2e_signatures::target_user_id.eq(&row.target_user_id))
            .filter(e2e_signatures::target_key_id.eq(&row.target_key_id))
            .filter(e2e_signatures::signer_user_id.eq(&row.signer_user_id))
            .filter(e2e_signatures::signer_key_id.eq(&row.signer_key_id)),
    )
    .execute(conn)?;
    diesel::insert_into(e2e_signatures::table)
        .values((
            e2e_signatures::target_user_id.eq(&row.target_user_id),
            e2e_signatures::target_key_id.eq(&row.target_key_id),
            e2e_signatures::signer_user_id.eq(&row.signer_user_id),
            e2e_signatures::signer_key_id.eq(&row.signer_key_id),
            e2e_signatures::signature.eq(&row.signature),
        ))
        .execute(conn)?;
    Ok(())
}

/// Signatures on one key (a device ID or a cross-signing public key) of a user.
pub fn signatures_on(
    conn: &mut AnyConnection,
    target_user_id: &str,
    target_key_id: &str,
) -> StorageResult<Vec<SignatureRow>> {
    Ok(e2e_signatures::table
        .filter(e2e_signatures::target_user_id.eq(target_user_id))
        .filter(e2e_signatures::target_key_id.eq(target_key_id))
        .load::<SignatureRow>(conn)?)
}

pub fn delete_signatures_on(
    conn: &mut AnyConnection,
    target_user_id: &str,
    target_key_id: &str,
) -> StorageResult<()> {
    diesel::delete(
        e2e_signatures::table
            .filter(e2e_signatures::target_user_id.eq(target_user_id))
            .filter(e2e_signatures::target_key_id.eq(target_key_id)),
    )
    .execute(conn)?;
    Ok(())
}

// ---------------------------------------------------------------- to-device messages

#[derive(Debug, Clone, Queryable)]
pub struct ToDeviceRow {
    pub user_id: String,
    pub device_id: String,
    pub stream_id: i64,
    pub sender: String,
    pub event_type: String,
    pub content: String,
}

pub fn insert_to_device(conn: &mut AnyConnection, row: &ToDeviceRow) -> StorageResult<()> {
    diesel::insert_into(to_device_inbox::table)
        .values((
            to_device_inbox::user_id.eq(&row.user_id),
            to_device_inbox::device_id.eq(&row.device_id),
            to_device_inbox::stream_id.eq(row.stream_id),
            to_device_inbox::sender.eq(&row.sender),
            to_device_inbox::event_type.eq(&row.event_type),
            to_device_inbox::content.eq(&row.content),
        ))
        .execute(conn)?;
    Ok(())
}

/// Pending messages of a device with `after < stream_id <= upto`, oldest first.
pub fn to_device_pending(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    after: i64,
    upto: i64,
    limit: i64,
) -> StorageResult<Vec<ToDeviceRow>> {
    Ok(to_device_inbox::table
        .filter(to_device_inbox::user_id.eq(user_id))
        .filter(to_device_inbox::device_id.eq(device_id))
        .filter(to_device_inbox::stream_id.gt(after))
        .filter(to_device_inbox::stream_id.le(upto))
        .order(to_device_inbox::stream_id.asc())
        .limit(limit)
        .load::<ToDeviceRow>(conn)?)
}

/// Whether a device has messages at or below `upto` (delivered ones awaiting deletion).
pub fn has_to_device_upto(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    upto: i64,
) -> StorageResult<bool> {
    let n: i64 = to_device_inbox::table
        .filter(to_device_inbox::user_id.eq(user_id))
        .filter(to_device_inbox::device_id.eq(device_id))
        .filter(to_device_inbox::stream_id.le(upto))
        .count()
        .get_result(conn)?;
    Ok(n > 0)
}

/// Deletes a device's messages at or below `upto`; how many.
pub fn delete_to_device_upto(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    upto: i64,
) -> StorageResult<usize> {
    Ok(diesel::delete(
        to_device_inbox::table
            .filter(to_device_inbox::user_id.eq(user_id))
            .filter(to_device_inbox::device_id.eq(device_id))
            .filter(to_device_inbox::stream_id.le(upto)),
    )
    .execute(conn)?)
}

/// Deletes everything a device has pending (the device is gone).
pub fn delete_to_device_of_device(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
) -> StorageResult<()> {
    delete_to_device_upto(conn, user_id, device_id, i64::MAX)?;
    diesel::delete(
        to_device_txns::table
            .filter(to_device_txns::user_id.eq(user_id))
            .filter(to_device_txns::device_id.eq(device_id)),
    )
    .execute(conn)?;
    Ok(())
}

/// Records a `/sendToDevice` transaction; `Ok(false)` if it was already recorded.
pub fn record_to_device_txn(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
) -> StorageResult<bool> {
    if to_device_txn_seen(conn, user_id, device_id, txn_id)? {
        return Ok(false);
    }
    diesel::insert_into(to_device_txns::table)
        .values((
            to_device_txns::user_id.eq(user_id),
            to_device_txns::device_id.eq(device_id),
            to_device_txns::txn_id.eq(txn_id),
        ))
        .execute(conn)?;
    Ok(true)
}

pub fn to_device_txn_seen(
    conn: &mut AnyConnection,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
) -> StorageResult<bool> {
    let n: i64 = to_device_txns::table
        .filter(to_device_txns::user_id.eq(user_id))
        .filter(to_device_txns::device_id.eq(device_id))
        .filter(to_device_txns::txn_id.eq(txn_id))
        .count()
        .get_result(conn)?;
    Ok(n > 0)
}

/// Records an inbound `m.direct_to_device` message ID; `Ok(false)` if already seen.
pub fn record_inbound_message_id(
    conn: &mut AnyConnection,
    origin: &str,
    message_id: &str,
    now: i64,
) -> StorageResult<bool> {
    let n: i64 = to_device_inbound_ids::table
        .filter(to_device_inbound_ids::origin.eq(origin))
        .filter(to_device_inbound_ids::message_id.eq(message_id))
        .count()
        .get_result(conn)?;
    if n > 0 {
        return Ok(false);
    }
    diesel::insert_into(to_device_inbound_ids::table)
        .values((
            to_device_inbound_ids::origin.eq(origin),
            to_device_inbound_ids::message_id.eq(message_id),
            to_device_inbound_ids::received_ts.eq(now),
        ))
        .execute(conn)?;
    Ok(true)
}

// ---------------------------------------------------------------- device-list changes

/// Records that `user_id`'s devices or keys changed at `stream_id`, for everyone sharing a
/// room with them (`observer` `None`) or for one local user only.
pub fn insert_device_list_change(
    conn: &mut AnyConnection,
    stream_id: i64,
    user_id: &str,
    observer: Option<&str>,
) -> StorageResult<()> {
    diesel::insert_into(device_list_changes::table)
        .values((
            device_list_changes::stream_id.eq(stream_id),
            device_list_changes::user_id.eq(user_id),
            device_list_changes::observer.eq(observer.unwrap_or("")),
        ))
        .execute(conn)?;
    Ok(())
}

/// Users whose device lists changed in `(after, upto]` as seen by `observer`.
pub fn device_list_changes_between(
    conn: &mut AnyConnection,
    observer: &str,
    after: i64,
    upto: i64,
) -> StorageResult<Vec<String>> {
    let mut users: Vec<String> = device_list_changes::table
        .filter(device_list_changes::stream_id.gt(after))
        .filter(device_list_changes::stream_id.le(upto))
        .filter(
            device_list_changes::observer
                .eq("")
                .or(device_list_changes::observer.eq(observer)),
        )
        .select(device_list_changes::user_id)
        .load(conn)?;
    users.sort();
    users.dedup();
    Ok(users)
}

/// The latest public change of a user's device list strictly before `before`.
pub fn last_device_list_change(
    conn: &mut AnyConnection,
    user_id: &str,
    before: i64,
) -> StorageResult<Option<i64>> {
    Ok(device_list_changes::table
        .filter(device_list_changes::user_id.eq(user_id))
        .filter(device_list_changes::observer.eq(""))
        .filter(device_list_changes::stream_id.lt(before))
        .select(diesel::dsl::max(device_list_changes::stream_id))
        .first(conn)?)
}

/// Membership rows of the given rooms that changed in `(after, upto]`.
pub fn membership_changes_in(
    conn: &mut AnyConnection,
    rooms: &[String],
    after: i64,
    upto: i64,
) -> StorageResult<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    for chunk in rooms.chunks(500) {
        out.extend(
            memberships::table
                .filter(memberships::room_id.eq_any(chunk))
                .filter(memberships::stream_ordering.gt(after))
                .filter(memberships::stream_ordering.le(upto))
                .select((
                    memberships::room_id,
                    memberships::user_id,
                    memberships::membership,
                ))
                .load::<(String, String, String)>(conn)?,
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------- remote device lists

/// `(last applied stream_id, stale)` of a remote user's cached device list.
pub fn get_remote_device_list(
    conn: &mut AnyConnection,
    user_id: &str,
) -> StorageResult<Option<(i64, bool)>> {
    Ok(remote_device_lists::table
        .filter(remote_device_lists::user_id.eq(user_id))
        .select((remote_device_lists::stream_id, remote_device_lists::stale))
        .first(conn)
        .optional()?)
}

pub fn set_remote_device_list(
    conn: &mut AnyConnection,
    user_id: &str,
    stream_id: i64,
    stale: bool,
) -> StorageResult<()> {
    diesel::delete(remote_device_lists::table.filter(remote_device_lists::user_id.eq(user_id)))
        .execute(conn)?;
    diesel::insert_into(remote_device_lists::table)
        .values((
            remote_device_lists::user_id.eq(user_id),
            remote_device_lists::stream_id.eq(stream_id),
            remote_device_lists::stale.eq(stale),
        ))
        .execute(conn)?;
    Ok(())
}

/// Remote users whose cached device list needs a full resync.
pub fn stale_remote_device_lists(conn: &mut AnyConnection) -> StorageResult<Vec<String>> {
    Ok(remote_device_lists::table
        .filter(remote_device_lists::stale.eq(true))
        .order(remote_device_lists::user_id.asc())
        .select(remote_device_lists::user_id)
        .load(conn)?)
}

// ---------------------------------------------------------------- stream positions

/// The highest stream position used by E2EE rows (the notifier starts after it).
pub fn max_stream(conn: &mut AnyConnection) -> StorageResult<i64> {
    let a: Option<i64> = to_device_inbox::table
        .select(diesel::dsl::max(to_device_inbox::stream_id))
        .first(conn)?;
    let b: Option<i64> = device_list_changes::table
        .select(diesel::dsl::max(device_list_changes::stream_id))
        .first(conn)?;
    Ok(a.unwrap_or(0).max(b.unwrap_or(0)))
}
