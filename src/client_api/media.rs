//! Media handlers: `/_matrix/media/{v3,r0,v1}` (upload, create, config, and the legacy
//! unauthenticated download and thumbnail behind `media.legacy_unauthenticated`) and the
//! authenticated `/_matrix/client/v1/media/*`. The work is in `crate::media`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use weft_protocol::media::{self as rules, Method};

use super::tokens::AuthedUser;
use crate::error::{Error, Result};
use crate::media::{self, Content};
use crate::services::Services;

type Data = web::Data<Services>;

/// What served content may do in a browser: nothing (it is sandboxed, never sniffed).
const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                   style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// Reads an upload body, refusing more than `limit` bytes (413 `M_TOO_LARGE`).
async fn read_upload(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: u64,
) -> Result<web::Bytes> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(Error::TooLarge);
    }
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::invalid_param(format!("reading the upload: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(Error::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn content_type_of(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[derive(Deserialize)]
pub struct UploadQuery {
    filename: Option<String>,
}

pub async fn upload(
    s: Data,
    user: AuthedUser,
    req: HttpRequest,
    q: web::Query<UploadQuery>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let bytes = read_upload(&req, payload, s.core.config.media.max_upload_bytes).await?;
    let uri = media::upload(
        &s.core,
        user.user_id.as_str(),
        content_type_of(&req).as_deref(),
        q.filename.as_deref(),
        bytes,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({"content_uri": uri})))
}

pub async fn create(s: Data, user: AuthedUser) -> Result<HttpResponse> {
    let (uri, expires) = media::create(&s.core, user.user_id.as_str()).await?;
    Ok(HttpResponse::Ok().json(json!({"content_uri": uri, "unused_expires_at": expires})))
}

pub async fn upload_to(
    s: Data,
    user: AuthedUser,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    q: web::Query<UploadQuery>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let (server, id) = path.into_inner();
    let bytes = read_upload(&req, payload, s.core.config.media.max_upload_bytes).await?;
    media::upload_to(
        &s.core,
        user.user_id.as_str(),
        &server,
        &id,
        content_type_of(&req).as_deref(),
        q.filename.as_deref(),
        bytes,
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({})))
}

pub async fn config(s: Data, _user: AuthedUser) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(media::config_json(&s.core)))
}

/// An answer carrying content, with the headers that keep it harmless in a browser.
pub fn serve(content: Content, filename_override: Option<&str>) -> HttpResponse {
    let filename = filename_override.or(content.filename.as_deref());
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content.content_type.clone()))
        .insert_header((
            header::CONTENT_DISPOSITION,
            rules::content_disposition(&content.content_type, filename),
        ))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Cross-Origin-Resource-Policy", "cross-origin"))
        .insert_header((header::CACHE_CONTROL, "private, max-age=86400, immutable"))
        .body(content.bytes)
}

#[derive(Deserialize)]
pub struct DownloadQuery {
    allow_remote: Option<bool>,
}

async fn download_inner(
    s: &Services,
    server: &str,
    id: &str,
    filename: Option<&str>,
    allow_remote: bool,
) -> Result<HttpResponse> {
    let content = media::content(s, server, id, allow_remote).await?;
    Ok(serve(content, filename))
}

pub async fn download(
    s: Data,
    _user: AuthedUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (server, id) = path.into_inner();
    download_inner(&s, &server, &id, None, true).await
}

pub async fn download_named(
    s: Data,
    _user: AuthedUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (server, id, name) = path.into_inner();
    download_inner(&s, &server, &id, Some(&name), true).await
}

#[derive(Deserialize)]
pub struct ThumbnailQuery {
    width: u32,
    height: u32,
    method: Option<String>,
    allow_remote: Option<bool>,
}

async fn thumbnail_inner(
    s: &Services,
    server: &str,
    id: &str,
    q: &ThumbnailQuery,
) -> Result<HttpResponse> {
    let method = match q.method.as_deref() {
        None => Method::Scale,
        Some(m) => {
            Method::parse(m).ok_or_else(|| Error::invalid_param("method must be scale or crop"))?
        }
    };
    let content = media::thumbnail(
        s,
        server,
        id,
        q.width,
        q.height,
        method,
        q.allow_remote.unwrap_or(true),
    )
    .await?;
    Ok(serve(content, None))
}

pub async fn thumbnail(
    s: Data,
    _user: AuthedUser,
    path: web::Path<(String, String)>,
    q: web::Query<ThumbnailQuery>,
) -> Result<HttpResponse> {
    let (server, id) = path.into_inner();
    thumbnail_inner(&s, &server, &id, &q).await
}

fn legacy_allowed(s: &Services) -> Result<()> {
    if s.core.config.media.legacy_unauthenticated {
        Ok(())
    } else {
        // What Synapse answers with authenticated media on: the content is not found here.
        Err(Error::not_found(
            "unauthenticated media is disabled; use /_matrix/client/v1/media",
        ))
    }
}

pub async fn legacy_download(
    s: Data,
    path: web::Path<(String, String)>,
    q: web::Query<DownloadQuery>,
) -> Result<HttpResponse> {
    legacy_allowed(&s)?;
    let (server, id) = path.into_inner();
    download_inner(&s, &server, &id, None, q.allow_remote.unwrap_or(true)).await
}

pub async fn legacy_download_named(
    s: Data,
    path: web::Path<(String, String, String)>,
    q: web::Query<DownloadQuery>,
) -> Result<HttpResponse> {
    legacy_allowed(&s)?;
    let (server, id, name) = path.into_inner();
    download_inner(
        &s,
        &server,
        &id,
        Some(&name),
        q.allow_remote.unwrap_or(true),
    )
    .await
}

pub async fn legacy_thumbnail(
    s: Data,
    path: web::Path<(String, String)>,
    q: web::Query<ThumbnailQuery>,
) -> Result<HttpResponse> {
    legacy_allowed(&s)?;
    let (server, id) = path.into_inner();
    thumbnail_inner(&s, &server, &id, &q).await
}

/// Routes under `/_matrix/media/{v3,r0}`.
fn media_routes(cfg: &mut web::ServiceConfig) {
    use web::{get, post, put};
    cfg.route("/upload", post().to(upload))
        .route("/upload/{server}/{media_id}", put().to(upload_to))
        .route("/create", post().to(create))
        .route("/config", get().to(config))
        .route("/download/{server}/{media_id}", get().to(legacy_download))
        .route(
            "/download/{server}/{media_id}/{filename}",
            get().to(legacy_download_named),
        )
        .route("/thumbnail/{server}/{media_id}", get().to(legacy_thumbnail));
}

/// Registers the media endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use web::get;
    cfg.service(web::scope("/_matrix/media/v3").configure(media_routes))
        .service(web::scope("/_matrix/media/r0").configure(media_routes))
        .service(web::scope("/_matrix/media/v1").configure(media_routes))
        .service(
            web::scope("/_matrix/client/v1/media")
                .route("/config", get().to(config))
                .route("/download/{server}/{media_id}", get().to(download))
                .route(
                    "/download/{server}/{media_id}/{filename}",
                    get().to(download_named),
                )
                .route("/thumbnail/{server}/{media_id}", get().to(thumbnail)),
        );
}
