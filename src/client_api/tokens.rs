//! Access tokens: issuing them, the `AuthedUser` extractor, and a cache in front of the
//! database. Tokens are stored only as SHA-256 hashes.
//!
//! Cache entries live [`CACHE_TTL`]: a token deleted or a user demoted by another process
//! (the `weft` admin commands) stops counting within that time; changes made through this
//! server evict at once. Admin endpoints read the admin flag fresh on every request
//! ([`AdminUser`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use ruma::OwnedUserId;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::services::Services;
use crate::storage::{self, users};

/// The authenticated caller of a client API request.
#[derive(Debug, Clone)]
pub struct AuthedUser {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub is_admin: bool,
    /// Hash of the token used (for logout).
    pub token_hash: String,
}

pub use crate::accounts::{TOKEN_CACHE_TTL as CACHE_TTL, TokenCache};

/// An authenticated caller who is a server admin *now* (read from the database on every
/// request, not cached): 403 `M_FORBIDDEN` otherwise.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthedUser);

impl FromRequest for AdminUser {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let authed = AuthedUser::from_request(req, payload);
        let services = req.app_data::<web::Data<Services>>().cloned();
        Box::pin(async move {
            let user = authed.await?;
            let services = services.ok_or_else(|| Error::internal("services missing"))?;
            let u = user.user_id.to_string();
            let admin = services
                .core
                .db
                .read(move |c| storage::admin::is_active_admin(c, &u))
                .await?;
            if !admin {
                tracing::info!(user = %user.user_id, "admin endpoint refused to a non-admin");
                return Err(Error::forbidden("this endpoint is for server admins"));
            }
            Ok(AdminUser(user))
        })
    }
}

pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random access token; an error (never a weak token) when the OS RNG fails.
pub fn new_token() -> Result<String, Error> {
    let random = crate::random::try_random_string(40).map_err(Error::internal)?;
    Ok(format!("wft_{random}"))
}

fn token_from_request(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        && let Some(t) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    {
        return Some(t.trim().to_owned());
    }
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("access_token").cloned())
}

/// Resolves a token to its user and device.
pub async fn authenticate(services: &Services, token: &str) -> Result<AuthedUser, Error> {
    let hash = hash_token(token);
    if let Some((user_id, device_id, is_admin)) = services.tokens.get(&hash) {
        return Ok(AuthedUser {
            user_id,
            device_id,
            is_admin,
            token_hash: hash,
        });
    }
    let h = hash.clone();
    let found = services
        .core
        .db
        .read(move |c| users::lookup_token(c, &h))
        .await?;
    let Some((user_id, device_id, is_admin)) = found else {
        return Err(Error::UnknownToken);
    };
    let user_id = OwnedUserId::try_from(user_id)
        .map_err(|e| Error::Storage(storage::StorageError::Corrupt(e.to_string())))?;
    services
        .tokens
        .insert(hash.clone(), user_id.clone(), device_id.clone(), is_admin);
    Ok(AuthedUser {
        user_id,
        device_id,
        is_admin,
        token_hash: hash,
    })
}

impl FromRequest for AuthedUser {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let token = token_from_request(req);
        let services = req.app_data::<web::Data<Services>>().cloned();
        let ip = req
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        Box::pin(async move {
            let token = token.ok_or(Error::MissingToken)?;
            let services = services.ok_or_else(|| Error::internal("services missing"))?;
            let user = authenticate(&services, &token).await?;
            services.last_seen.touch(
                user.user_id.as_str(),
                &user.device_id,
                ip,
                storage::now_ms(),
            );
            Ok(user)
        })
    }
}

/// Issues a token for a device (creating the device if needed). Returns the token.
pub async fn issue(
    services: &Services,
    user_id: &str,
    device_id: &str,
    display_name: Option<String>,
) -> Result<String, Error> {
    let token = new_token()?;
    let hash = hash_token(&token);
    let (u, d) = (user_id.to_owned(), device_id.to_owned());
    let now = storage::now_ms();
    services
        .core
        .db
        .write(user_id, move |c| {
            let created = users::upsert_device(c, &u, &d, display_name.as_deref(), now)?;
            users::insert_token(c, &hash, &u, &d, now)?;
            Ok(created)
        })
        .await?;
    Ok(token)
}
