DROP INDEX pushers_device;
ALTER TABLE pushers DROP COLUMN device_id;
