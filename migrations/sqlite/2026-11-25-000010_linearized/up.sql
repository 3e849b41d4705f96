-- Linearized Matrix: the LPDUs this server completed as a hub, by LPDU event ID, so a
-- participant's retry (a new transaction carrying the same LPDU) is answered with the event
-- already in the line instead of being appended twice.
CREATE TABLE lm_lpdus (
    lpdu_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL
);
