//! The content repository: uploads, downloads and thumbnails, local and remote.
//!
//! * **Bytes** are files under `data_dir/media/`, named by their SHA-256
//!   (`ab/cd/abcd…`): content-addressed, so the same file uploaded twice (or fetched from
//!   two servers) is stored once. A file is written to `media/tmp/` and renamed into place,
//!   so a crash never leaves a half file under a content name.
//! * **Metadata** (media ID, content type, file name, size, uploader) is a row per media ID
//!   in the database; thumbnails are rows keyed by the source's hash, cached after the first
//!   request, their bytes content-addressed files too.
//! * **Uploads** are read into memory up to `media.max_upload_bytes` (413 `M_TOO_LARGE`
//!   beyond), checked against the uploader's quota (`media.user_quota_bytes`) and their
//!   declared content type: it must be a valid MIME type, and a declared raster image type
//!   must match the bytes (a "PNG" that is not one is refused). `/create` hands out a media
//!   ID to upload to later (`PUT /upload/{server}/{id}`, only by its creator, only once).
//! * **Serving**: the spec's list decides `inline` or `attachment`; every answer carries a
//!   sandboxing Content-Security-Policy and `nosniff`.
//! * **Remote media** is fetched once through the federation client (so discovery and the
//!   outbound address policy apply) from `/_matrix/federation/v1/media/download`, whose
//!   `multipart/mixed` answer is parsed with `multer`; it is then cached like local media.
//!   Thumbnails of remote media are made here from the cached original.

pub mod thumbnail;

use std::io::Write;
use std::path::PathBuf;

use actix_web::web::Bytes;
use futures_util::stream;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weft_protocol::media::{self as rules, Method};

use crate::core::Core;
use crate::error::{Error, Result};
use crate::services::Services;
use crate::storage::media::{self as store, MediaRow, ThumbnailRow};
use crate::storage::now_ms;

/// Content as served: bytes, content type, file name.
pub struct Content {
    pub bytes: Bytes,
    pub content_type: String,
    pub filename: Option<String>,
}

fn media_root(core: &Core) -> PathBuf {
    core.config.data_dir.join("media")
}

fn path_of(core: &Core, sha256: &str) -> PathBuf {
    let root = media_root(core);
    match (sha256.get(0..2), sha256.get(2..4)) {
        (Some(a), Some(b)) => root.join(a).join(b).join(sha256),
        _ => root.join(sha256),
    }
}

/// Writes content-addressed bytes (if not there already) and returns their SHA-256.
async fn write_file(core: &Core, bytes: Bytes) -> Result<String> {
    let root = media_root(core);
    let sha = {
        let digest = Sha256::digest(&bytes);
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let dest = path_of(core, &sha);
    let sha2 = sha.clone();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if dest.exists() {
            return Ok(());
        }
        let tmp_dir = root.join("tmp");
        std::fs::create_dir_all(&tmp_dir)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = tmp_dir.join(format!("{sha2}.{}", crate::random::random_string(8)));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))?
    .map_err(|e| Error::internal(format!("writing media: {e}")))?;
    Ok(sha)
}

async fn read_file(core: &Core, sha256: &str) -> Result<Bytes> {
    let path = path_of(core, sha256);
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(|e| Error::internal(format!("reading media: {e}")))?;
    Ok(Bytes::from(bytes))
}

/// The `m.upload.size` configuration clients read.
pub fn config_json(core: &Core) -> Value {
    json!({"m.upload.size": core.config.media.max_upload_bytes})
}

/// Checks a declared content type (default `application/octet-stream`) against the bytes.
pub fn check_content_type(declared: Option<&str>, bytes: &[u8]) -> Result<String> {
    let declared = declared.map(str::trim).filter(|c| !c.is_empty());
    let Some(ct) = declared else {
        return Ok("application/octet-stream".into());
    };
    let parsed: mime::Mime = ct
        .parse()
        .map_err(|_| Error::invalid_param(format!("invalid content type {ct:?}")))?;
    let essence = parsed.essence_str().to_ascii_lowercase();
    if matches!(
        essence.as_str(),
        "image/png" | "image/jpeg" | "image/gif" | "image/webp"
    ) {
        let actual = thumbnail::sniff(bytes).map(|(_, ct)| ct);
        if actual != Some(essence.as_str()) {
            return Err(Error::invalid_param(format!(
                "the content is not {essence} (it looks like {})",
                actual.unwrap_or("something else")
            )));
        }
    }
    Ok(parsed.to_string())
}

