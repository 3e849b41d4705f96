//! Media metadata rows (the bytes are files; see `crate::media`).

use diesel::prelude::*;

use super::schema::{media, media_thumbnails};
use super::{AnyConnection, StorageResult};

#[derive(Debug, Clone, Queryable)]
pub struct MediaRow {
    pub server_name: String,
    pub media_id: String,
    pub sha256: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: i64,
    pub uploader: Option<String>,
    pub created_ts: i64,
    pub unused_expires_ts: Option<i64>,
}

#[derive(Debug, Clone, Queryable)]
pub struct ThumbnailRow {
    pub sha256: String,
    pub width: i32,
    pub height: i32,
    pub method: String,
    pub thumb_sha256: String,
    pub content_type: String,
    pub size: i64,
}

pub fn get(
    conn: &mut AnyConnection,
    server_name: &str,
    media_id: &str,
) -> StorageResult<Option<MediaRow>> {
    Ok(media::table
        .filter(media::server_name.eq(server_name))
        .filter(media::media_id.eq(media_id))
        .first::<MediaRow>(conn)
        .optional()?)
}

/// Inserts a row (the caller made sure the ID is new).
pub fn insert(conn: &mut AnyConnection, row: &MediaRow) -> StorageResult<()> {
    diesel::insert_into(media::table)
        .values((
            media::server_name.eq(&row.server_name),
            media::media_id.eq(&row.media_id),
            media::sha256.eq(&row.sha256),
            media::content_type.eq(&row.content_type),
            media::filename.eq(&row.filename),
            media::size.eq(row.size),
            media::uploader.eq(&row.uploader),
            media::created_ts.eq(row.created_ts),
            media::unused_expires_ts.eq(row.unused_expires_ts),
        ))
        .execute(conn)?;
    Ok(())
}

/// Fills in the content of a media ID created earlier (`/create`); `false` if it already
/// had content.
pub fn set_content(
    conn: &mut AnyConnection,
    server_name: &str,
    media_id: &str,
    sha256: &str,
    content_type: &str,
    filename: Option<&str>,
    size: i64,
) -> StorageResult<bool> {
    let n = diesel::update(
        media::table
            .filter(media::server_name.eq(server_name))
            .filter(media::media_id.eq(media_id))
            .filter(media::sha256.is_null()),
    )
    .set((
        media::sha256.eq(Some(sha256)),
        media::content_type.eq(Some(content_type)),
        media::filename.eq(filename),
        media::size.eq(size),
        media::unused_expires_ts.eq(None::<i64>),
    ))
    .execute(conn)?;
    Ok(n > 0)
}

/// Bytes uploaded by a user (for the quota). Summed here: `SUM(BIGINT)` is NUMERIC on
/// PostgreSQL and BIGINT on SQLite, and one user's row count is small.
pub fn bytes_of_uploader(conn: &mut AnyConnection, user_id: &str) -> StorageResult<i64> {
    let sizes: Vec<i64> = media::table
        .filter(media::uploader.eq(user_id))
        .select(media::size)
        .load(conn)?;
    Ok(sizes.iter().sum())
}

/// Media IDs a user created with `/create` and has not uploaded to, still unexpired.
pub fn pending_of_uploader(
    conn: &mut AnyConnection,
    user_id: &str,
    now: i64,
) -> StorageResult<i64> {
    Ok(media::table
        .filter(media::uploader.eq(user_id))
        .filter(media::sha256.is_null())
        .filter(media::unused_expires_ts.gt(now))
        .count()
        .get_result(conn)?)
}

pub fn get_thumbnail(
    conn: &mut AnyConnection,
    sha256: &str,
    width: i32,
    height: i32,
    method: &str,
) -> StorageResult<Option<ThumbnailRow>> {
    Ok(media_thumbnails::table
        .filter(media_thumbnails::sha256.eq(sha256))
        .filter(media_thumbnails::width.eq(width))
        .filter(media_thumbnails::height.eq(height))
        .filter(media_thumbnails::method.eq(method))
        .first::<ThumbnailRow>(conn)
        .optional()?)
}

pub fn put_thumbnail(conn: &mut AnyConnection, row: &ThumbnailRow) -> StorageResult<()> {
    diesel::delete(
        media_thumbnails::table
            .filter(media_thumbnails::sha256.eq(&row.sha256))
            .filter(media_thumbnails::width.eq(row.width))
            .filter(media_thumbnails::height.eq(row.height))
            .filter(media_thumbnails::method.eq(&row.method)),
    )
    .execute(conn)?;
    diesel::insert_into(media_thumbnails::table)
        .values((
            media_thumbnails::sha256.eq(&row.sha256),
            media_thumbnails::width.eq(row.width),
            media_thumbnails::height.eq(row.height),
            media_thumbnails::method.eq(&row.method),
            media_thumbnails::thumb_sha256.eq(&row.thumb_sha256),
            media_thumbnails::content_type.eq(&row.content_type),
            media_thumbnails::size.eq(row.size),
        ))
        .execute(conn)?;
    Ok(())
}
