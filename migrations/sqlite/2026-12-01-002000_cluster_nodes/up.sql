-- weft cluster (docs/CLUSTER.md): cluster mode needs PostgreSQL; the table exists here only so
-- both schemas stay the same shape.
CREATE TABLE cluster_nodes (
    node TEXT PRIMARY KEY NOT NULL,
    nats_seen_at BIGINT NOT NULL
);
