//! `/pushrules`: reading and changing the user's push rules; `/pushers`, `/pushers/set` and
//! `/notifications` (all in `crate::push`).

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::push;
use crate::services::Services;

type Data = web::Data<Services>;

async fn rules_json(s: &Services, user: &AuthedUser) -> Result<Value> {
    push::ruleset_json(&push::ruleset(s, &user.user_id).await?)
}

pub async fn all(s: Data, user: AuthedUser) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(json!({"global": rules_json(&s, &user).await?})))
}

pub async fn global(s: Data, user: AuthedUser) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(rules_json(&s, &user).await?))
}

pub async fn get_rule(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (scope, kind, rule_id) = path.into_inner();
    push::scope(&scope)?;
    let kind = push::kind(&kind)?;
    let rules = push::ruleset(&s, &user.user_id).await?;
    Ok(HttpResponse::Ok().json(push::rule_json(&rules, &kind, &rule_id)?))
}

#[derive(Deserialize)]
pub struct Position {
    before: Option<String>,
    after: Option<String>,
}

pub async fn put_rule(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    q: web::Query<Position>,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let (scope, kind, rule_id) = path.into_inner();
    push::scope(&scope)?;
    let kind = push::kind(&kind)?;
    if !body.is_object() {
        return Err(Error::bad_json("a push rule must be an object"));
    }
    let q = q.into_inner();
    push::put_rule(&s, &user.user_id, kind, rule_id, body, q.before, q.after).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn delete_rule(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (scope, kind, rule_id) = path.into_inner();
    push::scope(&scope)?;
    let kind = push::kind(&kind)?;
    push::delete_rule(&s, &user.user_id, kind, rule_id).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

async fn rule_field(
    s: &Services,
    user: &AuthedUser,
    path: (String, String, String),
    field: &str,
) -> Result<HttpResponse> {
    let (scope, kind, rule_id) = path;
    push::scope(&scope)?;
    let kind = push::kind(&kind)?;
    let rules = push::ruleset(s, &user.user_id).await?;
    let rule = push::rule_json(&rules, &kind, &rule_id)?;
    Ok(HttpResponse::Ok().json(json!({field: rule[field]})))
}

pub async fn get_enabled(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    rule_field(&s, &user, path.into_inner(), "enabled").await
}

pub async fn get_actions(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    rule_field(&s, &user, path.into_inner(), "actions").await
}

#[derive(Deserialize)]
pub struct Enabled {
    enabled: bool,
}

pub async fn put_enabled(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<Enabled>,
) -> Result<HttpResponse> {
    let (scope, kind, rule_id) = path.into_inner();
    push::scope(&scope)?;
    let kind = push::kind(&kind)?;
    push::set_enabled(&s, &user.user_id, kind, rule_id, body.enabled).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
pub struct Actions {
    actions: Value,
}

pub async fn put_actions(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String, String)>,
    JsonBody(body): JsonBody<Actions>,
) -> Result<HttpResponse> {
    let (scope, kind, rule_id) = path.into_inner();
    push::scope(&scope)?;
    let kind = push::kind(&kind)?;
    push::set_actions(&s, &user.user_id, kind, rule_id, &body.actions).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn get_pushers(s: Data, user: AuthedUser) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(push::pushers::list(&s, user.user_id.as_str()).await?))
}

pub async fn set_pusher(
    s: Data,
    user: AuthedUser,
    JsonBody(body): JsonBody<Value>,
) -> Result<HttpResponse> {
    let net = std::sync::Arc::clone(&s.push.net);
    push::pushers::set(&s, &net, user.user_id.as_str(), &user.device_id, &body).await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

#[derive(Deserialize)]
pub struct NotificationsQuery {
    from: Option<String>,
    limit: Option<i64>,
    only: Option<String>,
}

pub async fn notifications(
    s: Data,
    user: AuthedUser,
    q: web::Query<NotificationsQuery>,
) -> Result<HttpResponse> {
    let viewer = crate::rooms::view::Viewer {
        user_id: user.user_id.to_string(),
        device_id: user.device_id.clone(),
    };
    let q = q.into_inner();
    let body =
        push::pushers::notifications(&s, viewer, q.from.as_deref(), q.limit, q.only.as_deref())
            .await?;
    Ok(HttpResponse::Ok().json(body))
}
