//! `GET /sync` (with long-polling) and the filter endpoints.

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::rooms::view::Viewer;
use crate::services::Services;
use crate::storage::{AnyConnection, StorageResult, account};
use crate::sync::filter::Filter;
use crate::sync::{self, SyncRequest, SyncToken};

type Data = web::Data<Services>;

#[derive(Deserialize)]
pub struct SyncQuery {
    since: Option<String>,
    timeout: Option<u64>,
    filter: Option<String>,
    full_state: Option<bool>,
    #[allow(dead_code)]
    set_presence: Option<String>,
}

async fn load_filter(s: &Services, user: &AuthedUser, filter: Option<&str>) -> Result<Filter> {
    let Some(f) = filter.filter(|f| !f.is_empty()) else {
        return Ok(Filter::default());
    };
    let value: Value = if f.trim_start().starts_with('{') {
        serde_json::from_str(f).map_err(|e| Error::bad_json(format!("invalid filter: {e}")))?
    } else {
        let id: i64 = f
            .parse()
            .map_err(|_| Error::invalid_param("invalid filter ID"))?;
        let u = user.user_id.to_string();
        let json = s
            .core
            .db
            .read(move |c| account::get_filter(c, &u, id))
            .await?
            .ok_or_else(|| Error::not_found("unknown filter"))?;
        serde_json::from_str(&json).map_err(|e| Error::internal(format!("stored filter: {e}")))?
    };
    Filter::from_value(value).map_err(|e| Error::bad_json(format!("invalid filter: {e}")))
}

/// What one long-poll's reads share.
struct Poll {
    viewer: Viewer,
    filter: Filter,
    full_state: bool,
}

