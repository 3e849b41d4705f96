//! Send-to-device messages: `PUT /sendToDevice/{type}/{txnId}`, delivery of inbound
//! `m.direct_to_device` EDUs, and acknowledgement by `/sync`.
//!
//! A message to a local device is a row in `to_device_inbox` at a stream position; the
//! recipient's `/sync` is woken when the position becomes readable. Messages to remote users
//! become one `m.direct_to_device` EDU per server, queued in the same transaction. The
//! transaction ID is recorded in that transaction too, so a retried request changes nothing.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Written, device_lists, federation, parse_user_id, write_at_position};
use crate::core::Core;
use crate::error::{Error, Result};
use crate::storage::e2ee::{self as store, ToDeviceRow};
use crate::storage::{AnyConnection, StorageResult, users};

#[derive(Debug, Deserialize)]
pub struct SendRequest {
    pub messages: Map<String, Value>,
}

/// Checked messages: recipient user → device (or `*`) → content.
pub type Messages = BTreeMap<String, BTreeMap<String, Value>>;

/// Checks a `messages` map: user IDs and object contents.
pub fn check_messages(messages: Map<String, Value>) -> Result<Messages> {
    let mut out = Messages::new();
    for (user, devices) in messages {
        parse_user_id(&user)?;
        let Value::Object(devices) = devices else {
            return Err(Error::bad_json(format!(
                "messages for {user} must be an object"
            )));
        };
        let mut by_device = BTreeMap::new();
        for (device, content) in devices {
            if !content.is_object() {
                return Err(Error::bad_json(format!(
                    "message content for {user} {device} must be an object"
                )));
            }
            by_device.insert(device, content);
        }
        out.insert(user, by_device);
    }
    Ok(out)
}

/// Stores messages for local devices at `pos`, expanding `*` to every device of the user
/// (an explicitly named device wins over `*`; unknown devices are skipped). Returns the
/// users who got at least one message.
pub fn deliver_local(
    conn: &mut AnyConnection,
    pos: i64,
    sender: &str,
    event_type: &str,
    messages: &Messages,
) -> StorageResult<Vec<String>> {
    let mut woken = Vec::new();
    for (user, devices) in messages {
        let known: Vec<String> = users::list_devices(conn, user)?
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        let mut targets: BTreeMap<&str, &Value> = BTreeMap::new();
        if let Some(content) = devices.get("*") {
            for d in &known {
                targets.insert(d, content);
            }
        }
        for (device, content) in devices {
            if device != "*" && known.contains(device) {
                targets.insert(device, content);
            }
        }
        for (device, content) in &targets {
            store::insert_to_device(
                conn,
                &ToDeviceRow {
                    user_id: user.clone(),
                    device_id: (*device).to_owned(),
                    stream_id: pos,
                    sender: sender.to_owned(),
                    event_type: event_type.to_owned(),
                    content: content.to_string(),
                },
            )?;
        }
        if !targets.is_empty() {
            woken.push(user.clone());
        }
    }
    Ok(woken)
}

/// `PUT /sendToDevice/{type}/{txnId}` from a local device.
pub async fn send(
    core: &Core,
    sender: &str,
    sender_device: &str,
    event_type: &str,
    txn_id: &str,
    messages: Messages,
) -> Result<()> {
    if event_type.is_empty() {
        return Err(Error::invalid_param("event type must not be empty"));
    }
    let mut local = Messages::new();
    let mut remote: BTreeMap<String, Messages> = BTreeMap::new();
    for (user, devices) in messages {
        let id = parse_user_id(&user)?;
        if core.is_local(id.server_name().as_str()) {
            local.insert(user, devices);
        } else {
            remote
                .entry(id.server_name().to_string())
                .or_default()
                .insert(user, devices);
        }
    }
    let (s, d, t, e) = (
        sender.to_owned(),
        sender_device.to_owned(),
        txn_id.to_owned(),
        event_type.to_owned(),
    );
    write_at_position(core, sender, move |c, pos| {
        if !store::record_to_device_txn(c, &s, &d, &t)? {
            // A retry: the first request already did everything.
            return Ok(Written::new((), Vec::new()));
        }
        let wake = deliver_local(c, pos, &s, &e, &local)?;
        for (server, msgs) in &remote {
            let message_id = crate::random::random_string(24);
            let content = federation::direct_to_device_content(&s, &e, &message_id, msgs);
            device_lists::queue(
                c,
                std::slice::from_ref(server),
                "m.direct_to_device",
                &content,
            )?;
        }
        Ok(Written::new((), wake))
    })
    .await
}

/// Deletes the messages a `/sync` with `since` acknowledges (everything at or below it).
/// Reads first, so the common case (nothing pending) costs no write.
pub async fn acknowledge(core: &Core, user_id: &str, device_id: &str, since: i64) -> Result<()> {
    let (u, d) = (user_id.to_owned(), device_id.to_owned());
    let pending = core
        .db
        .read(move |c| store::has_to_device_upto(c, &u, &d, since))
        .await?;
    if pending {
        let (u, d) = (user_id.to_owned(), device_id.to_owned());
        core.db
            .write(user_id, move |c| {
                store::delete_to_device_upto(c, &u, &d, since)
            })
            .await?;
    }
    Ok(())
}

/// The `/sync` form of a stored message.
pub fn sync_event(row: &ToDeviceRow) -> Value {
    let content = serde_json::from_str::<Value>(&row.content).unwrap_or_else(|_| json!({}));
    json!({"sender": row.sender, "type": row.event_type, "content": content})
}
