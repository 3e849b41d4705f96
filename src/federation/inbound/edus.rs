//! EDUs received in a transaction: typing notifications and read receipts from users of the
//! sending server (anything claimed for another server's users is ignored). Unknown EDU
//! types are accepted and ignored, as the spec asks.

use std::time::Duration;

use serde_json::Value;

use crate::services::Services;
use crate::storage::rooms;

fn server_of(user: &str) -> &str {
    user.split_once(':').map(|(_, s)| s).unwrap_or_default()
}

async fn local_audience(s: &Services, room_id: &str) -> Vec<String> {
    let r = room_id.to_owned();
    let members = s
        .core
        .db
        .read(move |c| rooms::members_with(c, &r, "join"))
        .await
        .unwrap_or_default();
    let suffix = format!(":{}", s.server_name());
    members
        .into_iter()
        .filter(|m| m.ends_with(&suffix))
        .collect()
}

async fn is_joined(s: &Services, room_id: &str, user: &str) -> bool {
    let (r, u) = (room_id.to_owned(), user.to_owned());
    matches!(
        s.core.db.read(move |c| rooms::get_membership(c, &r, &u)).await,
        Ok(Some(m)) if m.membership == "join"
    )
}

pub async fn handle(s: &Services, origin: &str, edus: Vec<Value>) {
    for edu in edus {
        let kind = edu
            .get("edu_type")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_owned();
        let content = edu.get("content").cloned().unwrap_or(Value::Null);
        match kind.as_str() {
            "m.typing" => typing(s, origin, &content).await,
            "m.receipt" => receipts(s, origin, &content).await,
            other => {
                if !super::e2ee::handle_edu(s, origin, other, &content).await {
                    tracing::debug!(origin, edu_type = other, "ignoring EDU");
                }
            }
        }
    }
}

async fn typing(s: &Services, origin: &str, content: &Value) {
    let (Some(room), Some(user)) = (
        content.get("room_id").and_then(|r| r.as_str()),
        content.get("user_id").and_then(|u| u.as_str()),
    ) else {
        return;
    };
    if server_of(user) != origin || !is_joined(s, room, user).await {
        return;
    }
    let typing = content
        .get("typing")
        .and_then(|t| t.as_bool())
        .unwrap_or(false);
    let timeout = Duration::from_millis(
        content
            .get("timeout")
            .and_then(|t| t.as_u64())
            .unwrap_or(30_000)
            .min(120_000),
    );
    let audience = local_audience(s, room).await;
    if s.typing.set(room, user, typing, timeout, audience.clone()) {
        s.core.notifier.wake(audience);
    }
}

async fn receipts(s: &Services, origin: &str, content: &Value) {
    let Some(rooms_map) = content.as_object() else {
        return;
    };
    for (room, by_type) in rooms_map {
        let Some(by_type) = by_type.as_object() else {
            continue;
        };
        for (receipt_type, by_user) in by_type {
            if receipt_type != "m.read" {
                continue;
            }
            let Some(by_user) = by_user.as_object() else {
                continue;
            };
            for (user, receipt) in by_user {
                if server_of(user) != origin || !is_joined(s, room, user).await {
                    continue;
                }
                let event_ids: Vec<String> = receipt
                    .get("event_ids")
                    .and_then(|e| e.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let thread = receipt
                    .get("data")
                    .and_then(|d| d.get("thread_id"))
                    .and_then(|t| t.as_str())
                    .map(str::to_owned);
                for event_id in event_ids {
                    if let Err(e) = crate::rooms::receipts::store(
                        &s.core,
                        room,
                        user,
                        "m.read",
                        &event_id,
                        thread.as_deref(),
                        false,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "could not store a remote receipt");
                    }
                }
            }
        }
    }
}
