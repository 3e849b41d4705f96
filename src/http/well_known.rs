//! `/.well-known/matrix/server` and `/.well-known/matrix/client`, from `[well_known]` in the
//! config (404 `M_NOT_FOUND` when not configured). Served on both listeners: whichever one
//! the reverse proxy for the server name's port 443 reaches answers.

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::error::{Error, Result};
use crate::services::Services;

/// Others may keep our delegation this long (the spec's default is 24 hours).
const CACHE_CONTROL: &str = "max-age=86400";

pub async fn server(s: web::Data<Services>) -> Result<HttpResponse> {
    let delegated = &s.core.config.well_known.server;
    if delegated.is_empty() {
        return Err(Error::not_found("no server delegation configured"));
    }
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", CACHE_CONTROL))
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .json(json!({"m.server": delegated})))
}

pub async fn client(s: web::Data<Services>) -> Result<HttpResponse> {
    let base = &s.core.config.well_known.client_base_url;
    if base.is_empty() {
        return Err(Error::not_found("no client discovery configured"));
    }
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", CACHE_CONTROL))
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .json(json!({"m.homeserver": {"base_url": base}})))
}

/// Registers both routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/.well-known/matrix/server", web::get().to(server))
        .route("/.well-known/matrix/client", web::get().to(client));
}
