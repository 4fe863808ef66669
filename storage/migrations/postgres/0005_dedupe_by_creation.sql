-- Dedupe on (the device's creation time, the event id), as SQLite does (storage/group.py,
-- dedupe_key): a retry resends the same eid and dtm and is still claimed once; two events that share
-- only an id are two events. `created` is the row's dvce_created_tstamp as the collector wrote it
-- ('YYYY-MM-DD HH:MM:SS.mmm', UTC), or '' when the event had none; the primary key leads with it, so
-- that live traffic claims at the index's end rather than at a random page.
ALTER TABLE event_ids ADD COLUMN created text NOT NULL DEFAULT '';
UPDATE event_ids i SET created = to_char(e.dvce_created_tstamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')
FROM events e WHERE e.event_id = i.event_id AND e.dvce_created_tstamp IS NOT NULL;
ALTER TABLE event_ids DROP CONSTRAINT event_ids_pkey;
ALTER TABLE event_ids ADD PRIMARY KEY (created, event_id);
