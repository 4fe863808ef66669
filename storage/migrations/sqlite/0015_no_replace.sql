-- INSERT OR REPLACE deletes the row it conflicts with and fires no DELETE trigger (unless the
-- connection turned recursive_triggers on) nor an UPDATE one: it moved the horizon past the present,
-- after which every DELETE passed as retention, and it rewrote a closed erasure record. The lifecycle
-- row was inserted once, by the migration that made it; a ledger entry, a bad row are never replaced.
-- (An event replaced under its own dedupe key is not refused here: a trigger on every insert into
-- events costs the writer 2-4.5 us a row, and SQLite's guards are against a mistake, not a file's
-- writer, who may drop them. PostgreSQL's writer role may not insert into lifecycle or erasures.)
CREATE TRIGGER lifecycle_inserted_once BEFORE INSERT ON lifecycle
BEGIN SELECT RAISE(ABORT, 'the retention horizon only moves forward'); END;
CREATE TRIGGER erasures_not_replaced BEFORE INSERT ON erasures
WHEN EXISTS (SELECT 1 FROM erasures WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'the erasure ledger is append-only'); END;
CREATE TRIGGER bad_rows_not_replaced BEFORE INSERT ON bad_rows
WHEN EXISTS (SELECT 1 FROM bad_rows WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'bad_rows is append-only: rows leave only by retention or a recorded erasure'); END;

-- A DELETE inside an erasure passes only on the connection that opened the ledger entry, in its
-- transaction: the erasure's last insert is its entry (last_insert_rowid() is the connection's own),
-- whose id it draws at random from 2^32 up (storage/lifecycle.py), so that no connection's unrelated
-- insert (a temporary table's first row is rowid 1) matches an entry by chance. An entry left open by
-- another connection (a tool's INSERT, committed) let every later DELETE through, from anyone.
DROP TRIGGER events_no_delete;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.collector_tstamp >= (SELECT horizon FROM lifecycle)
     AND NOT EXISTS (SELECT 1 FROM erasures WHERE open = 1 AND id = last_insert_rowid() AND id >= 4294967296)
BEGIN SELECT RAISE(ABORT, 'events is append-only: rows leave only by retention or a recorded erasure'); END;
DROP TRIGGER bad_rows_no_delete;
CREATE TRIGGER bad_rows_no_delete BEFORE DELETE ON bad_rows
WHEN OLD.received_at >= (SELECT horizon FROM lifecycle)
     AND NOT EXISTS (SELECT 1 FROM erasures WHERE open = 1 AND id = last_insert_rowid() AND id >= 4294967296)
BEGIN SELECT RAISE(ABORT, 'bad_rows is append-only: rows leave only by retention or a recorded erasure'); END;

-- A retired (closed) device's state stays while its events may (storage/lifecycle.py says why): kept
-- here too, for a replica of an older version culling it during a rolling upgrade. Its DELETE skips
-- the row (IGNORE: the rest of the statement goes on), but inside an erasure.
CREATE TRIGGER device_state_retired_kept BEFORE DELETE ON device_state
WHEN OLD.closed = 1
     AND OLD.last_ms >= CAST((julianday((SELECT horizon FROM lifecycle)) - 2440587.5) * 86400000 AS INTEGER)
     AND NOT EXISTS (SELECT 1 FROM erasures WHERE open = 1 AND id = last_insert_rowid() AND id >= 4294967296)
BEGIN SELECT RAISE(IGNORE); END;
