-- The brief tracker ids of each device's latest events (the session's, the page and screen views'; a
-- JSON array, newest first) apart from the lasting ones in tracker_ids, so that the views cannot push
-- a tab's id or a landing link's out of what a rotation retires (identifiers.BRIEF_IDS_KEPT).
ALTER TABLE device_state ADD COLUMN brief_ids text NOT NULL DEFAULT '[]';
