-- The data lifecycle: rows leave events and bad_rows only by retention (older than the recorded
-- horizon, which only moves forward) or inside a recorded erasure; the database refuses any other
-- DELETE, through any connection. UPDATE stays refused everywhere.
CREATE TABLE lifecycle (id INTEGER PRIMARY KEY CHECK (id = 1), horizon TEXT NOT NULL);
INSERT INTO lifecycle VALUES (1, '1970-01-01 00:00:00.000');
CREATE TRIGGER lifecycle_forward BEFORE UPDATE ON lifecycle WHEN NEW.horizon < OLD.horizon
BEGIN SELECT RAISE(ABORT, 'the retention horizon only moves forward'); END;
CREATE TRIGGER lifecycle_kept BEFORE DELETE ON lifecycle
BEGIN SELECT RAISE(ABORT, 'the retention horizon is kept'); END;

-- The erasure ledger: when, which kind of selector, how many rows; never the selector itself. A row
-- is inserted open, the erasure's DELETEs run, and it is closed with its counts, in one transaction.
CREATE TABLE erasures (
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,
    selector TEXT NOT NULL CHECK (selector IN ('user_id', 'device_id')),
    events   INTEGER,
    bad_rows INTEGER,
    devices  INTEGER,
    open     INTEGER NOT NULL DEFAULT 1
);
CREATE TRIGGER erasures_closed BEFORE UPDATE ON erasures WHEN OLD.open = 0
BEGIN SELECT RAISE(ABORT, 'a closed erasure is a record'); END;
CREATE TRIGGER erasures_kept BEFORE DELETE ON erasures
BEGIN SELECT RAISE(ABORT, 'the erasure ledger is append-only'); END;

DROP TRIGGER events_no_delete;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN OLD.collector_tstamp >= (SELECT horizon FROM lifecycle)
     AND NOT EXISTS (SELECT 1 FROM erasures WHERE open = 1)
BEGIN SELECT RAISE(ABORT, 'events is append-only: rows leave only by retention or a recorded erasure'); END;
DROP TRIGGER bad_rows_no_delete;
CREATE TRIGGER bad_rows_no_delete BEFORE DELETE ON bad_rows
WHEN OLD.received_at >= (SELECT horizon FROM lifecycle)
     AND NOT EXISTS (SELECT 1 FROM erasures WHERE open = 1)
BEGIN SELECT RAISE(ABORT, 'bad_rows is append-only: rows leave only by retention or a recorded erasure'); END;

-- A retired tracker id is refused only while a tracker could still send it (its own cookie's
-- lifetime): the month after which it can go. A month, not a time: it says nothing about when.
ALTER TABLE retired_ids ADD COLUMN expires TEXT NOT NULL DEFAULT '9999-12';
