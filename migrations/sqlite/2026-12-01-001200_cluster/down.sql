DROP TABLE cluster_leases;
