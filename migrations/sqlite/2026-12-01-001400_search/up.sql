-- Full-text search over room events (POST /search): one row per searchable timeline event
-- (m.room.message body, m.room.name name, m.room.topic topic), written with the event and
-- removed when it is redacted. The words live in an FTS5 index kept over this table by the
-- triggers below (external content: the text is stored once). Filled here from the events
-- already stored.
CREATE TABLE event_search (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    key TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
CREATE VIRTUAL TABLE event_search_fts USING fts5(
    value, content = 'event_search', content_rowid = 'id',
    tokenize = 'porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER event_search_insert AFTER INSERT ON event_search BEGIN
    INSERT INTO event_search_fts (rowid, value) VALUES (new.id, new.value);
END;
CREATE TRIGGER event_search_delete AFTER DELETE ON event_search BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, value) VALUES ('delete', old.id, old.value);
END;

INSERT INTO event_search (event_id, room_id, event_type, sender, key, stream_ordering, value)
SELECT event_id, room_id, event_type, sender, key, stream_ordering, value FROM (
    SELECT event_id, room_id, event_type, sender, stream_ordering,
           CASE event_type WHEN 'm.room.message' THEN 'content.body'
                           WHEN 'm.room.name' THEN 'content.name'
                           ELSE 'content.topic' END AS key,
           CASE event_type WHEN 'm.room.message' THEN json_extract(json, '$.content.body')
                           WHEN 'm.room.name' THEN json_extract(json, '$.content.name')
                           ELSE json_extract(json, '$.content.topic') END AS value,
           CASE event_type WHEN 'm.room.message' THEN json_type(json, '$.content.body')
                           WHEN 'm.room.name' THEN json_type(json, '$.content.name')
                           ELSE json_type(json, '$.content.topic') END AS kind
    FROM events
    WHERE event_type IN ('m.room.message', 'm.room.name', 'm.room.topic')
      AND stream_ordering IS NOT NULL AND outlier = 0 AND rejected IS NULL
      AND soft_failed = 0 AND redacted_by IS NULL
)
WHERE kind = 'text' AND trim(value) <> '';
