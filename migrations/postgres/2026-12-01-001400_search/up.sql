-- Full-text search over room events (POST /search): one row per searchable timeline event
-- (m.room.message body, m.room.name name, m.room.topic topic), written with the event and
-- removed when it is redacted. The words are a GIN index over the text's tsvector (an
-- expression index: nothing else to keep in step). Filled here from the events already stored.
CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    key TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
CREATE INDEX event_search_fts ON event_search USING GIN (to_tsvector('english', value));

INSERT INTO event_search (event_id, room_id, event_type, sender, key, stream_ordering, value)
SELECT event_id, room_id, event_type, sender, key, stream_ordering, value FROM (
    SELECT event_id, room_id, event_type, sender, stream_ordering,
           CASE event_type WHEN 'm.room.message' THEN 'content.body'
                           WHEN 'm.room.name' THEN 'content.name'
                           ELSE 'content.topic' END AS key,
           json::jsonb -> 'content' -> (CASE event_type WHEN 'm.room.message' THEN 'body'
                           WHEN 'm.room.name' THEN 'name' ELSE 'topic' END) AS field
    FROM events
    WHERE event_type IN ('m.room.message', 'm.room.name', 'm.room.topic')
      AND stream_ordering IS NOT NULL AND NOT outlier AND rejected IS NULL
      AND NOT soft_failed AND redacted_by IS NULL
) AS e, LATERAL (SELECT e.field #>> '{}' AS value) AS v
WHERE jsonb_typeof(e.field) = 'string' AND trim(v.value) <> '';
