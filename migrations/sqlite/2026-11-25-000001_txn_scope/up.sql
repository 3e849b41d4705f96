-- A client request is a retransmission only when both its transaction ID and its path are
-- the same, so transaction IDs are scoped by what the path names besides them (`scope`, a
-- JSON array such as ["send","!room","m.room.message"]). Rows from before this migration
-- get an empty scope: a retry across the upgrade is treated as a new request.
CREATE TABLE event_txns_scoped (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, scope, txn_id)
);
INSERT INTO event_txns_scoped (user_id, device_id, scope, txn_id, event_id)
    SELECT user_id, device_id, '', txn_id, event_id FROM event_txns;
DROP TABLE event_txns;
ALTER TABLE event_txns_scoped RENAME TO event_txns;
