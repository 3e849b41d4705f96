DROP INDEX to_device_inbound_ids_received;
DROP INDEX inbound_txns_received;
ALTER TABLE device_list_changes DROP COLUMN seen_ts;
ALTER TABLE to_device_txns DROP COLUMN seen_ts;
ALTER TABLE event_txns DROP COLUMN seen_ts;