fn check_filename(filename: Option<&str>) -> Result<Option<String>> {
    match filename.filter(|f| !f.is_empty()) {
        None => Ok(None),
        Some(f) if f.len() > 255 || f.contains(['/', '\\', '\0']) => {
            Err(Error::invalid_param("invalid file name"))
        }
        Some(f) => Ok(Some(f.to_owned())),
    }
}

async fn check_quota(core: &Core, uploader: &str, size: u64) -> Result<()> {
    let quota = core.config.media.user_quota_bytes;
    if quota == 0 {
        return Ok(());
    }
    let u = uploader.to_owned();
    let used = core
        .db
        .read(move |c| store::bytes_of_uploader(c, &u))
        .await?;
    if used.max(0) as u64 + size > quota {
        return Err(Error::QuotaExceeded(format!(
            "this upload would exceed your media quota of {quota} bytes"
        )));
    }
    Ok(())
}

fn check_size(core: &Core, len: usize) -> Result<()> {
    if len as u64 > core.config.media.max_upload_bytes {
        return Err(Error::TooLarge);
    }
    Ok(())
}

/// `POST /upload`: stores new content under a new media ID; returns the `mxc://` URI.
pub async fn upload(
    core: &Core,
    uploader: &str,
    content_type: Option<&str>,
    filename: Option<&str>,
    bytes: Bytes,
) -> Result<String> {
    check_size(core, bytes.len())?;
    let ct = check_content_type(content_type, &bytes)?;
    let filename = check_filename(filename)?;
    check_quota(core, uploader, bytes.len() as u64).await?;
    let size = bytes.len() as i64;
    let sha = write_file(core, bytes).await?;
    let id = crate::random::random_string(24);
    let row = MediaRow {
        server_name: core.server_name().to_owned(),
        media_id: id.clone(),
        sha256: Some(sha),
        content_type: Some(ct),
        filename,
        size,
        uploader: Some(uploader.to_owned()),
        created_ts: now_ms(),
        unused_expires_ts: None,
    };
    core.db
        .write(uploader, move |c| store::insert(c, &row))
        .await?;
    Ok(format!("mxc://{}/{id}", core.server_name()))
}

/// `POST /create`: a media ID to upload to later; returns the URI and its expiry.
pub async fn create(core: &Core, uploader: &str) -> Result<(String, i64)> {
    let now = now_ms();
    let expires = now + core.config.media.unused_expires_ms as i64;
    let max = i64::from(core.config.media.max_pending_creates);
    let id = crate::random::random_string(24);
    let row = MediaRow {
        server_name: core.server_name().to_owned(),
        media_id: id.clone(),
        sha256: None,
        content_type: None,
        filename: None,
        size: 0,
        uploader: Some(uploader.to_owned()),
        created_ts: now,
        unused_expires_ts: Some(expires),
    };
    let u = uploader.to_owned();
    let created = core
        .db
        .write(uploader, move |c| {
            if store::pending_of_uploader(c, &u, now)? >= max {
                return Ok(false);
            }
            store::insert(c, &row)?;
            Ok(true)
        })
        .await?;
    if !created {
        return Err(Error::LimitExceeded(
            "too many media IDs waiting for their upload".into(),
            60_000,
        ));
    }
    Ok((format!("mxc://{}/{id}", core.server_name()), expires))
}

