CREATE TABLE event_search_old (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    key TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    value TEXT NOT NULL
);
INSERT INTO event_search_old (id, event_id, room_id, event_type, sender, key, stream_ordering, value)
    SELECT id, event_id, room_id, event_type, sender, key, stream_ordering, value FROM event_search;
DROP TRIGGER event_search_delete;
DROP TABLE event_search;
ALTER TABLE event_search_old RENAME TO event_search;
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
CREATE TRIGGER event_search_insert AFTER INSERT ON event_search BEGIN
    INSERT INTO event_search_fts (rowid, value) VALUES (new.id, new.value);
END;
CREATE TRIGGER event_search_delete AFTER DELETE ON event_search BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, value) VALUES ('delete', old.id, old.value);
END;

CREATE TABLE push_notifications_old (
    user_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    stream_id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    actions TEXT NOT NULL,
    highlight BOOLEAN NOT NULL,
    PRIMARY KEY (user_id, event_id)
);
INSERT OR IGNORE INTO push_notifications_old
    SELECT user_id, event_id, room_id, thread_id, stream_ordering, stream_id, ts, actions, highlight
    FROM push_notifications;
DROP TABLE push_notifications;
ALTER TABLE push_notifications_old RENAME TO push_notifications;
CREATE INDEX push_notifications_room ON push_notifications (user_id, room_id, stream_ordering);
CREATE INDEX push_notifications_stream ON push_notifications (user_id, stream_id);
