-- Server-side key backup (/room_keys): versions of a user's backup and the backed-up
-- session keys, stored opaque (session_data is encrypted for the backup key). A deleted
-- version keeps its row (deleted = true) so its number is never handed out again. etag
-- grows with every change to the version's keys.
CREATE TABLE backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE backup_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BOOLEAN NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

-- Where a device was last seen from (kept in memory and written in batches).
ALTER TABLE devices ADD COLUMN last_seen_ip TEXT;