/// `PUT /upload/{server}/{id}`: the content of a media ID from `/create`.
pub async fn upload_to(
    core: &Core,
    uploader: &str,
    server: &str,
    media_id: &str,
    content_type: Option<&str>,
    filename: Option<&str>,
    bytes: Bytes,
) -> Result<()> {
    if !core.is_local(server) || !rules::valid_media_id(media_id) {
        return Err(Error::not_found("unknown media"));
    }
    check_size(core, bytes.len())?;
    let (s, m) = (server.to_owned(), media_id.to_owned());
    let row = core.db.read(move |c| store::get(c, &s, &m)).await?;
    let row = row.ok_or_else(|| Error::not_found("unknown media"))?;
    if row.uploader.as_deref() != Some(uploader) {
        return Err(Error::forbidden(
            "this media ID was created by another user",
        ));
    }
    if row.sha256.is_some() {
        return Err(Error::CannotOverwriteMedia);
    }
    if row.unused_expires_ts.is_some_and(|t| t < now_ms()) {
        return Err(Error::not_found("this media ID has expired"));
    }
    let ct = check_content_type(content_type, &bytes)?;
    let filename = check_filename(filename)?;
    check_quota(core, uploader, bytes.len() as u64).await?;
    let size = bytes.len() as i64;
    let sha = write_file(core, bytes).await?;
    let (s, m) = (server.to_owned(), media_id.to_owned());
    let set = core
        .db
        .write(uploader, move |c| {
            store::set_content(c, &s, &m, &sha, &ct, filename.as_deref(), size)
        })
        .await?;
    if !set {
        return Err(Error::CannotOverwriteMedia);
    }
    Ok(())
}

/// The metadata row of local or cached remote media.
async fn row_of(core: &Core, server: &str, media_id: &str) -> Result<Option<MediaRow>> {
    let (s, m) = (server.to_owned(), media_id.to_owned());
    Ok(core.db.read(move |c| store::get(c, &s, &m)).await?)
}

fn check_ids(server: &str, media_id: &str) -> Result<()> {
    if ruma::ServerName::parse(server).is_err() || !rules::valid_media_id(media_id) {
        return Err(Error::not_found("unknown media"));
    }
    Ok(())
}

/// The content of local media only (what federation serves).
pub async fn local_content(core: &Core, media_id: &str) -> Result<Content> {
    check_ids(core.server_name(), media_id)?;
    let row = row_of(core, core.server_name(), media_id).await?;
    content_of(core, row).await
}

async fn content_of(core: &Core, row: Option<MediaRow>) -> Result<Content> {
    let row = row.ok_or_else(|| Error::not_found("unknown media"))?;
    let Some(sha) = row.sha256 else {
        return Err(Error::NotYetUploaded);
    };
    Ok(Content {
        bytes: read_file(core, &sha).await?,
        content_type: row
            .content_type
            .unwrap_or_else(|| "application/octet-stream".into()),
        filename: row.filename,
    })
}

/// The content of any media: local, cached, or fetched now from its server
/// (`allow_remote`).
pub async fn content(
    s: &Services,
    server: &str,
    media_id: &str,
    allow_remote: bool,
) -> Result<Content> {
    check_ids(server, media_id)?;
    let row = row_of(&s.core, server, media_id).await?;
    if row.is_some() || s.core.is_local(server) {
        return content_of(&s.core, row).await;
    }
    if !allow_remote {
        return Err(Error::not_found("remote media not cached here"));
    }
    fetch_remote(s, server, media_id).await
}

