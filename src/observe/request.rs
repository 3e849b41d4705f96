//! Every HTTP request gets a request ID, a tracing span and one log line, and is counted.
//!
//! The ID is the caller's `X-Request-Id` when that is a short token of safe characters (a
//! proxy's ID then follows the request through), else a fresh random one; it is echoed in
//! the response's `X-Request-Id`. The span `request{id, method, route}` wraps the handler,
//! so every log line a handler writes carries the ID. Logged: method, route pattern, path
//! and query with credentials blanked ([`redact_query`]: `?access_token=`
//! never reaches a log), status, duration. Never logged: headers and bodies.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

const REQUEST_ID: &str = "x-request-id";

/// A caller-supplied ID we are willing to repeat in logs and headers.
pub fn acceptable_id(id: &str) -> bool {
    (8..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The method as a metric label: the standard ones, anything else `other` (a client may
/// send any token as a method; labels must stay a small set).
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// Query parameters whose values are credentials.
const SECRET_PARAMS: &[&str] = &["access_token", "token", "login_token", "password"];

/// `path?a=1&access_token=xyz` → `path?a=1&access_token=<redacted>`.
pub fn redact_query(uri: &str) -> String {
    let Some((path, query)) = uri.split_once('?') else {
        return uri.to_owned();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| {
            let name = kv.split_once('=').map(|(k, _)| k).unwrap_or(kv);
            let decoded = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            if SECRET_PARAMS
                .iter()
                .any(|s| decoded.eq_ignore_ascii_case(s))
            {
                format!("{name}=<redacted>")
            } else {
                kv.to_owned()
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// `middleware::from_fn` body for the client listener.
pub async fn client(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    observe("client", req, next).await
}

/// `middleware::from_fn` body for the federation listener.
pub async fn federation(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    observe("federation", req, next).await
}

async fn observe<B: MessageBody + 'static>(
    listener: &'static str,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| crate::random::random_string(16));
    let method = method_label(req.method().as_str()).to_owned();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let path = redact_query(
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let result = next.call(req).instrument(span.clone()).await;
    let secs = started.elapsed().as_secs_f64();
    let _enter = span.enter();
    match result {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            if let Ok(v) = HeaderValue::from_str(&id) {
                resp.headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID), v);
            }
            crate::observe::metrics::http_request(listener, &method, &route, status, secs);
            tracing::info!(
                target: "weft::http",
                listener,
                %path,
                status,
                ms = (secs * 1000.0) as u64,
                "request"
            );
            Ok(resp)
        }
        Err(e) => {
            let status = e.as_response_error().status_code().as_u16();
            crate::observe::metrics::http_request(listener, &method, &route, status, secs);
            tracing::info!(target: "weft::http", listener, %path, status, ms = (secs * 1000.0) as u64, "request failed");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{acceptable_id, method_label, redact_query};

    #[test]
    fn method_labels_stay_a_small_set() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("DELETE"), "DELETE");
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(method_label("get"), "other");
    }

    #[test]
    fn request_ids() {
        assert!(acceptable_id("abcDEF123-_.x"));
        for bad in [
            "",
            "short",
            "with space xx",
            "new\nline123",
            &"a".repeat(65),
            "quote\"1234",
        ] {
            assert!(!acceptable_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn secrets_do_not_reach_the_log() {
        for (raw, logged) in [
            ("/sync", "/sync"),
            ("/sync?since=5", "/sync?since=5"),
            (
                "/sync?access_token=syt_secret&since=5",
                "/sync?access_token=<redacted>&since=5",
            ),
            (
                "/x?since=1&access_token=a",
                "/x?since=1&access_token=<redacted>",
            ),
            ("/x?%61ccess_token=a", "/x?%61ccess_token=<redacted>"),
            ("/x?ACCESS_TOKEN=a", "/x?ACCESS_TOKEN=<redacted>"),
            ("/x?access_token", "/x?access_token=<redacted>"),
            ("/login?token=abc", "/login?token=<redacted>"),
        ] {
            assert_eq!(redact_query(raw), logged);
            if raw.contains("=a") || raw.contains("secret") {
                assert!(!redact_query(raw).contains("secret"));
            }
        }
    }
}
