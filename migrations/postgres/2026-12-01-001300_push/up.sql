-- Push: what the push worker found for each local user (one row per notifying event), the
-- worker's position in the event stream, pushers, and the gateway delivery queue.
--
-- push_notifications: counts are the rows after the user's read receipts (see
-- storage/push.rs); stream_ordering is the event's, stream_id the position the row was
-- written at (wakes /sync and sliding sync when counts change without a new event).
CREATE TABLE push_notifications (
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
CREATE INDEX push_notifications_room ON push_notifications (user_id, room_id, stream_ordering);
CREATE INDEX push_notifications_stream ON push_notifications (user_id, stream_id);

-- The last event stream position the push worker has evaluated (one row, id 1). No row:
-- the worker starts at the frontier it finds, so history from before push existed is not
-- evaluated (and a new database stays empty for `weft db migrate`).
CREATE TABLE push_progress (
    id INTEGER PRIMARY KEY NOT NULL,
    stream BIGINT NOT NULL
);

CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_key ON pushers (app_id, pushkey);

-- Notifications waiting for their push gateway: the exact body to POST, retried with
-- backoff until answered.
CREATE TABLE push_outbox (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    event_id TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_ts BIGINT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey, event_id)
);
CREATE INDEX push_outbox_due ON push_outbox (next_attempt_ts);
