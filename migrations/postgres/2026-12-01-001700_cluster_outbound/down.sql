DROP SEQUENCE cluster_queue_ids;
DROP SEQUENCE cluster_backfill_positions;
