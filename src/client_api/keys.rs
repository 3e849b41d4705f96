//! End-to-end encryption endpoints: `/keys/upload`, `/keys/query`, `/keys/claim`,
//! `/keys/changes`, `/keys/device_signing/upload`, `/keys/signatures/upload` and
//! `/sendToDevice`. Thin: the work is in [`crate::e2ee`].

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::account::require_password_auth;
use super::tokens::AuthedUser;
use crate::e2ee::cross_signing::{self, DeviceSigningRequest};
use crate::e2ee::federation::NotFederated;
use crate::e2ee::keys::{self, ClaimRequest, QueryRequest, UploadRequest};
use crate::e2ee::to_device::{self, SendRequest};
use crate::error::{Error, Result};
use crate::http::body::JsonBody;
use crate::services::Services;
use crate::sync::SyncToken;

type Data = web::Data<Services>;

fn ok(v: Value) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(v))
}

pub async fn upload(
    s: Data,
    user: AuthedUser,
    JsonBody(req): JsonBody<UploadRequest>,
) -> Result<HttpResponse> {
    ok(keys::upload(&s.core, user.user_id.as_str(), &user.device_id, req).await?)
}

pub async fn query(
    s: Data,
    user: AuthedUser,
    JsonBody(req): JsonBody<QueryRequest>,
) -> Result<HttpResponse> {
    match s.remote()?.keys(&s) {
        Some(remote) => {
            ok(keys::query(&s.core, user.user_id.as_str(), req, remote.as_ref()).await?)
        }
        None => ok(keys::query(&s.core, user.user_id.as_str(), req, &NotFederated).await?),
    }
}

pub async fn claim(
    s: Data,
    user: AuthedUser,
    JsonBody(req): JsonBody<ClaimRequest>,
) -> Result<HttpResponse> {
    match s.remote()?.keys(&s) {
        Some(remote) => {
            ok(keys::claim(&s.core, user.user_id.as_str(), req, remote.as_ref()).await?)
        }
        None => ok(keys::claim(&s.core, user.user_id.as_str(), req, &NotFederated).await?),
    }
}

#[derive(Deserialize)]
pub struct ChangesQuery {
    from: String,
    to: Option<String>,
}

pub async fn changes(
    s: Data,
    user: AuthedUser,
    q: web::Query<ChangesQuery>,
) -> Result<HttpResponse> {
    let parse = |t: &str, name: &str| {
        SyncToken::parse(t).ok_or_else(|| Error::invalid_param(format!("invalid {name} token")))
    };
    let from = parse(&q.from, "from")?.stream;
    let to = match &q.to {
        Some(t) => parse(t, "to")?.stream,
        None => s.core.notifier.frontier(),
    };
    ok(keys::changes(&s.core, user.user_id.as_str(), from, to).await?)
}

pub async fn send_to_device(
    s: Data,
    user: AuthedUser,
    path: web::Path<(String, String)>,
    JsonBody(req): JsonBody<SendRequest>,
) -> Result<HttpResponse> {
    let (event_type, txn_id) = path.into_inner();
    let messages = to_device::check_messages(req.messages)?;
    to_device::send(
        &s.core,
        user.user_id.as_str(),
        &user.device_id,
        &event_type,
        &txn_id,
        messages,
    )
    .await?;
    ok(json!({}))
}

/// Uploading cross-signing keys needs user-interactive authentication (password) only when
/// it would replace keys the user already has, as the spec says since v1.11 (Synapse does
/// the same): the first upload, or an identical retry, goes through without it.
pub async fn device_signing_upload(
    s: Data,
    user: AuthedUser,
    JsonBody(req): JsonBody<DeviceSigningRequest>,
) -> Result<HttpResponse> {
    let prepared = cross_signing::prepare_upload(&s.core, user.user_id.as_str(), &req).await?;
    if prepared.needs_auth {
        require_password_auth(&s, &user, req.auth.as_ref()).await?;
    }
    cross_signing::store_upload(&s.core, user.user_id.as_str(), prepared).await?;
    ok(json!({}))
}

pub async fn signatures_upload(
    s: Data,
    user: AuthedUser,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<HttpResponse> {
    ok(cross_signing::upload_signatures(&s.core, user.user_id.as_str(), body).await?)
}
