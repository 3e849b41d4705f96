//! Read receipts: stored per (room, user, kind, thread) at a stream position, the room's
//! local members woken, and — for a local user's public `m.read` — an `m.receipt` EDU queued
//! for every other server with members in the room, in the same transaction as the receipt
//! (`delivery`), then those servers woken. Shared by the client API (`/receipt`,
//! `/read_markers`) and federation (receipts arriving in EDUs).

use serde_json::json;

use crate::core::Core;
use crate::error::Result;
use crate::storage::{account, rooms};

/// Stores a receipt and wakes the room's local members; receipts of local users also go to
/// the room's other servers (`federate`).
pub async fn store(
    core: &Core,
    room_id: &str,
    user_id: &str,
    kind: &str,
    event_id: &str,
    thread_id: Option<&str>,
    federate: bool,
) -> Result<()> {
    let r = room_id.to_owned();
    let members = core
        .db
        .read(move |c| rooms::members_with(c, &r, "join"))
        .await?;
    let mut remote: Vec<String> = Vec::new();
    let mut edu_content = String::new();
    if federate && kind == "m.read" && core.delivery.is_on() {
        let mut data = json!({"ts": crate::storage::now_ms()});
        if let Some(t) = thread_id {
            data["thread_id"] = json!(t);
        }
        edu_content =
            json!({room_id: {"m.read": {user_id: {"event_ids": [event_id], "data": data}}}})
                .to_string();
        remote = members
            .iter()
            .filter_map(|m| m.split_once(':').map(|(_, s)| s.to_owned()))
            .filter(|s| !core.is_local(s))
            .collect();
        remote.sort_unstable();
        remote.dedup();
    }
    let suffix = format!(":{}", core.server_name());
    let mut audience: Vec<String> = members
        .into_iter()
        .filter(|m| m.ends_with(&suffix))
        .collect();
    if kind == "m.read.private" {
        audience = vec![user_id.to_owned()];
    }
    let pos = core.notifier.allocate();
    let (r, u, k, e, t) = (
        room_id.to_owned(),
        user_id.to_owned(),
        kind.to_owned(),
        event_id.to_owned(),
        thread_id.unwrap_or("").to_owned(),
    );
    let now = crate::storage::now_ms();
    let servers = remote.clone();
    let res = core
        .db
        .write(room_id, move |c| {
            account::set_receipt(c, &r, &u, &k, &t, &e, now, pos)?;
            for server in &servers {
                crate::delivery::enqueue_edu_in_txn(c, server, "m.receipt", &edu_content)?;
            }
            // The destinations are woken below; nothing is left noted on the writer thread.
            crate::delivery::take_noted();
            Ok(())
        })
        .await;
    core.notifier
        .complete(&[pos], if res.is_ok() { audience } else { Vec::new() });
    res?;
    for server in &remote {
        core.delivery.wake(server);
    }
    Ok(())
}
