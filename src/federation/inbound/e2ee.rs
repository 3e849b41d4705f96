//! End-to-end encryption over federation: the endpoints other servers call for our users'
//! keys, applying E2EE EDUs, refreshing a remote user's device list, and asking other
//! servers for keys on behalf of our clients (`RemoteKeys`). The logic is `crate::e2ee`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::Value;

use crate::e2ee::federation::{self as e2ee_fed, RemoteError, RemoteFuture, RemoteKeys};
use crate::e2ee::keys::{ClaimRequest, QueryRequest};
use crate::error::{Error, Result};
use crate::federation::Federation;
use crate::federation::FederationOf;
use crate::federation::auth::Signed;
use crate::federation::client::enc;
use crate::services::Services;

type Data = web::Data<Services>;

pub async fn user_devices(
    s: Data,
    _signed: Signed,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let user = path.into_inner();
    let ours = s.server_name().to_owned();
    let found = s
        .core
        .db
        .read(move |c| e2ee_fed::user_devices(c, &ours, &user))
        .await?;
    let body = found.ok_or_else(|| Error::not_found("unknown user"))?;
    Ok(HttpResponse::Ok().json(body))
}

pub async fn user_keys_query(s: Data, signed: Signed) -> Result<HttpResponse> {
    let req: QueryRequest = signed.json()?;
    let ours = s.server_name().to_owned();
    let body = s
        .core
        .db
        .read(move |c| e2ee_fed::answer_keys_query(c, &ours, &req))
        .await?;
    Ok(HttpResponse::Ok().json(body))
}

pub async fn user_keys_claim(s: Data, signed: Signed) -> Result<HttpResponse> {
    let req: ClaimRequest = signed.json()?;
    Ok(HttpResponse::Ok().json(e2ee_fed::answer_keys_claim(&s.core, &signed.origin, req).await?))
}

/// Fetches a remote user's whole device list and stores it (after a gap in its updates).
pub async fn resync_device_list(s: &Services, user: &str) {
    let Some(fed) = s.federation().cloned() else {
        return;
    };
    let Some(server) = crate::e2ee::server_of(user).map(str::to_owned) else {
        return;
    };
    let path = format!("/_matrix/federation/v1/user/devices/{}", enc(user));
    match fed.client.request("GET", &server, &path, None).await {
        Ok(resp) => {
            if let Err(e) = e2ee_fed::apply_device_list_snapshot(&s.core, &server, &resp).await {
                tracing::warn!(user, error = %e, "could not apply a device list");
            }
        }
        Err(e) => tracing::info!(user, error = %e, "could not fetch a device list"),
    }
}

/// Applies an E2EE EDU; `false` if it is not one.
pub async fn handle_edu(s: &Services, origin: &str, edu_type: &str, content: &Value) -> bool {
    match e2ee_fed::apply_edu(&s.core, origin, edu_type, content).await {
        Ok(applied) => {
            for user in applied.resync {
                resync_device_list(s, &user).await;
            }
            true
        }
        Err(Error::Unrecognized) => false,
        Err(e) => {
            tracing::info!(origin, edu_type, error = %e, "refused an E2EE EDU");
            true
        }
    }
}

/// Asks other servers for keys over federation.
pub struct FederatedKeys(pub Arc<Federation>);

impl FederatedKeys {
    fn post<'a>(
        &'a self,
        server: &'a str,
        path: &'static str,
        body: Value,
        timeout: Duration,
    ) -> RemoteFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(
                timeout,
                self.0.client.request("POST", server, path, Some(&body)),
            )
            .await
            {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(RemoteError(e.to_string())),
                Err(_) => Err(RemoteError(format!("{server} did not answer in time"))),
            }
        })
    }
}

impl RemoteKeys for FederatedKeys {
    fn query_keys<'a>(
        &'a self,
        server: &'a str,
        body: Value,
        timeout: Duration,
    ) -> RemoteFuture<'a> {
        self.post(
            server,
            "/_matrix/federation/v1/user/keys/query",
            body,
            timeout,
        )
    }

    fn claim_keys<'a>(
        &'a self,
        server: &'a str,
        body: Value,
        timeout: Duration,
    ) -> RemoteFuture<'a> {
        self.post(
            server,
            "/_matrix/federation/v1/user/keys/claim",
            body,
            timeout,
        )
    }
}
