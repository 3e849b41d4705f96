-- weft cluster (docs/CLUSTER.md). A room's ownership lease: the node whose actor orders the
-- room's events, the epoch of its tenure (incremented on every acquisition) and when the lease
-- ends, in milliseconds of the database's own clock. Every write of the room's events checks
-- its row inside the writing transaction (fencing).
CREATE TABLE cluster_leases (
    room_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX cluster_leases_owner ON cluster_leases (owner);
-- Stream positions and state group IDs handed out by every node of a cluster (a single node
-- keeps its in-process counters and never touches these).
CREATE SEQUENCE cluster_stream_positions;
CREATE SEQUENCE cluster_state_groups;
