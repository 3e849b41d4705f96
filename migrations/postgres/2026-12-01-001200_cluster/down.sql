DROP SEQUENCE cluster_state_groups;
DROP SEQUENCE cluster_stream_positions;
DROP TABLE cluster_leases;
