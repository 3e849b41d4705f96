-- A client request is a retransmission only when both its transaction ID and its path are
-- the same, so transaction IDs are scoped by what the path names besides them (`scope`, a
-- JSON array such as ["send","!room","m.room.message"]). Rows from before this migration
-- get an empty scope: a retry across the upgrade is treated as a new request.
ALTER TABLE event_txns ADD COLUMN scope TEXT NOT NULL DEFAULT '';
ALTER TABLE event_txns DROP CONSTRAINT event_txns_pkey;
ALTER TABLE event_txns ADD PRIMARY KEY (user_id, device_id, scope, txn_id);
