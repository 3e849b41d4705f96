DROP TABLE partial_state_deferred;
DROP TABLE partial_state_rooms;
