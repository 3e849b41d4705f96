//! Registration, login, logout, whoami, devices and password changes.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::tokens::{self, AuthedUser};
use crate::accounts;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::services::Services;
use crate::storage::users;

type Data = web::Data<Services>;

fn ok(v: Value) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(v))
}

/// A user-interactive-auth challenge offering `stages` (as one flow).
fn uia_challenge(stage: &str) -> Error {
    Error::UiaRequired(json!({
        "flows": [{"stages": [stage]}],
        "params": {},
        "session": crate::random::random_string(24),
    }))
}

#[derive(Deserialize)]
pub struct RegisterRequest {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    auth: Option<Value>,
}

#[derive(Deserialize)]
pub struct RegisterQuery {
    kind: Option<String>,
}

pub async fn register(
    s: Data,
    http: HttpRequest,
    q: web::Query<RegisterQuery>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<HttpResponse> {
    if q.kind.as_deref() == Some("guest") {
        return Err(Error::GuestAccessForbidden(
            "guest access is disabled".into(),
        ));
    }
    if !s.core.config.registration.open {
        return Err(Error::RegistrationDisabled);
    }
    s.limits.register(http.peer_addr().map(|a| a.ip()))?;
    // The only stage is m.login.dummy; accept it with or without a session (nio sends it on
    // the first request), and challenge requests that carry no auth at all.
    match req
        .auth
        .as_ref()
        .and_then(|a| a.get("type"))
        .and_then(|t| t.as_str())
    {
        Some("m.login.dummy") => {}
        Some(other) => {
            return Err(Error::forbidden(format!(
                "unsupported authentication type {other}"
            )));
        }
        None => return Err(uia_challenge("m.login.dummy")),
    }
    let localpart = match req.username {
        Some(u) => u.to_lowercase(),
        None => crate::random::try_random_string(12)
            .map_err(Error::internal)?
            .to_lowercase(),
    };
    let password = req.password.filter(|p| !p.is_empty());
    let user_id = accounts::create_user(&s.core, &localpart, password, false).await?;
    if req.inhibit_login {
        return ok(json!({"user_id": user_id, "home_server": s.server_name()}));
    }
    let device_id = match req.device_id {
        Some(d) => d,
        None => new_device_id()?,
    };
    let token = tokens::issue(&s, &user_id, &device_id, req.initial_device_display_name).await?;
    ok(json!({
        "user_id": user_id,
        "access_token": token,
        "device_id": device_id,
        "home_server": s.server_name(),
    }))
}

#[derive(Deserialize)]
pub struct AvailableQuery {
    username: String,
}

pub async fn register_available(s: Data, q: web::Query<AvailableQuery>) -> Result<HttpResponse> {
    let localpart = q.username.to_lowercase();
    accounts::validate_localpart(&localpart, s.server_name())?;
    let user_id = format!("@{localpart}:{}", s.server_name());
    let exists = s
        .core
        .db
        .read(move |c| users::get_user(c, &user_id))
        .await?
        .is_some();
    if exists {
        return Err(Error::UserInUse("user ID already taken".into()));
    }
    ok(json!({"available": true}))
}

pub async fn login_flows() -> Result<HttpResponse> {
    ok(json!({"flows": [{"type": "m.login.password"}]}))
}

#[derive(Deserialize)]
pub struct LoginRequest {
    #[serde(rename = "type")]
    kind: String,
    identifier: Option<Value>,
    user: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
}

fn new_device_id() -> Result<String> {
    Ok(crate::random::try_random_string(10)
        .map_err(Error::internal)?
        .to_uppercase())
}

/// The user named by a login or UIA body (`identifier` of type `m.id.user`, or legacy `user`).
fn login_user(identifier: Option<&Value>, user: Option<&str>) -> Result<String> {
    if let Some(id) = identifier {
        match id.get("type").and_then(|t| t.as_str()) {
            Some("m.id.user") => {}
            Some(other) => {
                return Err(Error::invalid_param(format!(
                    "unsupported identifier type {other}"
                )));
            }
            None => return Err(Error::bad_json("identifier has no type")),
        }
        return id
            .get("user")
            .and_then(|u| u.as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::bad_json("identifier has no user"));
    }
    user.map(str::to_owned)
        .ok_or_else(|| Error::MissingParam("missing identifier".into()))
}

pub async fn login(
    s: Data,
    http: HttpRequest,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<HttpResponse> {
    if req.kind != "m.login.password" {
        return Err(Error::invalid_param(format!(
            "unsupported login type {}",
            req.kind
        )));
    }
    let user = login_user(req.identifier.as_ref(), req.user.as_deref())?;
    let user_id = accounts::resolve_user(&s.core, &user)?;
    // Before the password hash: a flood of guesses costs a map lookup, not an argon2 run.
    s.limits.login(http.peer_addr().map(|a| a.ip()), &user_id)?;
    let password = req
        .password
        .ok_or_else(|| Error::MissingParam("missing password".into()))?;
    if !accounts::check_password(&s.core, &user_id, password).await? {
        return Err(Error::InvalidLogin);
    }
    let device_id = match req.device_id {
        Some(d) => d,
        None => new_device_id()?,
    };
    let token = tokens::issue(&s, &user_id, &device_id, req.initial_device_display_name).await?;
    tracing::info!(user = %user_id, device = %device_id, "logged in");
    ok(json!({
        "user_id": user_id,
        "access_token": token,
        "device_id": device_id,
        "home_server": s.server_name(),
    }))
}

pub async fn logout(s: Data, user: AuthedUser) -> Result<HttpResponse> {
    crate::devices::delete_devices(
        &s.core,
        &s.tokens,
        user.user_id.as_str(),
        vec![user.device_id.clone()],
    )
    .await?;
    ok(json!({}))
}

pub async fn logout_all(s: Data, user: AuthedUser) -> Result<HttpResponse> {
    let u = user.user_id.to_string();
    let devices: Vec<String> = s
        .core
        .db
        .read(move |c| users::list_devices(c, &u))
        .await?
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    crate::devices::delete_devices(&s.core, &s.tokens, user.user_id.as_str(), devices).await?;
    ok(json!({}))
}

pub async fn whoami(user: AuthedUser) -> Result<HttpResponse> {
    ok(json!({
        "user_id": user.user_id,
        "device_id": user.device_id,
        "is_guest": false,
    }))
}

/// Checks a UIA body with `m.login.password` for the calling user.
pub(crate) async fn require_password_auth(
    s: &Services,
    user: &AuthedUser,
    auth: Option<&Value>,
) -> Result<()> {
    let Some(auth) = auth else {
        return Err(uia_challenge("m.login.password"));
    };
    if auth.get("type").and_then(|t| t.as_str()) != Some("m.login.password") {
        return Err(uia_challenge("m.login.password"));
    }
    let who = login_user(
        auth.get("identifier"),
        auth.get("user").and_then(|u| u.as_str()),
    )
    .unwrap_or_else(|_| user.user_id.to_string());
    let who = accounts::resolve_user(&s.core, &who)?;
    if who != user.user_id.as_str() {
        return Err(Error::forbidden("authentication is for another user"));
    }
    let password = auth
        .get("password")
        .and_then(|p| p.as_str())
        .ok_or_else(|| Error::MissingParam("missing password".into()))?;
    if !accounts::check_password(&s.core, &who, password.to_owned()).await? {
        return Err(Error::InvalidLogin);
    }
    Ok(())
}

/// A device as `/devices` shows it, with the last-seen values not written yet.
fn device_json(s: &Services, d: users::DeviceRow) -> Value {
    let (ts, ip) = match s.last_seen.pending(&d.user_id, &d.device_id) {
        Some((ts, ip)) => (Some(ts), Some(ip)),
        None => (d.last_seen_ts, d.last_seen_ip),
    };
    let mut v =
        json!({"device_id": d.device_id, "display_name": d.display_name, "last_seen_ts": ts});
    if let Some(ip) = ip {
        v["last_seen_ip"] = json!(ip);
    }
    v
}

pub async fn devices(s: Data, user: AuthedUser) -> Result<HttpResponse> {
    let u = user.user_id.to_string();
    let list = s.core.db.read(move |c| users::list_devices(c, &u)).await?;
    let devices: Vec<Value> = list.into_iter().map(|d| device_json(&s, d)).collect();
    ok(json!({"devices": devices}))
}

pub async fn get_device(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let (u, d) = (user.user_id.to_string(), path.into_inner());
    let dev = s
        .core
        .db
        .read(move |c| users::get_device(c, &u, &d))
        .await?;
    let d = dev.ok_or_else(|| Error::not_found("unknown device"))?;
    ok(device_json(&s, d))
}

#[derive(Deserialize)]
pub struct DeviceUpdate {
    display_name: Option<String>,
}

pub async fn put_device(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<DeviceUpdate>,
) -> Result<HttpResponse> {
    let (u, d) = (user.user_id.to_string(), path.into_inner());
    let found = s
        .core
        .db
        .write(user.user_id.as_str(), move |c| {
            let Some(_) = users::get_device(c, &u, &d)? else {
                return Ok(false);
            };
            if let Some(name) = body.display_name {
                users::set_device_name(c, &u, &d, &name)?;
            }
            Ok(true)
        })
        .await?;
    if !found {
        return Err(Error::not_found("unknown device"));
    }
    ok(json!({}))
}

#[derive(Deserialize)]
pub struct AuthOnly {
    auth: Option<Value>,
}

pub async fn delete_device(
    s: Data,
    user: AuthedUser,
    path: web::Path<String>,
    JsonBody(body): JsonBody<AuthOnly>,
) -> Result<HttpResponse> {
    require_password_auth(&s, &user, body.auth.as_ref()).await?;
    crate::devices::delete_devices(
        &s.core,
        &s.tokens,
        user.user_id.as_str(),
        vec![path.into_inner()],
    )
    .await?;
    ok(json!({}))
}

#[derive(Deserialize)]
pub struct DeleteDevices {
    devices: Vec<String>,
    auth: Option<Value>,
}

pub async fn delete_devices(
    s: Data,
    user: AuthedUser,
    JsonBody(body): JsonBody<DeleteDevices>,
) -> Result<HttpResponse> {
    require_password_auth(&s, &user, body.auth.as_ref()).await?;
    crate::devices::delete_devices(&s.core, &s.tokens, user.user_id.as_str(), body.devices).await?;
    ok(json!({}))
}

#[derive(Deserialize)]
pub struct PasswordChange {
    new_password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
    auth: Option<Value>,
}

fn yes() -> bool {
    true
}

pub async fn change_password(
    s: Data,
    user: AuthedUser,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<HttpResponse> {
    require_password_auth(&s, &user, body.auth.as_ref()).await?;
    if body.new_password.is_empty() {
        return Err(Error::invalid_param("password must not be empty"));
    }
    let hash = accounts::hash_password(&s.core, body.new_password).await?;
    let u = user.user_id.to_string();
    s.core
        .db
        .write(user.user_id.as_str(), move |c| {
            users::set_password(c, &u, &hash)
        })
        .await?;
    if body.logout_devices {
        let u = user.user_id.to_string();
        let devices: Vec<String> = s
            .core
            .db
            .read(move |c| users::list_devices(c, &u))
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .filter(|d| *d != user.device_id)
            .collect();
        crate::devices::delete_devices(&s.core, &s.tokens, user.user_id.as_str(), devices).await?;
    }
    ok(json!({}))
}

#[derive(Deserialize)]
pub struct DeactivateBody {
    auth: Option<Value>,
}

/// `POST /account/deactivate` (password UIA); the work is `crate::deactivation`.
pub async fn deactivate(
    s: Data,
    user: AuthedUser,
    JsonBody(body): JsonBody<DeactivateBody>,
) -> Result<HttpResponse> {
    require_password_auth(&s, &user, body.auth.as_ref()).await?;
    crate::deactivation::deactivate(&s, &user.user_id).await?;
    ok(json!({"id_server_unbind_result": "no-support"}))
}

/// `GET /account/3pid`: weft binds no third-party identifiers.
pub async fn threepids(_user: AuthedUser) -> Result<HttpResponse> {
    ok(json!({"threepids": []}))
}
