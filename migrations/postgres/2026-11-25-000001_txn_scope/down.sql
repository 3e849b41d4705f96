DELETE FROM event_txns a USING event_txns b
    WHERE a.user_id = b.user_id AND a.device_id = b.device_id AND a.txn_id = b.txn_id
      AND a.scope > b.scope;
ALTER TABLE event_txns DROP CONSTRAINT event_txns_pkey;
ALTER TABLE event_txns DROP COLUMN scope;
ALTER TABLE event_txns ADD PRIMARY KEY (user_id, device_id, txn_id);
