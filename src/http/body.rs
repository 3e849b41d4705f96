//! `JsonBody<T>`: reads a request body up to the configured limit and parses it as JSON,
//! answering Matrix errors: 413 `M_TOO_LARGE`, 400 `M_NOT_JSON` (not JSON at all) or
//! `M_BAD_JSON` (JSON of the wrong shape). An empty body reads as `{}`, which is what
//! clients that send no body for `POST /join` or `/logout` mean.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The body limit, stored as app data.
#[derive(Clone, Copy)]
pub struct BodyLimit(pub usize);

pub struct JsonBody<T>(pub T);

/// Parses JSON bytes with Matrix error mapping.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let bytes: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Error::BadJson(e.to_string()),
        _ => Error::NotJson(e.to_string()),
    })
}

/// Reads the whole body, refusing more than `limit` bytes.
pub async fn read_body(req: &HttpRequest, payload: &mut Payload) -> Result<web::Bytes, Error> {
    let limit = req
        .app_data::<BodyLimit>()
        .or_else(|| req.app_data::<web::Data<BodyLimit>>().map(|d| d.get_ref()))
        .map(|l| l.0)
        .unwrap_or(1024 * 1024);
    if let Some(len) = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(Error::TooLarge);
    }
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::NotJson(format!("reading body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(Error::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move {
            let bytes = read_body(&req, &mut payload).await?;
            parse_json(&bytes).map(JsonBody)
        })
    }
}

/// The raw body bytes, with the same limit (for endpoints that must see the exact JSON).
pub struct RawBody(pub web::Bytes);

impl FromRequest for RawBody {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut payload = payload.take();
        Box::pin(async move { read_body(&req, &mut payload).await.map(RawBody) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_json_errors() {
        #[derive(serde::Deserialize, Debug)]
        struct T {
            #[allow(dead_code)]
            a: u32,
        }
        assert!(parse_json::<T>(b"{\"a\": 1}").is_ok());
        assert!(matches!(
            parse_json::<T>(b"{\"a\": \"x\"}"),
            Err(Error::BadJson(_))
        ));
        assert!(matches!(
            parse_json::<T>(b"{\"a\": "),
            Err(Error::NotJson(_))
        ));
        assert!(matches!(
            parse_json::<T>(b"not json"),
            Err(Error::NotJson(_))
        ));
        assert!(parse_json::<serde_json::Value>(b"").is_ok());
    }
}
