//! The operator's HTTP face, on the client listener: `GET /health` (readiness, open to
//! all), `GET /metrics` (Prometheus text, allowed addresses only), the admin API
//! `/_weft/admin/v1/...` (server admins only, checked fresh on every request, Matrix errors)
//! and the live status page `/_weft/admin/status` (static HTML + script; the data comes
//! from `/_weft/admin/v1/status` with the admin's access token).
//!
//! Handlers are thin: they parse and authorize, then call [`crate::admin`].

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::admin::{self, rooms::PurgePoint};
use crate::client_api::tokens::AdminUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::services::Services;

type Data = web::Data<Services>;

const STATUS_HTML: &str = include_str!("status.html");
const STATUS_JS: &str = include_str!("status.js");

/// Routes on the client listener. `metrics_here`: serve `/metrics` on this listener too.
pub fn configure(cfg: &mut web::ServiceConfig, metrics_path: Option<&str>) {
    use web::{delete, get, post, put};
    cfg.route("/health", get().to(health));
    if let Some(p) = metrics_path {
        cfg.route(p, get().to(metrics));
    }
    const V1: &str = "/_weft/admin/v1";
    let r = |p: &str| format!("{V1}{p}");
    cfg.route("/_weft/admin/status", get().to(status_page))
        .route("/_weft/admin/status.js", get().to(status_script))
        .route(&r("/status"), get().to(status))
        .route(&r("/users"), get().to(users_list))
        .route(&r("/users"), post().to(user_create))
        .route(&r("/users/{user_id}"), get().to(user_show))
        .route(
            &r("/users/{user_id}/deactivate"),
            post().to(user_deactivate),
        )
        .route(&r("/users/{user_id}/password"), post().to(user_password))
        .route(&r("/users/{user_id}/admin"), put().to(user_admin))
        .route(&r("/rooms"), get().to(rooms_list))
        .route(&r("/rooms/{room_id}"), get().to(room_show))
        .route(&r("/rooms/{room_id}"), delete().to(room_delete))
        .route(&r("/rooms/{room_id}/purge"), post().to(room_purge))
        .route(&r("/server/keys"), get().to(server_keys));
}

/// Routes of a separate metrics listener (`metrics.listener`).
pub fn configure_metrics_only(cfg: &mut web::ServiceConfig, path: &str) {
    cfg.route(path, web::get().to(metrics));
}

// ---- health and metrics -------------------------------------------------------------------

/// The last readiness result: callers within [`HEALTH_REUSE`] of it share it, so a flood
/// of probes costs the database at most one check per interval.
static LAST_HEALTH: parking_lot::Mutex<Option<(std::time::Instant, (bool, bool))>> =
    parking_lot::Mutex::new(None);
const HEALTH_REUSE: Duration = Duration::from_secs(1);

/// Readiness: the database answers a read and every writer commits an empty job (5 s each).
pub async fn health(s: Data) -> HttpResponse {
    let recent = LAST_HEALTH
        .lock()
        .filter(|(at, _)| at.elapsed() < HEALTH_REUSE)
        .map(|(_, r)| r);
    let (db, writer) = match recent {
        Some(r) => r,
        None => {
            let r = s.core.db.health(Duration::from_secs(5)).await;
            *LAST_HEALTH.lock() = Some((std::time::Instant::now(), r));
            r
        }
    };
    let body = json!({
        "status": if db && writer { "ok" } else { "unavailable" },
        "database": if db { "ok" } else { "unreachable" },
        "writer": if writer { "ok" } else { "stalled" },
    });
    if db && writer {
        HttpResponse::Ok().json(body)
    } else {
        tracing::warn!(db, writer, "health check failed");
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Whether the peer of a request may scrape metrics.
fn scrape_allowed(s: &Services, req: &HttpRequest) -> bool {
    let Ok(nets) = s.core.config.metrics.allowed_nets() else {
        return false;
    };
    req.peer_addr()
        .map(|a| a.ip())
        .map(|ip| match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        })
        .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
}

pub async fn metrics(s: Data, req: HttpRequest) -> Result<HttpResponse> {
    if !scrape_allowed(&s, &req) {
        tracing::info!(peer = ?req.peer_addr(), "metrics scrape refused (metrics.allowed)");
        return Err(Error::forbidden("metrics are not served to this address"));
    }
    let st = admin::status::gather(&s).await?;
    admin::status::refresh_gauges(&s, &st);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::observe::metrics::render()))
}

// ---- status page ----------------------------------------------------------------------------

async fn status_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .insert_header((
            "content-security-policy",
            "default-src 'self'; style-src 'self' 'unsafe-inline'",
        ))
        .body(STATUS_HTML)
}

async fn status_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("cache-control", "no-store"))
        .body(STATUS_JS)
}

async fn status(s: Data, _admin: AdminUser) -> Result<HttpResponse> {
    let st = admin::status::gather(&s).await?;
    Ok(HttpResponse::Ok().json(st))
}

// ---- users --------------------------------------------------------------------------------

