-- The device's last tracker domain_userid, so that it can be retired when the device opts out
-- (SP-Anonymous with its cookie) or rotates, even if the opting-out request does not carry it.
ALTER TABLE device_state ADD COLUMN tracker_duid TEXT;
