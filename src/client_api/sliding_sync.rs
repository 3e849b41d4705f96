//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (MSC4186): parse,
//! resume the connection at `pos`, acknowledge delivered to-device messages, then compute
//! and long-poll as `/sync` does. The rules are in [`crate::sync::sliding`].

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::rooms::view::Viewer;
use crate::services::Services;
use crate::sync::sliding::connections::PosError;
use crate::sync::sliding::{self, Computation};

type Data = web::Data<Services>;

/// Longest `conn_id` accepted.
const MAX_CONN_ID: usize = 128;

#[derive(Deserialize)]
pub struct SlidingQuery {
    pos: Option<String>,
    timeout: Option<u64>,
    #[allow(dead_code)]
    set_presence: Option<String>,
}

pub async fn sync(
    s: Data,
    user: AuthedUser,
    q: web::Query<SlidingQuery>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let request = sliding::parse_request(&body).map_err(Error::bad_json)?;
    let conn_id = match body.get("conn_id") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(c)) if c.len() <= MAX_CONN_ID => c.clone(),
        Some(_) => return Err(Error::invalid_param("invalid conn_id")),
    };
    let txn_id = body
        .get("txn_id")
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    // `pos` is a query parameter in the dialect clients speak; the newer MSC puts it in
    // the body.
    let pos = q
        .pos
        .clone()
        .or_else(|| body.get("pos").and_then(|p| p.as_str()).map(str::to_owned))
        .filter(|p| !p.is_empty());
    let resumed = s
        .sliding
        .resume(
            user.user_id.as_str(),
            &user.device_id,
            &conn_id,
            pos.as_deref(),
        )
        .map_err(|e| match e {
            PosError::Malformed => Error::invalid_param("malformed pos"),
            PosError::Unknown => Error::UnknownPos("unknown pos: start a new connection".into()),
        })?;
    if let Some(since) = request
        .extensions
        .to_device_since
        .filter(|_| request.extensions.to_device)
    {
        // The client holds what the to-device batch up to `since` carried.
        let acked = since.min(s.core.notifier.frontier());
        crate::e2ee::to_device::acknowledge(&s.core, user.user_id.as_str(), &user.device_id, acked)
            .await?;
    }
    let timeout = Duration::from_millis(
        q.timeout
            .unwrap_or(0)
            .min(s.core.config.limits.max_sync_timeout_ms),
    );
    let deadline = Instant::now() + timeout;
    let viewer = Viewer {
        user_id: user.user_id.to_string(),
        device_id: user.device_id.clone(),
    };
    let first = resumed.state.stream.is_none();
    loop {
        // Subscribe before reading: a write completing in between still wakes us.
        let mut rx = s.core.notifier.subscribe(user.user_id.as_str());
        let upto = s.core.notifier.frontier();
        let typing_now = s.typing.current();
        let (s2, v, r, prev) = (
            s.clone(),
            viewer.clone(),
            request.clone(),
            std::sync::Arc::clone(&resumed.state),
        );
        let answer = s
            .core
            .db
            .read(move |c| {
                sliding::compute(
                    c,
                    &Computation {
                        viewer: &v,
                        request: &r,
                        prev: &prev,
                        upto: upto.max(prev.stream.unwrap_or(i64::MIN)),
                        typing_now,
                        typing: &s2.typing,
                    },
                )
            })
            .await?;
        let now = Instant::now();
        if answer.has_changes || first || now >= deadline {
            let pos = s.sliding.commit(
                user.user_id.as_str(),
                &user.device_id,
                &conn_id,
                &resumed.nonce,
                answer.state,
            );
            let mut body = answer.body;
            body["pos"] = json!(pos);
            if let Some(t) = txn_id {
                body["txn_id"] = json!(t);
            }
            return Ok(HttpResponse::Ok().json(body));
        }
        if tokio::time::timeout(deadline - now, rx.changed())
            .await
            .is_err()
        {
            // Timed out: one last read so the position moves on.
            continue;
        }
    }
}
