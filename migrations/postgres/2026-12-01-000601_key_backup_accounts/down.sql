DROP TABLE backup_keys;
DROP TABLE backup_versions;
ALTER TABLE devices DROP COLUMN last_seen_ip;
