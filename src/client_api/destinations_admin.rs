//! The operator's view of outbound federation (admins only):
//!
//! * `GET /_weft/admin/v1/destinations`: every destination with queued work or retry
//!   state — backlog, failures, whether it is down (probed) or in catch-up mode, last
//!   success and contact, next retry and probe, what ended its last outage — plus the
//!   probes sent and actors running;
//! * `POST /_weft/admin/v1/destinations/{server}/reset`: forget a destination's backoff
//!   and send its queue now (404 `M_NOT_FOUND` when nothing is known of it).
//!
//! Thin: the data and the reset live in `federation::outbound`.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::services::Services;

fn admin_only(user: &AuthedUser) -> Result<()> {
    if user.is_admin {
        Ok(())
    } else {
        Err(Error::forbidden("this endpoint is for server admins"))
    }
}

pub async fn list(s: web::Data<Services>, user: AuthedUser) -> Result<HttpResponse> {
    admin_only(&user)?;
    let Some(status) = s.remote()?.delivery_status().await? else {
        return Ok(HttpResponse::Ok().json(json!({
            "destinations": [], "probes_sent": 0, "active_actors": 0,
        })));
    };
    Ok(HttpResponse::Ok().json(status))
}

pub async fn reset(
    s: web::Data<Services>,
    user: AuthedUser,
    server: web::Path<String>,
) -> Result<HttpResponse> {
    admin_only(&user)?;
    let server = server.into_inner();
    if ruma::ServerName::parse(&server).is_err() {
        return Err(Error::invalid_param(format!(
            "{server:?} is not a server name"
        )));
    }
    let Some(known) = s.remote()?.reset_destination(&server).await? else {
        return Err(Error::not_found("federation is disabled"));
    };
    if !known {
        return Err(Error::not_found(format!(
            "nothing is queued or known for {server}"
        )));
    }
    Ok(HttpResponse::Ok().json(json!({})))
}
