-- The PostgreSQL schema: the same tables and views as SQLite's, with the Snowplow names and proper types.
-- events and bad_rows are partitioned by month on the collector's own time, so that retention can drop
-- whole partitions; a unique index on a partitioned table must include the partition key, so dedupe
-- has its own table, event_ids, kept as long as the events.
CREATE TABLE events (
    event_id            text NOT NULL,
    event               text NOT NULL,
    app_id              text,
    platform            text NOT NULL,
    name_tracker        text,
    v_tracker           text NOT NULL,
    v_collector         text NOT NULL,
    collector_tstamp    timestamptz NOT NULL,
    dvce_created_tstamp timestamptz,
    dvce_sent_tstamp    timestamptz,
    true_tstamp         timestamptz,
    user_ipaddress      text,
    useragent           text,
    network_userid      text,            -- the device id; NULL for anonymous requests
    domain_userid       text,
    domain_sessionid    text,
    domain_sessionidx   integer,
    user_id             text,
    session_id          text,            -- server-side session of the device
    session_index       integer,
    anonymous           smallint NOT NULL,
    page_url            text,
    page_title          text,
    page_referrer       text,
    se_category         text,
    se_action           text,
    se_label            text,
    se_property         text,
    se_value            double precision,
    event_vendor        text,
    event_name          text,
    event_version       text,
    unstruct_event      jsonb,
    contexts            jsonb,
    br_lang             text,
    os_timezone         text,
    other_params        jsonb
) PARTITION BY RANGE (collector_tstamp);
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- Every stored event id, claimed inside the transaction that stores the event (INSERT ... ON CONFLICT
-- DO NOTHING RETURNING): a retry sent to any replica finds it and is stored once.
CREATE TABLE event_ids (
    event_id   text PRIMARY KEY,
    first_seen timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bad_rows (
    id          bigserial NOT NULL,
    received_at timestamptz NOT NULL,
    reason      text NOT NULL,
    detail      text NOT NULL,
    payload     text,                    -- NULL for anonymous requests whose body could not be scrubbed
    size        integer NOT NULL,
    anonymous   smallint NOT NULL
) PARTITION BY RANGE (received_at);
CREATE TABLE bad_rows_default PARTITION OF bad_rows DEFAULT;

-- Append-only, enforced by the database: row triggers (cloned onto every partition) refuse UPDATE and
-- DELETE, a statement trigger refuses TRUNCATE; the collector's role has neither privilege either.
CREATE FUNCTION collector_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION collector_append_only();
CREATE TRIGGER bad_rows_append_only BEFORE UPDATE OR DELETE ON bad_rows
    FOR EACH ROW EXECUTE FUNCTION collector_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION collector_append_only();
CREATE TRIGGER bad_rows_no_truncate BEFORE TRUNCATE ON bad_rows
    FOR EACH STATEMENT EXECUTE FUNCTION collector_append_only();
CREATE TRIGGER events_default_no_truncate BEFORE TRUNCATE ON events_default
    FOR EACH STATEMENT EXECUTE FUNCTION collector_append_only();
CREATE TRIGGER bad_rows_default_no_truncate BEFORE TRUNCATE ON bad_rows_default
    FOR EACH STATEMENT EXECUTE FUNCTION collector_append_only();

-- Monthly partitions from this month to `ahead` months later; run by the owner (migrate) and by the
-- collector at start (SECURITY DEFINER: the collector's role creates partitions, nothing else).
CREATE FUNCTION collector_ensure_partitions(ahead integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    m date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    t text;
    part text;
BEGIN
    -- one at a time across replicas (transaction-scoped, released at commit)
    PERFORM pg_advisory_xact_lock(hashtext('collector_ensure_partitions'));
    FOR i IN 0..ahead LOOP
        FOREACH t IN ARRAY ARRAY['events', 'bad_rows'] LOOP
            part := format('%s_%s', t, to_char(m + make_interval(months => i), 'YYYYMM'));
            IF to_regclass(part) IS NULL THEN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    part, t,
                    (m + make_interval(months => i))::timestamp AT TIME ZONE 'UTC',
                    (m + make_interval(months => i + 1))::timestamp AT TIME ZONE 'UTC');
                EXECUTE format(
                    'CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT '
                    'EXECUTE FUNCTION collector_append_only()', part || '_no_truncate', part);
            END IF;
        END LOOP;
    END LOOP;
END $$;

-- Server-side sessions: each device's latest session, locked (in device-id order) and written inside
-- the group's transaction, so that replicas on several hosts agree. One device id per row, never two.
CREATE TABLE device_state (
    device_id     text PRIMARY KEY,
    session_id    text NOT NULL,
    session_index integer NOT NULL,        -- 0: a placeholder inserted to be locked, no session yet
    last_ms       bigint NOT NULL,
    tracker_sid   text,
    user_id       text,
    closed        smallint NOT NULL DEFAULT 0,
    tracker_duid  text,
    tracker_ids   text NOT NULL DEFAULT '[]'  -- JSON array: the latest events' tracker ids, newest first
);

-- Tracker ids (duid, sid, session entity ids) in use when a device rotated or opted out: never
-- stored again. Values only, no device, no time.
CREATE TABLE retired_ids (value text PRIMARY KEY);

-- One row the collector rewrites while commits fail, to see when the store has healed.
CREATE TABLE store_health (id integer PRIMARY KEY CHECK (id = 1), checked_ms bigint NOT NULL);

-- The same views as SQLite's (see storage/migrations/sqlite/0002_sessions.sql for their rules).
CREATE VIEW sessions AS
WITH s AS (
    SELECT session_id, MIN(network_userid) AS device_id, MIN(session_index) AS session_index,
           MAX(user_id) AS own_user, MIN(collector_tstamp) AS started_at, MAX(collector_tstamp) AS ended_at,
           COUNT(*) AS event_count
    FROM events WHERE session_id IS NOT NULL GROUP BY session_id
), first_id AS (
    SELECT device_id, session_index AS first_index, own_user AS first_user FROM (
        SELECT device_id, session_index, own_user,
               ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY session_index) AS n
        FROM s WHERE own_user IS NOT NULL) ranked WHERE n = 1
)
SELECT s.session_id, s.device_id,
       COALESCE(s.own_user, CASE WHEN s.session_index < f.first_index THEN f.first_user END) AS user_id,
       s.session_index, s.started_at, s.ended_at, s.event_count, 0 AS anonymous
FROM s LEFT JOIN first_id f ON f.device_id = s.device_id
UNION ALL
SELECT domain_sessionid, NULL, NULL, MAX(domain_sessionidx), MIN(collector_tstamp), MAX(collector_tstamp),
       COUNT(*), 1
FROM events WHERE anonymous = 1 AND domain_sessionid IS NOT NULL GROUP BY domain_sessionid;

CREATE VIEW devices AS
SELECT device_id, MIN(started_at) AS first_seen, MAX(ended_at) AS last_seen, COUNT(*) AS session_count,
       (SELECT own.user_id FROM sessions own WHERE own.device_id = s.device_id AND own.user_id IS NOT NULL
        ORDER BY own.session_index DESC LIMIT 1) AS user_id
FROM sessions s WHERE device_id IS NOT NULL GROUP BY device_id;
