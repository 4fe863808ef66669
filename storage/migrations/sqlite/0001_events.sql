-- Events and bad rows, append-only: the database itself refuses UPDATE and DELETE.
-- A rowid table appends in arrival order: rows of ~1 KB fit its pages, where a table keyed by the
-- random event id (WITHOUT ROWID) spilled each row to an overflow page and wrote 3x slower.
CREATE TABLE events (
    event_id            TEXT NOT NULL,
    event               TEXT NOT NULL,
    app_id              TEXT,
    platform            TEXT NOT NULL,
    name_tracker        TEXT,
    v_tracker           TEXT NOT NULL,
    v_collector         TEXT NOT NULL,
    collector_tstamp    TEXT NOT NULL,   -- UTC, 'YYYY-MM-DD HH:MM:SS.mmm': sqlite's date functions read it
    dvce_created_tstamp TEXT,
    dvce_sent_tstamp    TEXT,
    true_tstamp         TEXT,
    user_ipaddress      TEXT,
    useragent           TEXT,
    network_userid      TEXT,            -- the device id; NULL for anonymous requests
    domain_userid       TEXT,
    domain_sessionid    TEXT,
    domain_sessionidx   INTEGER,
    user_id             TEXT,
    session_id          TEXT,            -- server-side session of the device
    session_index       INTEGER,
    anonymous           INTEGER NOT NULL,
    page_url            TEXT,
    page_title          TEXT,
    page_referrer       TEXT,
    se_category         TEXT,
    se_action           TEXT,
    se_label            TEXT,
    se_property         TEXT,
    se_value            REAL,
    event_vendor        TEXT,
    event_name          TEXT,
    event_version       TEXT,
    unstruct_event      TEXT,            -- JSON
    contexts            TEXT,            -- JSON
    br_lang             TEXT,
    os_timezone         TEXT,
    other_params        TEXT             -- JSON object of the params without a column of their own
);
-- Retries resend the same event id: it is stored once.
CREATE UNIQUE INDEX events_event_id ON events (event_id);
-- No other index: each one is a random-order insert per event on the hot path; analysts' queries
-- over sessions scan the table anyway.

CREATE TABLE bad_rows (
    id          INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    payload     TEXT,                    -- NULL for anonymous requests whose body could not be scrubbed
    size        INTEGER NOT NULL,
    anonymous   INTEGER NOT NULL
);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;
CREATE TRIGGER bad_rows_no_update BEFORE UPDATE ON bad_rows
BEGIN SELECT RAISE(ABORT, 'bad_rows is append-only'); END;
CREATE TRIGGER bad_rows_no_delete BEFORE DELETE ON bad_rows
BEGIN SELECT RAISE(ABORT, 'bad_rows is append-only'); END;
