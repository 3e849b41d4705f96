DROP TABLE room_versions; DROP TABLE destinations; DROP TABLE outbound_queue; DROP TABLE inbound_txns; DROP TABLE server_keys; DROP TABLE server_key_responses;
