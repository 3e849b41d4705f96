//! `POST /search` (server-side search of room events) and `POST /user_directory/search`.
//! Thin: the body is checked and answered by `crate::search`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::Value;

use super::events::viewer;
use super::tokens::AuthedUser;
use crate::error::Result;
use crate::http::body::JsonBody;
use crate::services::Services;

type Data = web::Data<Services>;

#[derive(Deserialize)]
pub struct SearchQuery {
    next_batch: Option<String>,
}

pub async fn search(
    s: Data,
    user: AuthedUser,
    q: web::Query<SearchQuery>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let req = crate::search::parse_room_events(&body, q.next_batch.as_deref())?;
    let out = crate::search::room_events(&s, viewer(&user), req).await?;
    Ok(HttpResponse::Ok().json(out))
}

pub async fn user_directory(
    s: Data,
    user: AuthedUser,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let (words, limit) = crate::search::parse_directory(&body)?;
    let out = crate::search::user_directory(&s, user.user_id.as_str(), words, limit).await?;
    Ok(HttpResponse::Ok().json(out))
}
