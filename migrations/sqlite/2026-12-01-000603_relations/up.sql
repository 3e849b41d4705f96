-- Event relationships (content."m.relates_to" with rel_type and event_id) of timeline
-- events, for /relations, /threads and bundled aggregations. Written with the event;
-- removed when the event is redacted. Filled here from the events already stored.
CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    event_type TEXT NOT NULL,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX event_relations_parent ON event_relations (relates_to, stream_ordering);
CREATE INDEX event_relations_room ON event_relations (room_id, rel_type, stream_ordering);

INSERT INTO event_relations
    (event_id, room_id, relates_to, rel_type, event_type, sender, origin_server_ts, stream_ordering)
SELECT event_id, room_id,
       json_extract(json, '$.content."m.relates_to".event_id'),
       json_extract(json, '$.content."m.relates_to".rel_type'),
       event_type, sender, origin_server_ts, stream_ordering
FROM events
WHERE stream_ordering IS NOT NULL AND outlier = 0 AND rejected IS NULL AND soft_failed = 0
  AND redacted_by IS NULL
  AND json_type(json, '$.content."m.relates_to".rel_type') = 'text'
  AND json_type(json, '$.content."m.relates_to".event_id') = 'text';
