-- The content repository's metadata; the bytes are files under data_dir/media, named by
-- their SHA-256 (content-addressed: identical uploads share one file). One row per media
-- ID, local (uploader set) or remote and cached here (uploader NULL). sha256 is NULL for a
-- media ID created with /create and not uploaded yet (unused_expires_ts says until when
-- it may be).
CREATE TABLE media (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    sha256 TEXT,
    content_type TEXT,
    filename TEXT,
    size BIGINT NOT NULL,
    uploader TEXT,
    created_ts BIGINT NOT NULL,
    unused_expires_ts BIGINT,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX media_uploader ON media (uploader);

-- Generated thumbnails, keyed by the source content (so de-duplicated content shares
-- them too); the thumbnail's bytes are a content-addressed file as well.
CREATE TABLE media_thumbnails (
    sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    thumb_sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (sha256, width, height, method)
);
