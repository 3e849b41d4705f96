-- Federation: remote server keys, inbound transaction dedupe, the persisted outbound queue
-- and per-destination retry state.

-- The latest signed /_matrix/key/v2/server answer of each server (served again as a notary).
CREATE TABLE server_key_responses (
    server_name TEXT PRIMARY KEY NOT NULL,
    response TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL
);

-- Every key we learnt, including old ones (valid_until_ts = expired_ts for old keys).
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

CREATE TABLE inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- What we still owe each destination, in order. Written in the same transaction as the
-- events it carries, so a crash can never lose an acknowledged event's delivery.
CREATE TABLE outbound_queue (
    id BIGINT PRIMARY KEY NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX outbound_queue_destination ON outbound_queue (destination, id);

CREATE TABLE destinations (
    server_name TEXT PRIMARY KEY NOT NULL,
    failures INTEGER NOT NULL,
    retry_at BIGINT NOT NULL,
    last_success_ts BIGINT,
    last_error TEXT
);

-- Versions of rooms we know only from outside (an invite over federation) and hold no copy of.
CREATE TABLE room_versions (
    room_id TEXT PRIMARY KEY NOT NULL,
    room_version TEXT NOT NULL
);
