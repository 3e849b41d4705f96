-- weft cluster (docs/CLUSTER.md): the PostgreSQL side adds the sequence cluster_queue_ids;
-- cluster mode needs PostgreSQL, so SQLite has nothing to add (kept so both dirs list the
-- same migrations).
SELECT 1;