/// Fetches remote media over federation and caches it.
async fn fetch_remote(s: &Services, server: &str, media_id: &str) -> Result<Content> {
    let limit = usize::try_from(s.core.config.media.max_upload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(64 * 1024);
    let (status, ct, body) = s.remote()?.download_media(server, media_id, limit).await?;
    if status == 404 {
        return Err(Error::not_found("the remote server has no such media"));
    }
    if !(200..300).contains(&status) {
        return Err(Error::Remote(format!(
            "{server} answered {status} for media"
        )));
    }
    let ct = ct.ok_or_else(|| Error::Remote("media answer without a content type".into()))?;
    let content = parse_multipart(&ct, body).await?;
    check_size(&s.core, content.bytes.len())?;
    let content_type = check_content_type(Some(&content.content_type), &content.bytes)
        .unwrap_or_else(|_| "application/octet-stream".into());
    let sha = write_file(&s.core, content.bytes.clone()).await?;
    let row = MediaRow {
        server_name: server.to_owned(),
        media_id: media_id.to_owned(),
        sha256: Some(sha),
        content_type: Some(content_type.clone()),
        filename: content.filename.clone(),
        size: content.bytes.len() as i64,
        uploader: None,
        created_ts: now_ms(),
        unused_expires_ts: None,
    };
    let (srv, id) = (server.to_owned(), media_id.to_owned());
    s.core
        .db
        .write(server, move |c| {
            // Two fetches of the same media may race; the first row wins.
            if store::get(c, &srv, &id)?.is_none() {
                store::insert(c, &row)?;
            }
            Ok(())
        })
        .await?;
    tracing::info!(
        server,
        media_id,
        size = content.bytes.len(),
        "cached remote media"
    );
    Ok(Content {
        content_type,
        ..content
    })
}

/// Parses a federation media answer: a JSON part, then the content (a `Location` redirect
/// instead of content is refused: following it would leave the federation client).
async fn parse_multipart(content_type: &str, body: Bytes) -> Result<Content> {
    let bad = |m: String| Error::Remote(format!("bad multipart media answer: {m}"));
    // multer's own boundary parser accepts only multipart/form-data.
    let parsed: mime::Mime = content_type
        .parse()
        .map_err(|_| bad(format!("content type {content_type:?}")))?;
    if parsed.type_() != mime::MULTIPART {
        return Err(bad(format!(
            "content type {content_type:?} is not multipart"
        )));
    }
    let boundary = parsed
        .get_param(mime::BOUNDARY)
        .map(|b| b.as_str().to_owned())
        .ok_or_else(|| bad("no boundary".into()))?;
    let body_stream = stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(body_stream, boundary);
    let first = parts
        .next_field()
        .await
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("no metadata part".into()))?;
    let meta = first.bytes().await.map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice::<Value>(&meta).map_err(|e| bad(format!("metadata: {e}")))?;
    let second = parts
        .next_field()
        .await
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("no content part".into()))?;
    if second.headers().contains_key("location") {
        return Err(bad("redirects to other locations are not followed".into()));
    }
    let ct = second
        .content_type()
        .map(|m| m.to_string())
        .unwrap_or_else(|| "application/octet-stream".into());
    let filename = second
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .and_then(rules::disposition_filename);
    let bytes = second.bytes().await.map_err(|e| bad(e.to_string()))?;
    Ok(Content {
        bytes,
        content_type: ct,
        filename,
    })
}

/// A thumbnail of any media (see [`content`] for `allow_remote`), generated once per size.
pub async fn thumbnail(
    s: &Services,
    server: &str,
    media_id: &str,
    width: u32,
    height: u32,
    method: Method,
    allow_remote: bool,
) -> Result<Content> {
    if width == 0 || height == 0 {
        return Err(Error::invalid_param("width and height must be positive"));
    }
    let (tw, th, tm) = rules::choose_size(rules::THUMBNAIL_SIZES, width, height, method)
        .ok_or_else(|| Error::not_found("no thumbnail size"))?;
    // Make sure the original is here (fetching remote media if need be).
    let original = content(s, server, media_id, allow_remote).await?;
    let row = row_of(&s.core, server, media_id)
        .await?
        .ok_or_else(|| Error::not_found("unknown media"))?;
    let sha = row.sha256.ok_or(Error::NotYetUploaded)?;
    let (sh, m) = (sha.clone(), tm.as_str());
    let cached = s
        .core
        .db
        .read(move |c| store::get_thumbnail(c, &sh, tw as i32, th as i32, m))
        .await?;
    if let Some(t) = cached {
        return Ok(Content {
            bytes: read_file(&s.core, &t.thumb_sha256).await?,
            content_type: t.content_type,
            filename: None,
        });
    }
    let max_pixels = s.core.config.media.max_thumbnail_source_pixels;
    let bytes = original.bytes;
    let (thumb, ct) =
        tokio::task::spawn_blocking(move || thumbnail::generate(&bytes, tw, th, tm, max_pixels))
            .await
            .map_err(|e| Error::internal(e.to_string()))?
            .map_err(|e| match e {
                thumbnail::ThumbError::NotAnImage => {
                    Error::not_found("no thumbnail for this content")
                }
                thumbnail::ThumbError::TooLarge => Error::TooLarge,
                other => Error::internal(other.to_string()),
            })?;
    let thumb = Bytes::from(thumb);
    let thumb_sha = write_file(&s.core, thumb.clone()).await?;
    let row = ThumbnailRow {
        sha256: sha,
        width: tw as i32,
        height: th as i32,
        method: tm.as_str().to_owned(),
        thumb_sha256: thumb_sha,
        content_type: ct.to_owned(),
        size: thumb.len() as i64,
    };
    s.core
        .db
        .write(server, move |c| store::put_thumbnail(c, &row))
        .await?;
    Ok(Content {
        bytes: thumb,
        content_type: ct.to_owned(),
        filename: None,
    })
}
