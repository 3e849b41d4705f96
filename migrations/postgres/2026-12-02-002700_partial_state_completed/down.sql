DROP TABLE partial_state_completed;
