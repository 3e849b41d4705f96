//! Inbound request authentication: the `Signed` extractor checks the X-Matrix signature of
//! every federation request (all endpoints but the key endpoints), fetching the origin's key
//! when needed, and yields the origin server and the raw body. Failures are 401
//! `M_UNAUTHORIZED`. Only keys valid now verify a request; after it verifies, the origin's
//! rate limit applies (429 `M_LIMIT_EXCEEDED`).

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use serde::de::DeserializeOwned;
use weft_protocol::xmatrix::XMatrix;

use crate::error::Error;
use crate::federation::FederationOf;
use crate::http::body::{parse_json, read_body};
use crate::services::Services;

/// An authenticated federation request.
pub struct Signed {
    pub origin: String,
    pub body: web::Bytes,
}

impl Signed {
    /// The body parsed as JSON (Matrix errors on failure).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        parse_json(&self.body)
    }
}

async fn verify(req: HttpRequest, body: web::Bytes) -> Result<Signed, Error> {
    let services = req
        .app_data::<web::Data<Services>>()
        .cloned()
        .ok_or_else(|| Error::internal("services missing"))?;
    let fed = services
        .federation()
        .ok_or_else(|| Error::Unauthorized("federation is disabled".into()))?;
    let headers: Vec<XMatrix> = req
        .headers()
        .get_all("authorization")
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| XMatrix::parse(v).ok())
        .collect();
    if headers.is_empty() {
        return Err(Error::Unauthorized(
            "missing or malformed X-Matrix authorization".into(),
        ));
    }
    let content = if body.iter().all(|b| b.is_ascii_whitespace()) {
        None
    } else {
        let v: serde_json::Value = parse_json(&body)?;
        Some(
            weft_protocol::canonical::value_to_canonical(v)
                .map_err(|e| Error::bad_json(format!("body is not canonical JSON: {e}")))?,
        )
    };
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.path().to_owned());
    let method = req.method().as_str().to_owned();
    let ours = services.server_name().to_owned();
    for h in &headers {
        if h.destination.as_deref().is_some_and(|d| d != ours) {
            continue;
        }
        // A request verifies only against a key the origin lists as current and valid now
        // (never `old_verify_keys`, never past `valid_until_ts`). The fetch this may cause
        // is bounded in the key ring and its connection by the outbound address policy.
        if !fed.keys.ensure_request_key(&h.origin, &h.key).await {
            continue;
        }
        let Some(known) = fed.keys.request_key(&h.origin, &h.key) else {
            continue;
        };
        if weft_protocol::xmatrix::verify_request(
            h,
            &known.key,
            &method,
            &uri,
            &ours,
            content.as_ref(),
        ) {
            fed.sender.mark_up(&h.origin);
            services.limits.federation(&h.origin)?;
            return Ok(Signed {
                origin: h.origin.clone(),
                body,
            });
        }
    }
    tracing::info!(origins = ?headers.iter().map(|h| &h.origin).collect::<Vec<_>>(), %uri, "rejected request with bad X-Matrix signature");
    Err(Error::Unauthorized("invalid X-Matrix signature".into()))
}

impl FromRequest for Signed {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let body = read_body(&req, &mut payload).await?;
            verify(req, body).await
        })
    }
}
