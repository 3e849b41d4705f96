-- Partial-state joins (faster remote joins, `send_join?omit_members=true`): a room joined
-- with the membership events left out stays here until its full state is fetched in the
-- background (src/federation/membership/partial.rs); the servers the host named are where
-- our events go meanwhile.
CREATE TABLE partial_state_rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    join_event_id TEXT NOT NULL,
    servers TEXT NOT NULL,
    since_ts BIGINT NOT NULL
);

-- Received events that failed their checks against the partial state: re-checked once the
-- full state is in (never rejected for lack of state meanwhile).
CREATE TABLE partial_state_deferred (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    depth BIGINT NOT NULL,
    pdu TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);
