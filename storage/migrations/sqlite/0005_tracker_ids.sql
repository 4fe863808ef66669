-- The tracker ids of each device's latest events (a JSON array, newest first, at most 16): retired with
-- the device even when the request that retires it carries none (an opt-out).
ALTER TABLE device_state ADD COLUMN tracker_ids TEXT NOT NULL DEFAULT '[]';
