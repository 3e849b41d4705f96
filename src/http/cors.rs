//! CORS for browser clients, as Synapse does it: every response carries
//! `Access-Control-Allow-Origin: *`, and every `OPTIONS` preflight is answered at once.

use actix_web::body::EitherBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{Error, HttpResponse};
use futures_util::future::LocalBoxFuture;

const HEADERS: [(&str, &str); 3] = [
    ("access-control-allow-origin", "*"),
    (
        "access-control-allow-methods",
        "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    ),
    (
        "access-control-allow-headers",
        "X-Requested-With, Content-Type, Authorization, Date",
    ),
];

fn add_headers(headers: &mut actix_web::http::header::HeaderMap) {
    for (k, v) in HEADERS {
        headers.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
}

/// `App::wrap_fn` body: short-circuits preflights, decorates everything else.
pub fn cors<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> LocalBoxFuture<'static, Result<ServiceResponse<EitherBody<B>>, Error>>
where
    S: actix_web::dev::Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    S::Future: 'static,
    B: 'static,
{
    if req.method() == Method::OPTIONS {
        let mut resp = HttpResponse::NoContent().finish();
        add_headers(resp.headers_mut());
        let res = req.into_response(resp).map_into_right_body();
        return Box::pin(async move { Ok(res) });
    }
    let fut = srv.call(req);
    Box::pin(async move {
        let mut res = fut.await?;
        add_headers(res.headers_mut());
        Ok(res.map_into_left_body())
    })
}
