-- Server-side sessions: each device's latest session, read and written inside the write transaction
-- so that several collector processes on one file agree. It holds one device id per row, never two.
CREATE TABLE device_state (
    device_id     TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    session_index INTEGER NOT NULL,
    last_ms       INTEGER NOT NULL,
    tracker_sid   TEXT,
    user_id       TEXT,
    closed        INTEGER NOT NULL DEFAULT 0,   -- an anonymize event ended the session
    rotations     TEXT NOT NULL DEFAULT '[]'    -- recent rotation times (ms), for the rate limit
) WITHOUT ROWID;

-- Tracker ids (duid, sid) in use when a device rotated: never stored again. Values only, no device,
-- no time: the set holds nothing that events do not already hold, and links nothing.
CREATE TABLE retired_ids (value TEXT PRIMARY KEY) WITHOUT ROWID;

-- One row a session. Server sessions belong to a device; anonymous requests have no device, so their
-- sessions are the tracker's own (domain_sessionid). user_id: the user seen in the session, or for the
-- sessions of a device before its first identification, the user identified first on that device.
CREATE VIEW sessions AS
WITH s AS (
    SELECT session_id, network_userid AS device_id, session_index, MAX(user_id) AS own_user,
           MIN(collector_tstamp) AS started_at, MAX(collector_tstamp) AS ended_at, COUNT(*) AS event_count
    FROM events WHERE session_id IS NOT NULL GROUP BY session_id
), first_id AS (
    SELECT device_id, session_index AS first_index, own_user AS first_user FROM (
        SELECT device_id, session_index, own_user,
               ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY session_index) AS n
        FROM s WHERE own_user IS NOT NULL) WHERE n = 1
)
SELECT s.session_id, s.device_id,
       COALESCE(s.own_user, CASE WHEN s.session_index < f.first_index THEN f.first_user END) AS user_id,
       s.session_index, s.started_at, s.ended_at, s.event_count, 0 AS anonymous
FROM s LEFT JOIN first_id f ON f.device_id = s.device_id
UNION ALL
SELECT domain_sessionid, NULL, NULL, MAX(domain_sessionidx), MIN(collector_tstamp), MAX(collector_tstamp),
       COUNT(*), 1
FROM events WHERE anonymous = 1 AND domain_sessionid IS NOT NULL GROUP BY domain_sessionid;

-- One row a device: when it was seen, how many sessions, the user identified last on it.
CREATE VIEW devices AS
SELECT device_id, MIN(started_at) AS first_seen, MAX(ended_at) AS last_seen, COUNT(*) AS session_count,
       (SELECT own.user_id FROM sessions own WHERE own.device_id = s.device_id AND own.user_id IS NOT NULL
        ORDER BY own.session_index DESC LIMIT 1) AS user_id
FROM sessions s WHERE device_id IS NOT NULL GROUP BY device_id;
