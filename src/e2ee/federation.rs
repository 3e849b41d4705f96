//! The server-server side of end-to-end encryption, as service functions for the federation
//! layer to mount:
//!
//! | federation request / EDU                    | function                             |
//! |---------------------------------------------|--------------------------------------|
//! | `GET /_matrix/federation/v1/user/devices/{userId}` | [`user_devices`]              |
//! | `POST /_matrix/federation/v1/user/keys/query`      | [`answer_keys_query`]         |
//! | `POST /_matrix/federation/v1/user/keys/claim`      | [`answer_keys_claim`]         |
//! | inbound `m.device_list_update`, `m.signing_key_update`, `m.direct_to_device` | [`apply_edu`] |
//! | the answer to our own `GET /user/devices` (resync of a stale list) | [`apply_device_list_snapshot`] |
//! | outbound EDUs queued by local changes        | [`pending_edus`], [`ack_edus`]       |
//!
//! Outbound EDU contents are built by the pure functions [`device_list_update_content`],
//! [`signing_key_update_content`] and [`direct_to_device_content`]; the callers in this
//! module tree queue them (federation `outbound_queue`) in the same transaction as the change.
//!
//! Asking a remote server for keys on behalf of a local client goes through [`RemoteKeys`];
//! [`NotFederated`] answers every server as unreachable until the federation client is wired.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde_json::{Value, json};

use super::json::{cross_signing_public_key, signed_part};
use super::keys::{self, ClaimRequest, QueryRequest};
use super::to_device::{self, Messages};
use super::{Written, device_lists, server_of, write_at_position};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::e2ee as store;
use crate::storage::{AnyConnection, StorageResult, users};

// ---------------------------------------------------------------- the seam for remote key requests

/// Why a remote server did not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(pub String);

pub type RemoteFuture<'a> =
    Pin<Box<dyn Future<Output = std::result::Result<Value, RemoteError>> + 'a>>;

/// Asks remote servers for keys: `POST /_matrix/federation/v1/user/keys/query` and
/// `.../user/keys/claim` on `server` with `body` (the client's request restricted to that
/// server's users), giving up after `timeout`. The answer is the remote's JSON body; users
/// of other servers in it are ignored.
pub trait RemoteKeys {
    fn query_keys<'a>(
        &'a self,
        server: &'a str,
        body: Value,
        timeout: Duration,
    ) -> RemoteFuture<'a>;
    fn claim_keys<'a>(
        &'a self,
        server: &'a str,
        body: Value,
        timeout: Duration,
    ) -> RemoteFuture<'a>;
}

/// No federation client: every remote server is reported in `failures`.
pub struct NotFederated;

impl RemoteKeys for NotFederated {
    fn query_keys<'a>(
        &'a self,
        server: &'a str,
        _body: Value,
        _timeout: Duration,
    ) -> RemoteFuture<'a> {
        Box::pin(async move {
            Err(RemoteError(format!(
                "federation with {server} is not available"
            )))
        })
    }

    fn claim_keys<'a>(
        &'a self,
        server: &'a str,
        _body: Value,
        _timeout: Duration,
    ) -> RemoteFuture<'a> {
        Box::pin(async move {
            Err(RemoteError(format!(
                "federation with {server} is not available"
            )))
        })
    }
}

// ---------------------------------------------------------------- outbound EDU contents (pure)

/// `m.device_list_update` content.
pub fn device_list_update_content(
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    stream_id: i64,
    prev_id: Vec<i64>,
    deleted: bool,
    keys: Option<Value>,
) -> Value {
    let mut c = json!({
        "user_id": user_id,
        "device_id": device_id,
        "stream_id": stream_id,
        "prev_id": prev_id,
    });
    if let Some(n) = display_name {
        c["device_display_name"] = json!(n);
    }
    if deleted {
        c["deleted"] = json!(true);
    }
    if let Some(mut k) = keys {
        if let Some(o) = k.as_object_mut() {
            o.remove("unsigned");
        }
        c["keys"] = k;
    }
    c
}

/// `m.signing_key_update` content (the user-signing key is private and never sent).
pub fn signing_key_update_content(
    user_id: &str,
    master: Option<Value>,
    self_signing: Option<Value>,
) -> Value {
    let mut c = json!({"user_id": user_id});
    if let Some(m) = master {
        c["master_key"] = m;
    }
    if let Some(s) = self_signing {
        c["self_signing_key"] = s;
    }
    c
}

