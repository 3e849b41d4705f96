-- End-to-end encryption relay: keys, to-device messages and device-list changes. The server
-- stores what clients upload as opaque signed JSON and never decrypts anything. See
-- src/e2ee/mod.rs for the design.

-- Device identity keys (`/keys/upload` `device_keys`) as uploaded, for local devices and the
-- cached devices of remote users. display_name is kept for remote devices only (local names
-- live in `devices`).
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    display_name TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Unclaimed one-time keys. Claiming deletes the row. seq orders uploads (oldest first).
CREATE TABLE e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);
CREATE INDEX e2e_one_time_keys_claim ON e2e_one_time_keys (user_id, device_id, algorithm, seq);

-- At most one fallback key per device and algorithm; `used` once handed out.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys (master, self_signing, user_signing) of local users, and the master and
-- self-signing keys of remote users as they announced them. key_id is the public key.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with /keys/signatures/upload, merged into the signed key's JSON when it
-- is read. target_key_id is a device ID or a cross-signing public key.
CREATE TABLE e2e_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- Pending to-device messages of local devices, at the stream position they arrived.
-- Deleted once a /sync with a later `since` acknowledges them.
CREATE TABLE to_device_inbox (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id)
);
CREATE INDEX to_device_inbox_stream ON to_device_inbox (stream_id);

-- /sendToDevice transaction IDs (idempotence per device).
CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- message_ids of m.direct_to_device EDUs already delivered (a retried transaction must not
-- deliver twice).
CREATE TABLE to_device_inbound_ids (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, message_id)
);

-- "user_id's devices or keys changed at stream_id". observer '' means everyone sharing a
-- room with user_id may see it; otherwise only that local user (their own signature on
-- someone else's master key).
CREATE TABLE device_list_changes (
    stream_id BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    observer TEXT NOT NULL,
    PRIMARY KEY (stream_id, user_id, observer)
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_id);

-- Remote users whose device lists we cache: the last m.device_list_update stream_id applied
-- and whether the cache may have missed an update (then a full resync is due).
CREATE TABLE remote_device_lists (
    user_id TEXT PRIMARY KEY NOT NULL,
    stream_id BIGINT NOT NULL,
    stale BOOLEAN NOT NULL
);

