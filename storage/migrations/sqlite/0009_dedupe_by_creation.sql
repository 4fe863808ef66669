-- Dedupe on (the device's creation time, the event id) instead of the event id alone (see
-- storage/group.py, dedupe_key). The event id is random, so its unique index took every insert at a
-- random page: about one page written to the WAL and checkpointed per event, the largest part of a
-- commit. Keyed by creation time first, live traffic inserts at the index's end. A retry resends the
-- same eid and dtm, so it is still stored once. Every existing row is unique by event id, so the new
-- index is unique over them as well.
CREATE UNIQUE INDEX events_dedupe ON events (coalesce(dvce_created_tstamp, ''), event_id);
DROP INDEX events_event_id;
