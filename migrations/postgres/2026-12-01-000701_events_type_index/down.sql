DROP INDEX events_room_type_key;
