-- The duids of the cross-domain links each device landed through (a JSON array, newest first), apart
-- from its lasting ids, so that a URL with many `_sp` links cannot push a tab's id out of what a
-- rotation retires (identifiers.LINK_IDS_KEPT). From here on tracker_ids holds every remembered id,
-- brief_ids and link_ids naming which are which, so that a replica of an older version retires them
-- all (sessions.state_row).
ALTER TABLE device_state ADD COLUMN link_ids TEXT NOT NULL DEFAULT '[]';
