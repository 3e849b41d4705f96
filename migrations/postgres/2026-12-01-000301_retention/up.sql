-- Retention: when the pruning sweep first saw a row (0 = not seen yet). Rows are stamped by
-- the sweep, so the insert paths need not know; a row lives `age` + at most one interval.
ALTER TABLE event_txns ADD COLUMN seen_ts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE to_device_txns ADD COLUMN seen_ts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE device_list_changes ADD COLUMN seen_ts BIGINT NOT NULL DEFAULT 0;
CREATE INDEX inbound_txns_received ON inbound_txns (received_ts);
CREATE INDEX to_device_inbound_ids_received ON to_device_inbound_ids (received_ts);
