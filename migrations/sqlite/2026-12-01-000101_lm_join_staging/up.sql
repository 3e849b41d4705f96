-- Linearized Matrix: PDUs a hub sent while our join to its room was in progress. They are
-- acknowledged only once written here, and taken out (in order) when the join completes,
-- or at start-up if the process stopped in between.
CREATE TABLE lm_join_staging (
    room_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    origin TEXT NOT NULL,
    pdu TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, seq)
);