/// `m.direct_to_device` content.
pub fn direct_to_device_content(
    sender: &str,
    event_type: &str,
    message_id: &str,
    messages: &Messages,
) -> Value {
    json!({
        "sender": sender,
        "type": event_type,
        "message_id": message_id,
        "messages": messages,
    })
}

// ---------------------------------------------------------------- answering remote servers

/// `GET /user/devices/{userId}`: `None` if the user is not a known local user.
pub fn user_devices(
    conn: &mut AnyConnection,
    our_server: &str,
    user_id: &str,
) -> StorageResult<Option<Value>> {
    if server_of(user_id) != Some(our_server) || users::get_user(conn, user_id)?.is_none() {
        return Ok(None);
    }
    let stream_id = store::last_device_list_change(conn, user_id, i64::MAX)?.unwrap_or(0);
    let mut devices = Vec::new();
    for row in store::device_keys_of_user(conn, user_id)? {
        let Some(mut k) = keys::device_keys_json(conn, user_id, &row.device_id)? else {
            continue;
        };
        let name = k
            .get("unsigned")
            .and_then(|u| u.get("device_display_name"))
            .cloned();
        if let Some(o) = k.as_object_mut() {
            o.remove("unsigned");
        }
        let mut d = json!({"device_id": row.device_id, "keys": k});
        if let Some(n) = name {
            d["device_display_name"] = n;
        }
        devices.push(d);
    }
    let mut out = json!({"user_id": user_id, "stream_id": stream_id, "devices": devices});
    if let Some(m) = keys::cross_signing_json(conn, user_id, "master", None)? {
        out["master_key"] = m;
    }
    if let Some(s) = keys::cross_signing_json(conn, user_id, "self_signing", None)? {
        out["self_signing_key"] = s;
    }
    Ok(Some(out))
}

/// `POST /user/keys/query`: the keys of the named local users (others are ignored).
pub fn answer_keys_query(
    conn: &mut AnyConnection,
    our_server: &str,
    req: &QueryRequest,
) -> StorageResult<Value> {
    let wanted = req
        .device_keys
        .iter()
        .filter(|(u, _)| server_of(u) == Some(our_server))
        .map(|(u, d)| (u.clone(), d.clone()))
        .collect();
    keys::query_held(conn, &wanted, None)
}

/// `POST /user/keys/claim`: claims keys of the named local users (others are ignored).
pub async fn answer_keys_claim(core: &Core, origin: &str, req: ClaimRequest) -> Result<Value> {
    let wanted: std::collections::BTreeMap<_, _> = req
        .one_time_keys
        .into_iter()
        .filter(|(u, _)| server_of(u) == Some(core.server_name()))
        .collect();
    let keys = core
        .db
        .write(origin, move |c| keys::claim_held(c, &wanted))
        .await?;
    Ok(json!({"one_time_keys": keys}))
}

// ---------------------------------------------------------------- inbound EDUs

/// What applying an inbound EDU asks of the caller.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Remote users whose cached device list may have missed an update: fetch
    /// `GET /user/devices/{user}` from their server and pass the answer to
    /// [`apply_device_list_snapshot`].
    pub resync: Vec<String>,
}

fn field<'a>(content: &'a Value, name: &str) -> Result<&'a str> {
    content
        .get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::bad_json(format!("missing or invalid {name}")))
}

fn require_origin(user_id: &str, origin: &str) -> Result<()> {
    if server_of(user_id) != Some(origin) {
        return Err(Error::forbidden(format!(
            "{origin} cannot speak for {user_id}"
        )));
    }
    Ok(())
}

/// Applies an inbound EDU of the E2EE kinds from `origin`. Other EDU types are refused with
/// `M_UNRECOGNIZED` so the caller can route them elsewhere.
pub async fn apply_edu(
    core: &Core,
    origin: &str,
    edu_type: &str,
    content: &Value,
) -> Result<Applied> {
    match edu_type {
        "m.device_list_update" => apply_device_list_update(core, origin, content).await,
        "m.signing_key_update" => apply_signing_key_update(core, origin, content).await,
        "m.direct_to_device" => apply_direct_to_device(core, origin, content).await,
        _ => Err(Error::Unrecognized),
    }
}

