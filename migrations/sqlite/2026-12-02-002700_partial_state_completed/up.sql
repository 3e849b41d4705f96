-- Partial-state rooms that got their full state, and the stream position of that completion
-- (src/rooms/actor/partial.rs): the memberships learned are recorded at it, so an
-- incremental /sync across it carries them in the room's state section.
CREATE TABLE partial_state_completed (
    room_id TEXT PRIMARY KEY NOT NULL,
    stream_ordering BIGINT NOT NULL
);
CREATE INDEX partial_state_completed_stream ON partial_state_completed (stream_ordering);