/// One read of the sync tables at `(since, upto, typing_now)`: `f` is [`sync::compute`] or
/// [`sync::wake::answer`], given the request built here. Answers the result with when the
/// read began and returned on its thread (`observe::wake`).
async fn read_at<T, F>(
    s: &Data,
    poll: &Poll,
    (since, upto, typing_now): (Option<SyncToken>, i64, i64),
    f: F,
) -> Result<(T, (Instant, Instant))>
where
    T: Send + 'static,
    F: FnOnce(&mut AnyConnection, &SyncRequest<'_>) -> StorageResult<T> + Send + 'static,
{
    let s2 = s.clone();
    let (viewer, filter, full_state) = (poll.viewer.clone(), poll.filter.clone(), poll.full_state);
    Ok(s.core
        .db
        .read(move |c| {
            timed(|| {
                f(
                    c,
                    &SyncRequest {
                        viewer,
                        since,
                        upto,
                        typing_now,
                        filter: &filter,
                        full_state,
                        typing: &s2.typing,
                    },
                )
            })
        })
        .await?)
}

/// Runs a read, answering its result with when it began and returned (`observe::wake`).
fn timed<T, E>(
    f: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<(T, (Instant, Instant)), E> {
    let began = Instant::now();
    let v = f()?;
    Ok((v, (began, Instant::now())))
}

pub async fn sync(s: Data, user: AuthedUser, q: web::Query<SyncQuery>) -> Result<HttpResponse> {
    let since = match &q.since {
        Some(t) => {
            Some(SyncToken::parse(t).ok_or_else(|| Error::invalid_param("invalid since token"))?)
        }
        None => None,
    };
    let filter = load_filter(&s, &user, q.filter.as_deref()).await?;
    if let Some(t) = since {
        // The client has what the response up to `since` carried: drop those to-device messages.
        let acked = t.stream.min(s.core.notifier.frontier());
        crate::e2ee::to_device::acknowledge(&s.core, user.user_id.as_str(), &user.device_id, acked)
            .await?;
    }
    let timeout = Duration::from_millis(
        q.timeout
            .unwrap_or(0)
            .min(s.core.config.limits.max_sync_timeout_ms),
    );
    let deadline = Instant::now() + timeout;
    let full_state = q.full_state.unwrap_or(false);
    let poll = Poll {
        viewer: Viewer {
            user_id: user.user_id.to_string(),
            device_id: user.device_id.clone(),
        },
        filter,
        full_state,
    };
    let filter = &poll.filter;
    // When the long-poll was last woken (for weft_sync_wakeup_duration_seconds).
    let mut woken: Option<Instant> = None;
    // The frontier and typing serial of the last read that found nothing new: a wake-up
    // from there may answer from the notifier's notes (`sync::wake`).
    let mut quiet: Option<(i64, i64)> = None;
    let incremental = since.is_some() && !full_state && sync::wake::filter_allows(filter);
    let requested = since;
    loop {
        // Subscribe before reading: a write completing in between still wakes us.
        let mut rx = s.core.notifier.subscribe(user.user_id.as_str());
        let upto = s.core.notifier.frontier();
        // A token from the future (e.g. positions lost in a crash) reads as "now".
        let since = requested.map(|t| SyncToken {
            stream: t.stream.min(upto),
            typing: t.typing,
        });
        let typing_now = s.typing.current();
        let plan = match quiet {
            Some((q_upto, q_typing))
                if incremental
                    && woken.is_some()
                    && q_typing == typing_now
                    && requested.is_some_and(|t| t.stream <= q_upto) =>
            {
                s.core
                    .notifier
                    .notes_between(q_upto, upto)
                    .and_then(|notes| {
                        sync::wake::plan(&notes, (q_upto, upto), user.user_id.as_str(), filter)
                    })
            }
            _ => None,
        };
        let mut path = "full";
        let mut read = crate::observe::wake::ReadSpan::default();
        let mut result = None;
        let mut wait_on = false;
        match plan {
            // Nothing in the window concerns this user: wait on without reading.
            Some(p) if p.rooms.is_empty() && Instant::now() < deadline => wait_on = true,
            Some(p) => {
                let (answer, span) =
                    read_at(&s, &poll, (since, upto, typing_now), move |c, req| {
                        sync::wake::answer(c, &p, req)
                    })
                    .await?;
                read.add(span);
                result = answer;
                if result.is_some() {
                    path = "incremental";
                }
            }
            None => {}
        }
        if result.is_none() && !wait_on {
            let (computed, span) =
                read_at(&s, &poll, (since, upto, typing_now), sync::compute).await?;
            read.add(span);
            result = Some(computed);
        }
        let now = Instant::now();
        if let Some(result) = result
            && (result.has_changes || since.is_none() || full_state || now >= deadline)
        {
            if let Some(w) = woken {
                crate::observe::metrics::sync_wakeup(w.elapsed().as_secs_f64());
                crate::observe::metrics::sync_woken_answer(path);
            }
            let response = HttpResponse::Ok().json(result.body);
            if let Some(w) = woken {
                let after = quiet.map(|q| q.0).or(since.map(|t| t.stream));
                crate::observe::wake::answered(after.unwrap_or(i64::MIN), upto, w, read);
            }
            return Ok(response);
        }
        quiet = Some((upto, typing_now));
        let parked = s.core.notifier.park();
        let waited =
            tokio::time::timeout(deadline.saturating_duration_since(now), rx.changed()).await;
        drop(parked);
        if waited.is_err() {
            // Timed out: one last read so the token moves on.
            continue;
        }
        woken = Some(Instant::now());
    }
}

pub async fn create_filter(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    if path.as_str() != user.user_id.as_str() {
        return Err(Error::forbidden("cannot create filters for other users"));
    }
    Filter::from_value(body.clone())
        .map_err(|e| Error::bad_json(format!("invalid filter: {e}")))?;
    let (u, json) = (user.user_id.to_string(), body.to_string());
    let id = s
        .core
        .db
        .write(user.user_id.as_str(), move |c| {
            account::create_filter(c, &u, &json)
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({"filter_id": id.to_string()})))
}

pub async fn get_filter(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (owner, id) = path.into_inner();
    if owner != user.user_id.as_str() {
        return Err(Error::forbidden("cannot read filters of other users"));
    }
    let id: i64 = id.parse().map_err(|_| Error::not_found("unknown filter"))?;
    let u = user.user_id.to_string();
    let json = s
        .core
        .db
        .read(move |c| account::get_filter(c, &u, id))
        .await?
        .ok_or_else(|| Error::not_found("unknown filter"))?;
    let v: Value = serde_json::from_str(&json).map_err(|e| Error::internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(v))
}
