-- weft cluster (docs/CLUSTER.md): outbound queue row IDs handed out by every node of a cluster
-- (they name federation transactions, so they must never repeat across nodes). A single node
-- keeps its in-process counter and never touches this. Destinations' delivery leases live in
-- cluster_leases under the key 'dest:<server name>' (room IDs start with '!').
CREATE SEQUENCE cluster_queue_ids;
-- Backfilled history's stream positions (negative) are the negation of this sequence's values
-- in a cluster, so two nodes backfilling at once never take the same position.
CREATE SEQUENCE cluster_backfill_positions;
