-- The data lifecycle (see storage/lifecycle.py): rows leave events and bad_rows only by retention
-- (older than the recorded horizon, which only moves forward; whole months by dropping partitions)
-- or inside a recorded erasure. UPDATE and TRUNCATE stay refused; the writer role has no DELETE.
CREATE TABLE lifecycle (id integer PRIMARY KEY CHECK (id = 1), horizon timestamptz NOT NULL);
INSERT INTO lifecycle VALUES (1, '1970-01-01 00:00:00+00');  -- finite: clients read it back

CREATE TABLE erasures (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL,
    selector text NOT NULL CHECK (selector IN ('user_id', 'device_id')),
    events   bigint,
    bad_rows bigint,
    devices  bigint,
    open     boolean NOT NULL DEFAULT true
);

CREATE FUNCTION collector_lifecycle_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'lifecycle' THEN
        IF TG_OP = 'UPDATE' AND NEW.horizon >= OLD.horizon THEN RETURN NEW; END IF;
        RAISE EXCEPTION 'the retention horizon only moves forward' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.open THEN RETURN NEW; END IF;  -- closing an erasure with its counts
    RAISE EXCEPTION 'the erasure ledger is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER lifecycle_guard BEFORE UPDATE OR DELETE ON lifecycle
    FOR EACH ROW EXECUTE FUNCTION collector_lifecycle_guard();
CREATE TRIGGER erasures_guard BEFORE UPDATE OR DELETE ON erasures
    FOR EACH ROW EXECUTE FUNCTION collector_lifecycle_guard();

-- A DELETE passes only for a row older than the horizon, or inside an open (recorded) erasure.
CREATE FUNCTION collector_delete_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND (
        (to_jsonb(OLD) ->> TG_ARGV[0])::timestamptz < (SELECT horizon FROM lifecycle)
        OR EXISTS (SELECT 1 FROM erasures WHERE open)
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: rows leave only by retention or a recorded erasure', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER events_append_only ON events;
DROP TRIGGER bad_rows_append_only ON bad_rows;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION collector_delete_guard('collector_tstamp');
CREATE TRIGGER bad_rows_append_only BEFORE UPDATE OR DELETE ON bad_rows
    FOR EACH ROW EXECUTE FUNCTION collector_delete_guard('received_at');

ALTER TABLE retired_ids ADD COLUMN expires text NOT NULL DEFAULT '9999-12';

-- One lifecycle run, with the owner's rights (the writer role may call it, and do nothing else of
-- the kind): advance the horizon; drop the partitions wholly older; delete older rows from the rest;
-- forget event ids as old; cull devices not seen since cull_before_ms; forget expired retired ids.
CREATE FUNCTION collector_lifecycle(new_horizon timestamptz, cull_before_ms bigint, this_month text)
RETURNS TABLE (events bigint, bad_rows bigint, devices bigint, retired bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    h timestamptz;
    part record;
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('collector_lifecycle'));  -- one replica at a time
    events := 0; bad_rows := 0;
    IF new_horizon IS NOT NULL THEN
        UPDATE lifecycle SET horizon = greatest(horizon, new_horizon) WHERE id = 1;
    END IF;
    SELECT l.horizon INTO h FROM lifecycle l WHERE id = 1;
    IF h > '1970-01-01 00:00:00+00' THEN
        FOR part IN
            SELECT c.relname AS name, p.relname AS parent,
                   (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
            WHERE p.relname IN ('events', 'bad_rows') AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
        LOOP
            IF part.upper <= h THEN
                EXECUTE format('SELECT count(*) FROM %I', part.name) INTO n;
                EXECUTE format('DROP TABLE %I', part.name);
                IF part.parent = 'events' THEN events := events + n; ELSE bad_rows := bad_rows + n; END IF;
            END IF;
        END LOOP;
        DELETE FROM events e WHERE e.collector_tstamp < h;
        GET DIAGNOSTICS n = ROW_COUNT; events := events + n;
        DELETE FROM bad_rows b WHERE b.received_at < h;
        GET DIAGNOSTICS n = ROW_COUNT; bad_rows := bad_rows + n;
        DELETE FROM event_ids WHERE first_seen < h;
    END IF;
    DELETE FROM device_state d WHERE d.last_ms < cull_before_ms AND d.session_index > 0;
    GET DIAGNOSTICS devices = ROW_COUNT;
    DELETE FROM retired_ids r WHERE r.expires < this_month;
    GET DIAGNOSTICS retired = ROW_COUNT;
    RETURN NEXT;
END $$;