/// Whether a remote device-keys object is about `user_id`'s `device_id`.
fn keys_match(keys: &Value, user_id: &str, device_id: &str) -> bool {
    keys.get("user_id").and_then(|v| v.as_str()) == Some(user_id)
        && keys.get("device_id").and_then(|v| v.as_str()) == Some(device_id)
}

async fn apply_device_list_update(core: &Core, origin: &str, content: &Value) -> Result<Applied> {
    let user_id = field(content, "user_id")?.to_owned();
    require_origin(&user_id, origin)?;
    let device_id = field(content, "device_id")?.to_owned();
    let stream_id = content
        .get("stream_id")
        .and_then(|v| v.as_i64())
        .ok_or_else(|| Error::bad_json("missing or invalid stream_id"))?;
    let prev_id: Vec<i64> = content
        .get("prev_id")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
        .unwrap_or_default();
    let deleted = content
        .get("deleted")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let keys = content.get("keys").cloned().filter(|k| k.is_object());
    if let Some(k) = &keys
        && !keys_match(k, &user_id, &device_id)
    {
        return Err(Error::bad_json("keys are for another user or device"));
    }
    let display_name = content
        .get("device_display_name")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let our = core.server_name().to_owned();
    let u = user_id.clone();
    write_at_position(core, &user_id, move |c, pos| {
        let (local, _) = device_lists::audience(c, &u, &our)?;
        if local.is_empty() {
            // No local user shares a room with them: nothing to track.
            return Ok(Written::new(Applied::default(), Vec::new()));
        }
        let list = store::get_remote_device_list(c, &u)?;
        if let Some((last, _)) = list
            && stream_id <= last
        {
            // Already applied (a retried transaction).
            return Ok(Written::new(Applied::default(), Vec::new()));
        }
        let in_sync = matches!(list, Some((last, false)) if prev_id.iter().all(|p| *p <= last));
        if deleted {
            store::delete_all_keys_of_device(c, &u, &device_id)?;
        } else if let Some(k) = &keys {
            store::set_device_keys(c, &u, &device_id, &k.to_string(), display_name.as_deref())?;
        } else if let Some(row) = store::get_device_keys(c, &u, &device_id)? {
            store::set_device_keys(c, &u, &device_id, &row.key_json, display_name.as_deref())?;
        }
        store::set_remote_device_list(c, &u, stream_id, !in_sync)?;
        let wake = device_lists::record(c, pos, &u, &our)?;
        let resync = if in_sync { Vec::new() } else { vec![u.clone()] };
        Ok(Written::new(Applied { resync }, wake))
    })
    .await
}

/// Stores a remote user's announced cross-signing key after checking its shape.
fn store_remote_cross_signing(
    c: &mut AnyConnection,
    user_id: &str,
    key_type: &str,
    key: &Value,
) -> StorageResult<bool> {
    let usage_ok = key
        .get("usage")
        .and_then(|u| u.as_array())
        .is_some_and(|u| u.iter().any(|x| x.as_str() == Some(key_type)));
    let Some(public) = cross_signing_public_key(key).filter(|_| usage_ok) else {
        return Ok(false);
    };
    if key.get("user_id").and_then(|v| v.as_str()) != Some(user_id) {
        return Ok(false);
    }
    let old = store::get_cross_signing_key(c, user_id, key_type)?
        .and_then(|(_, t)| serde_json::from_str::<Value>(&t).ok());
    if old.as_ref() == Some(key) {
        return Ok(false);
    }
    store::set_cross_signing_key(c, user_id, key_type, &public, &key.to_string())?;
    Ok(true)
}

async fn apply_signing_key_update(core: &Core, origin: &str, content: &Value) -> Result<Applied> {
    let user_id = field(content, "user_id")?.to_owned();
    require_origin(&user_id, origin)?;
    let master = content.get("master_key").cloned();
    let self_signing = content.get("self_signing_key").cloned();
    let our = core.server_name().to_owned();
    let u = user_id.clone();
    write_at_position(core, &user_id, move |c, pos| {
        let mut changed = false;
        if let Some(m) = &master {
            changed |= store_remote_cross_signing(c, &u, "master", m)?;
        }
        if let Some(s) = &self_signing {
            changed |= store_remote_cross_signing(c, &u, "self_signing", s)?;
        }
        let wake = if changed {
            device_lists::record(c, pos, &u, &our)?
        } else {
            Vec::new()
        };
        Ok(Written::new(Applied::default(), wake))
    })
    .await
}

