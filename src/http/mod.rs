//! HTTP plumbing shared by the client and federation APIs: the JSON body extractor with
//! Matrix errors, CORS, and the catch-all for unknown endpoints.

pub mod body;
pub mod cors;
pub mod well_known;

use actix_web::{HttpRequest, HttpResponse};

use crate::error::Error;

/// Unknown endpoint: 404 `M_UNRECOGNIZED` (405 when the path exists with another method is
/// not distinguishable here; clients treat both the same).
pub async fn unrecognized(req: HttpRequest) -> Result<HttpResponse, Error> {
    tracing::debug!(method = %req.method(), path = %req.path(), "unrecognized endpoint");
    Err(Error::Unrecognized)
}

use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};

/// Rewrites error responses that actix produced itself (unknown method on a known path,
/// payload errors, ...) into Matrix JSON errors. Responses that already carry JSON pass.
pub fn matrix_errors<B: 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(render_error)
}

fn render_error<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (errcode, error) = match status {
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
            ("M_UNRECOGNIZED", "unrecognized request")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("M_TOO_LARGE", "request body too large"),
        StatusCode::BAD_REQUEST => ("M_BAD_JSON", "bad request"),
        StatusCode::UNAUTHORIZED => ("M_UNAUTHORIZED", "unauthorized"),
        StatusCode::FORBIDDEN => ("M_FORBIDDEN", "forbidden"),
        _ => ("M_UNKNOWN", "internal error"),
    };
    let (req, _) = res.into_parts();
    let resp = HttpResponse::build(status)
        .insert_header(("content-type", "application/json"))
        .body(serde_json::json!({"errcode": errcode, "error": error}).to_string());
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, resp).map_into_right_body(),
    ))
}

/// The request log line's target: method, path and query with secrets blanked.
pub fn request_logger(target: &'static str) -> actix_web::middleware::Logger {
    actix_web::middleware::Logger::new("%a \"%{request}xi\" %s %b %Dms")
        .custom_request_replace("request", |req| {
            let uri = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            format!(
                "{} {}",
                req.method(),
                crate::observe::request::redact_query(uri)
            )
        })
        .log_target(target)
}