async fn users_list(s: Data, _admin: AdminUser) -> Result<HttpResponse> {
    let users = admin::users::list(&s.core).await?;
    Ok(HttpResponse::Ok().json(json!({ "users": users })))
}

async fn user_show(s: Data, _admin: AdminUser, path: web::Path<String>) -> Result<HttpResponse> {
    let user_id = admin::users::local_user_id(&s.core, &path)?;
    Ok(HttpResponse::Ok().json(admin::users::show(&s.core, &user_id).await?))
}

#[derive(Deserialize)]
struct CreateBody {
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn user_create(
    s: Data,
    admin: AdminUser,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<HttpResponse> {
    let user_id = admin::users::create(&s.core, &body.username, body.password, body.admin).await?;
    tracing::info!(by = %admin.0.user_id, user = %user_id, "admin created a user");
    Ok(HttpResponse::Ok().json(json!({ "user_id": user_id })))
}

async fn user_deactivate(
    s: Data,
    admin: AdminUser,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let user_id = admin::users::local_user_id(&s.core, &path)?;
    let hashes = admin::users::deactivate(&s.core, &user_id).await?;
    s.tokens.forget(&hashes);
    s.tokens.forget_user(&user_id);
    let services: Arc<Services> = s.clone().into_inner();
    let before = admin::users::show(&s.core, &user_id)
        .await?
        .joined_rooms
        .unwrap_or_default();
    admin::sweep_deactivated(&services).await;
    tracing::info!(by = %admin.0.user_id, user = %user_id, "admin deactivated a user");
    Ok(HttpResponse::Ok().json(json!({ "user_id": user_id, "left_rooms": before })))
}

#[derive(Deserialize)]
struct PasswordBody {
    password: String,
}

async fn user_password(
    s: Data,
    admin: AdminUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<PasswordBody>,
) -> Result<HttpResponse> {
    let user_id = admin::users::local_user_id(&s.core, &path)?;
    let hashes = admin::users::reset_password(&s.core, &user_id, body.password).await?;
    s.tokens.forget(&hashes);
    tracing::info!(by = %admin.0.user_id, user = %user_id, "admin reset a password");
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
struct AdminBody {
    admin: bool,
}

async fn user_admin(
    s: Data,
    admin: AdminUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<AdminBody>,
) -> Result<HttpResponse> {
    let user_id = admin::users::local_user_id(&s.core, &path)?;
    admin::users::set_admin(&s.core, &user_id, body.admin).await?;
    s.tokens.forget_user(&user_id);
    tracing::info!(by = %admin.0.user_id, user = %user_id, admin = body.admin, "admin flag changed");
    Ok(HttpResponse::Ok().json(json!({ "user_id": user_id, "admin": body.admin })))
}

// ---- rooms --------------------------------------------------------------------------------

async fn rooms_list(s: Data, _admin: AdminUser) -> Result<HttpResponse> {
    let rooms = admin::rooms::list(&s.core).await?;
    Ok(HttpResponse::Ok().json(json!({ "rooms": rooms })))
}

async fn room_show(s: Data, _admin: AdminUser, path: web::Path<String>) -> Result<HttpResponse> {
    let room = admin::rooms::parse_room_id(&path)?;
    Ok(HttpResponse::Ok().json(admin::rooms::show(&s.core, room.as_str()).await?))
}

#[derive(Deserialize, Default)]
struct DeleteBody {
    #[serde(default)]
    purge: bool,
}

async fn room_delete(
    s: Data,
    admin: AdminUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<DeleteBody>,
) -> Result<HttpResponse> {
    let room = admin::rooms::parse_room_id(&path)?;
    let purge = body.purge;
    let services: Arc<Services> = s.clone().into_inner();
    let done = admin::rooms::delete(&services, room.as_str(), purge).await?;
    tracing::info!(by = %admin.0.user_id, room = %room, "admin deleted a room");
    Ok(HttpResponse::Ok().json(done))
}

#[derive(Deserialize)]
struct PurgeBody {
    before_ts: Option<i64>,
    before_event_id: Option<String>,
}

async fn room_purge(
    s: Data,
    admin: AdminUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<PurgeBody>,
) -> Result<HttpResponse> {
    let room = admin::rooms::parse_room_id(&path)?;
    let point = match (body.before_event_id, body.before_ts) {
        (Some(e), None) => PurgePoint::Event(e),
        (None, Some(ts)) => PurgePoint::Ts(ts),
        _ => {
            return Err(Error::MissingParam(
                "give exactly one of before_ts and before_event_id".into(),
            ));
        }
    };
    let n = admin::rooms::purge(&s, room.as_str(), point).await?;
    tracing::info!(by = %admin.0.user_id, room = %room, purged = n, "admin purged history");
    Ok(HttpResponse::Ok().json(json!({ "purged_events": n })))
}

// ---- keys ---------------------------------------------------------------------------------

async fn server_keys(s: Data, _admin: AdminUser) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(crate::admin::keys_json(&s.core)))
}