async fn apply_direct_to_device(core: &Core, origin: &str, content: &Value) -> Result<Applied> {
    let sender = field(content, "sender")?.to_owned();
    require_origin(&sender, origin)?;
    let event_type = field(content, "type")?.to_owned();
    let message_id = field(content, "message_id")?.to_owned();
    let messages = content
        .get("messages")
        .and_then(|m| m.as_object())
        .cloned()
        .ok_or_else(|| Error::bad_json("missing or invalid messages"))?;
    let mut messages = to_device::check_messages(messages)?;
    messages.retain(|user, _| server_of(user) == Some(core.server_name()));
    let o = origin.to_owned();
    let shard = sender.clone();
    write_at_position(core, &shard, move |c, pos| {
        if !store::record_inbound_message_id(c, &o, &message_id, crate::storage::now_ms())? {
            return Ok(Written::new(Applied::default(), Vec::new()));
        }
        let wake = to_device::deliver_local(c, pos, &sender, &event_type, &messages)?;
        Ok(Written::new(Applied::default(), wake))
    })
    .await
}

/// Replaces the cached device list of a remote user with the answer of
/// `GET /user/devices/{userId}` from `origin`, and marks it current.
pub async fn apply_device_list_snapshot(core: &Core, origin: &str, response: &Value) -> Result<()> {
    let user_id = field(response, "user_id")?.to_owned();
    require_origin(&user_id, origin)?;
    let stream_id = response
        .get("stream_id")
        .and_then(|v| v.as_i64())
        .ok_or_else(|| Error::bad_json("missing or invalid stream_id"))?;
    let mut devices = Vec::new();
    for d in response
        .get("devices")
        .and_then(|v| v.as_array())
        .ok_or_else(|| Error::bad_json("missing or invalid devices"))?
    {
        let device_id = field(d, "device_id")?.to_owned();
        let Some(keys) = d
            .get("keys")
            .filter(|k| keys_match(k, &user_id, &device_id))
        else {
            continue;
        };
        let name = d
            .get("device_display_name")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        devices.push((device_id, keys.to_string(), name));
    }
    let master = response.get("master_key").cloned();
    let self_signing = response.get("self_signing_key").cloned();
    let our = core.server_name().to_owned();
    let u = user_id.clone();
    write_at_position(core, &user_id, move |c, pos| {
        let before: Vec<(String, Value)> = store::device_keys_of_user(c, &u)?
            .into_iter()
            .filter_map(|r| {
                serde_json::from_str(&r.key_json)
                    .ok()
                    .map(|v| (r.device_id, v))
            })
            .collect();
        store::delete_all_device_keys(c, &u)?;
        for (device_id, keys, name) in &devices {
            store::set_device_keys(c, &u, device_id, keys, name.as_deref())?;
        }
        let mut changed = before.len() != devices.len()
            || devices.iter().any(|(d, k, _)| {
                let new = serde_json::from_str::<Value>(k).ok();
                !before.iter().any(|(bd, bk)| {
                    bd == d && new.as_ref().map(signed_part) == Some(signed_part(bk))
                })
            });
        if let Some(m) = &master {
            changed |= store_remote_cross_signing(c, &u, "master", m)?;
        }
        if let Some(s) = &self_signing {
            changed |= store_remote_cross_signing(c, &u, "self_signing", s)?;
        }
        store::set_remote_device_list(c, &u, stream_id, false)?;
        let wake = if changed {
            device_lists::record(c, pos, &u, &our)?
        } else {
            Vec::new()
        };
        Ok(Written::new((), wake))
    })
    .await
}

/// Remote users whose cached device list needs a resync (e.g. after a restart).
pub async fn stale_device_lists(core: &Core) -> Result<Vec<String>> {
    Ok(core.db.read(store::stale_remote_device_lists).await?)
}
