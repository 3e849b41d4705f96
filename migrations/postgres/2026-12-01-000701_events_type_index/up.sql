CREATE INDEX events_room_type_key ON events (room_id, event_type, state_key);
