//! History for LM peers (§9.7, §10): `event` answers the bare event, `backfill` walks the
//! line back from `v` (inclusive) and answers oldest first (the draft's order). Only
//! servers that may see an event get it; rejected events and LPDUs are never served.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::federation::auth::Signed;
use crate::federation::inbound::history::{require_may_see, server_may_see_row};
use crate::services::Services;
use crate::storage::{events, now_ms};

/// Most events one `backfill` answer carries.
const MAX_LIMIT: usize = 100;

pub async fn event(
    s: web::Data<Services>,
    signed: Signed,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let event_id = path.into_inner();
    let origin = signed.origin.clone();
    let found = s
        .core
        .db
        .read(move |c| {
            let Some(row) = events::get_event(c, &event_id)? else {
                return Ok(None);
            };
            if row.rejected.is_some() {
                return Ok(None);
            }
            if !server_may_see_row(c, &origin, &row)? {
                return Ok(Some(None));
            }
            Ok(Some(serde_json::from_str::<Value>(&row.json).ok()))
        })
        .await?;
    let pdu = found
        .ok_or_else(|| Error::not_found("event not found"))?
        .ok_or_else(|| Error::forbidden("your server has no member in the room at that point"))?;
    Ok(HttpResponse::Ok().json(pdu))
}

#[derive(Deserialize)]
pub struct BackfillQuery {
    limit: Option<usize>,
}

pub async fn backfill(
    s: web::Data<Services>,
    signed: Signed,
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<BackfillQuery>,
) -> Result<HttpResponse> {
    let room_id = path.into_inner();
    let v = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "v")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| Error::MissingParam("missing v".into()))?;
    require_may_see(&s, &signed.origin, &room_id, vec![v.clone()]).await?;
    let limit = q.limit.unwrap_or(10).clamp(1, MAX_LIMIT);
    let origin = signed.origin.clone();
    let pdus = s
        .core
        .db
        .read(move |c| {
            let mut out = Vec::new();
            let mut next = Some(v);
            while let Some(id) = next.take() {
                if out.len() >= limit {
                    break;
                }
                let Some(row) = events::get_event(c, &id)? else {
                    break;
                };
                if row.room_id != room_id || row.outlier {
                    break;
                }
                let json: Value = serde_json::from_str(&row.json).unwrap_or(Value::Null);
                next = json
                    .get("prev_events")
                    .and_then(Value::as_array)
                    .and_then(|p| p.first())
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if row.rejected.is_none() && server_may_see_row(c, &origin, &row)? {
                    out.push(json);
                }
            }
            out.reverse();
            Ok(out)
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "origin": s.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
    })))
}
