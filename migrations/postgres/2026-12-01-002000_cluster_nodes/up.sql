-- weft cluster (docs/CLUSTER.md): when each node last heard its own heartbeat come back from
-- NATS, in milliseconds of the database's clock, written with every lease renewal round. A
-- node that has lost NATS reads it to tell "only I am cut off" (another node heard NATS
-- lately: give the leases up, the others cannot reach me) from "NATS is down for everyone"
-- (keep the rooms held and serve them locally).
CREATE TABLE cluster_nodes (
    node TEXT PRIMARY KEY,
    nats_seen_at BIGINT NOT NULL
);
