//! Pushers (`/pushers`, `/pushers/set`) and the notification list (`/notifications`).
//!
//! A pusher's body is checked by the pure rule `weft_protocol::push::parse_pusher`; its
//! gateway URL must be `http(s)://host[:port]/_matrix/push/v1/notify` and, when the host is
//! an address or resolves now, pass the outbound address policy (delivery checks again at
//! every connection, so a name that later resolves elsewhere is still refused).

use std::sync::Arc;

use serde_json::{Value, json};
use weft_protocol::push::{self as rules, PusherChange, PusherError};

use crate::error::{Error, Result};
use crate::net::NetContext;
use crate::rooms::view::{self, Versions, Viewer};
use crate::services::Services;
use crate::storage::push::{self, PusherRow};
use crate::storage::{self, events};

/// The path a gateway URL must have (the spec's push gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

fn pusher_error(e: PusherError) -> Error {
    match e {
        PusherError::Missing(f) => Error::MissingParam(format!("missing field {f}")),
        PusherError::Invalid(m) => Error::invalid_param(m),
    }
}

/// Checks a gateway URL: scheme, path, and the address policy for what the host is now.
pub async fn check_gateway_url(net: &NetContext, raw: &str) -> Result<()> {
    let url = url::Url::parse(raw).map_err(|_| Error::invalid_param("data.url is not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(Error::invalid_param(
            "data.url must be an https or http URL",
        ));
    }
    if url.path() != NOTIFY_PATH {
        return Err(Error::invalid_param(format!(
            "data.url must have the path {NOTIFY_PATH}"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid_param("data.url must not carry credentials"));
    }
    let Some(host) = url.host_str() else {
        return Err(Error::invalid_param("data.url has no host"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(443);
    if let Err(e) = net.allowed_addrs(host, port).await {
        // A literal address is judged now; a name that does not resolve yet is judged when
        // the push is sent.
        if !e.starts_with("cannot resolve") {
            return Err(Error::invalid_param(format!(
                "data.url is not a permitted address: {e}"
            )));
        }
    }
    Ok(())
}

fn pusher_json(p: &PusherRow) -> Value {
    let mut v = json!({
        "app_id": p.app_id,
        "pushkey": p.pushkey,
        "kind": p.kind,
        "app_display_name": p.app_display_name,
        "device_display_name": p.device_display_name,
        "lang": p.lang,
        "data": serde_json::from_str::<Value>(&p.data).unwrap_or(json!({})),
    });
    if let Some(t) = &p.profile_tag {
        v["profile_tag"] = json!(t);
    }
    v
}

/// `GET /pushers`.
pub async fn list(s: &Services, user_id: &str) -> Result<Value> {
    let users = vec![user_id.to_owned()];
    let rows = s.core.db.read(move |c| push::pushers_of(c, &users)).await?;
    Ok(json!({"pushers": rows.iter().map(pusher_json).collect::<Vec<_>>()}))
}

/// `POST /pushers/set`, by the access token of `device_id` (a new pusher belongs to that
/// device, and goes when the device is deleted: `devices::delete_devices`).
pub async fn set(
    s: &Services,
    net: &Arc<NetContext>,
    user_id: &str,
    device_id: &str,
    body: &Value,
) -> Result<()> {
    let change = rules::parse_pusher(body).map_err(pusher_error)?;
    let user = user_id.to_owned();
    match change {
        PusherChange::Delete { app_id, pushkey } => {
            s.core
                .db
                .write(user_id, move |c| {
                    push::delete_pusher(c, &user, &app_id, &pushkey)
                })
                .await?;
        }
        PusherChange::Set(spec) => {
            let url = spec.data.get("url").and_then(Value::as_str).unwrap_or("");
            check_gateway_url(net, url).await?;
            let row = PusherRow {
                user_id: user,
                app_id: spec.app_id,
                pushkey: spec.pushkey,
                kind: spec.kind,
                app_display_name: spec.app_display_name,
                device_display_name: spec.device_display_name,
                profile_tag: spec.profile_tag,
                lang: spec.lang,
                data: Value::Object(spec.data).to_string(),
                created_ts: storage::now_ms(),
                device_id: Some(device_id.to_owned()),
            };
            let append = spec.append;
            // One shard for every pusher change: `append: false` touches other users' rows.
            s.core
                .db
                .write("pushers", move |c| push::set_pusher(c, &row, append))
                .await?;
        }
    }
    Ok(())
}

/// Largest page of `/notifications`.
pub const MAX_LIMIT: i64 = 100;

/// `GET /notifications`: newest first; `from` is the `next_token` of the previous page.
pub async fn notifications(
    s: &Services,
    viewer: Viewer,
    from: Option<&str>,
    limit: Option<i64>,
    only: Option<&str>,
) -> Result<Value> {
    let before = match from {
        None | Some("") => None,
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| Error::invalid_param("from is not a token from this server"))?,
        ),
    };
    let limit = limit.unwrap_or(20).clamp(1, MAX_LIMIT);
    let only_highlight = match only {
        None | Some("") => false,
        Some("highlight") => true,
        Some(o) => return Err(Error::invalid_param(format!("unknown only={o}"))),
    };
    s.core
        .db
        .read(move |c| {
            let rows = push::notifications(c, &viewer.user_id, before, limit, only_highlight)?;
            let ids: Vec<String> = rows.iter().map(|r| r.event_id.clone()).collect();
            let events = events::get_events(c, &ids)?;
            let mut versions = Versions::default();
            let mut reads = std::collections::HashMap::new();
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let Some(ev) = events.iter().find(|e| e.event_id == r.event_id) else {
                    continue;
                };
                let version = versions.get(c, &r.room_id)?;
                let Some(event) =
                    view::client_events(c, std::slice::from_ref(ev), version, &viewer)?
                        .into_iter()
                        .next()
                else {
                    continue;
                };
                if !reads.contains_key(&r.room_id) {
                    reads.insert(
                        r.room_id.clone(),
                        push::read_up_to(c, &viewer.user_id, &r.room_id)?,
                    );
                }
                let read = reads
                    .get(&r.room_id)
                    .is_some_and(|u| u.is_read(&r.thread_id, r.stream_ordering));
                out.push(json!({
                    "actions": serde_json::from_str::<Value>(&r.actions).unwrap_or(json!([])),
                    "event": event,
                    "read": read,
                    "room_id": r.room_id,
                    "ts": r.ts,
                }));
            }
            let mut body = json!({"notifications": out});
            if rows.len() as i64 == limit
                && let Some(last) = rows.last()
            {
                body["next_token"] = json!(last.stream_ordering.to_string());
            }
            Ok(body)
        })
        .await
        .map_err(Error::from)
}
