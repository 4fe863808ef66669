-- Dedupe on (the device's creation time, the event id), as SQLite does (storage/group.py,
-- dedupe_key): a retry resends the same eid and dtm and is still claimed once; two events that share
-- only an id are two events. `created` is the row's dvce_created_tstamp as the collector wrote it
-- ('YYYY-MM-DD HH:MM:SS.mmm', UTC), or '' when the event had none; the primary key leads with it, so
-- that live traffic claims at the index's end rather than at a random page.
-- The back-fill rewrites every claim: on a big store it runs for minutes, longer than the collector's
-- own statement timeout; `python -m collector migrate` (no timeout) is how to apply it there.
SET LOCAL statement_timeout = 0;
ALTER TABLE event_ids ADD COLUMN created text NOT NULL DEFAULT '';
UPDATE event_ids i SET created = to_char(e.dvce_created_tstamp AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')
FROM events e WHERE e.event_id = i.event_id AND e.dvce_created_tstamp IS NOT NULL;
ALTER TABLE event_ids DROP CONSTRAINT event_ids_pkey;
ALTER TABLE event_ids ADD PRIMARY KEY (created, event_id);
-- No default from here on: a replica still running the old code (during a rolling upgrade) would
-- claim ('', eid) for an event the new code claims as (dtm, eid), and a retry would be stored twice.
-- Without a default its claim fails, it answers 503, and the tracker retries on another replica.
ALTER TABLE event_ids ALTER COLUMN created DROP DEFAULT;
