CREATE TABLE event_txns_unscoped (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
INSERT OR IGNORE INTO event_txns_unscoped (user_id, device_id, txn_id, event_id)
    SELECT user_id, device_id, txn_id, event_id FROM event_txns;
DROP TABLE event_txns;
ALTER TABLE event_txns_unscoped RENAME TO event_txns;
