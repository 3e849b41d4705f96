//! The public room directory as both HTTP faces serve it: a room's public summary from its
//! current state, and the list of published rooms paginated by offset tokens (`o<n>`).

use serde_json::{Value, json};

use crate::core::Core;
use crate::error::Result;
use crate::storage::{events, rooms, state};

/// One directory entry built from a room's current state.
pub fn room_summary(
    c: &mut crate::storage::AnyConnection,
    room_id: &str,
) -> crate::storage::StorageResult<Value> {
    let ids = state::current_state(c, room_id)?;
    let get = |c: &mut crate::storage::AnyConnection,
               t: &str|
     -> crate::storage::StorageResult<Option<Value>> {
        match ids.get(&(t.to_owned(), String::new())) {
            Some(id) => Ok(events::get_event(c, id)?
                .and_then(|r| serde_json::from_str::<Value>(&r.json).ok())
                .and_then(|v| v.get("content").cloned())),
            None => Ok(None),
        }
    };
    let name = get(c, "m.room.name")?.and_then(|v| v.get("name").cloned());
    let topic = get(c, "m.room.topic")?.and_then(|v| v.get("topic").cloned());
    let alias = get(c, "m.room.canonical_alias")?.and_then(|v| v.get("alias").cloned());
    let avatar = get(c, "m.room.avatar")?.and_then(|v| v.get("url").cloned());
    let join_rule = get(c, "m.room.join_rules")?
        .and_then(|v| v.get("join_rule").cloned())
        .unwrap_or(json!("invite"));
    let hv =
        get(c, "m.room.history_visibility")?.and_then(|v| v.get("history_visibility").cloned());
    let guest = get(c, "m.room.guest_access")?.and_then(|v| v.get("guest_access").cloned());
    let joined = rooms::members_with(c, room_id, "join")?.len();
    let mut entry = json!({
        "room_id": room_id,
        "num_joined_members": joined,
        "world_readable": hv == Some(json!("world_readable")),
        "guest_can_join": guest == Some(json!("can_join")),
        "join_rule": join_rule,
    });
    for (k, v) in [
        ("name", name),
        ("topic", topic),
        ("canonical_alias", alias),
        ("avatar_url", avatar),
    ] {
        if let Some(v) = v {
            entry[k] = v;
        }
    }
    Ok(entry)
}

/// The public room list, paginated by offset tokens.
pub async fn public_rooms_list(
    core: &Core,
    limit: Option<usize>,
    since: Option<&str>,
) -> Result<Value> {
    let offset: usize = since
        .and_then(|t| t.strip_prefix('o'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let limit = limit.unwrap_or(100).clamp(1, 500);
    let (chunk, total) = core
        .db
        .read(move |c| {
            let all = rooms::public_rooms(c)?;
            let total = all.len();
            let mut chunk = Vec::new();
            for r in all.iter().skip(offset).take(limit) {
                chunk.push(room_summary(c, r)?);
            }
            Ok((chunk, total))
        })
        .await?;
    let mut body = json!({"chunk": chunk, "total_room_count_estimate": total});
    if offset + limit < total {
        body["next_batch"] = json!(format!("o{}", offset + limit));
    }
    if offset > 0 {
        body["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
    }
    Ok(body)
}
