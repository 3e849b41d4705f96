-- The followers' rows keyed by stream position instead of event ID (storage/search.rs,
-- storage/push.rs). Positions grow, so a batch of rows lands at the end of each index;
-- random event IDs dirtied an index page per row, and the work grew with the table.
--
-- event_search: no index on event_id (rows are found by their event's position) and no
-- insert trigger (the indexer writes a chunk's words into the FTS5 table with one
-- statement; the delete trigger stays). Rows keep their id, so the FTS5 index stays valid.
CREATE TABLE event_search_new (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    key TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL UNIQUE,
    value TEXT NOT NULL
);
INSERT INTO event_search_new (id, event_id, room_id, event_type, sender, key, stream_ordering, value)
    SELECT id, event_id, room_id, event_type, sender, key, stream_ordering, value FROM event_search;
DROP TRIGGER event_search_insert;
DROP TRIGGER event_search_delete;
DROP TABLE event_search;
ALTER TABLE event_search_new RENAME TO event_search;
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
CREATE TRIGGER event_search_delete AFTER DELETE ON event_search BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, value) VALUES ('delete', old.id, old.value);
END;

-- push_notifications: one row per user and event, now named by the event's position.
CREATE TABLE push_notifications_new (
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    actions TEXT NOT NULL,
    highlight BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, stream_ordering)
);
INSERT OR IGNORE INTO push_notifications_new
    SELECT user_id, event_id, room_id, thread_id, stream_ordering, stream_id, ts, actions, highlight
    FROM push_notifications;
DROP TABLE push_notifications;
ALTER TABLE push_notifications_new RENAME TO push_notifications;
CREATE INDEX push_notifications_room ON push_notifications (user_id, room_id, stream_ordering);
CREATE INDEX push_notifications_stream ON push_notifications (user_id, stream_id);
