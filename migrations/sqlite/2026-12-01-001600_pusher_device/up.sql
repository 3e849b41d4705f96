-- The device whose access token made each pusher: deleting the device (logout, device
-- deletion, a password change that logs out other devices) removes its pushers, as the
-- spec ties pushers to the access token's device. Pushers made before this migration have
-- no device and stay until removed through /pushers/set or deactivation.
ALTER TABLE pushers ADD COLUMN device_id TEXT;
CREATE INDEX pushers_device ON pushers (user_id, device_id);
