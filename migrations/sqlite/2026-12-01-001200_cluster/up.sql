-- weft cluster (docs/CLUSTER.md): cluster mode needs PostgreSQL; the table exists here only so
-- both schemas stay the same shape (a SQLite → PostgreSQL migration copies it).
CREATE TABLE cluster_leases (
    room_id TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX cluster_leases_owner ON cluster_leases (owner);
