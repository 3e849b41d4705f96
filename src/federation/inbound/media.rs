//! Federation media (`/_matrix/federation/v1/media/{download,thumbnail}/{mediaId}`): our
//! local content for other servers, as the spec's `multipart/mixed` answer (a JSON metadata
//! part, then the bytes). Only local media: a server asks the media's own server.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use weft_protocol::media::{self as rules, Method};

use crate::error::{Error, Result};
use crate::federation::auth::Signed;
use crate::media::{self, Content};
use crate::services::Services;

fn multipart(content: Content) -> HttpResponse {
    let boundary = crate::random::random_string(32);
    let disposition =
        rules::content_disposition(&content.content_type, content.filename.as_deref());
    let body = rules::multipart_body(
        &boundary,
        &content.content_type,
        &disposition,
        &content.bytes,
    );
    HttpResponse::Ok()
        .insert_header((
            "Content-Type",
            format!("multipart/mixed; boundary={boundary}"),
        ))
        .body(body)
}

pub async fn download(
    s: web::Data<Services>,
    _signed: Signed,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let content = media::local_content(&s.core, &path).await?;
    Ok(multipart(content))
}

#[derive(Deserialize)]
pub struct ThumbnailQuery {
    width: u32,
    height: u32,
    method: Option<String>,
}

pub async fn thumbnail(
    s: web::Data<Services>,
    _signed: Signed,
    path: web::Path<String>,
    q: web::Query<ThumbnailQuery>,
) -> Result<HttpResponse> {
    let method = match q.method.as_deref() {
        None => Method::Scale,
        Some(m) => {
            Method::parse(m).ok_or_else(|| Error::invalid_param("method must be scale or crop"))?
        }
    };
    let our = s.core.server_name().to_owned();
    let content = media::thumbnail(&s, &our, &path, q.width, q.height, method, false).await?;
    Ok(multipart(content))
}
