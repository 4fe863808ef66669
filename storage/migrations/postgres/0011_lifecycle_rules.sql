-- Culling keeps a retired device's state while its events may stay (see storage/lifecycle.py), and
-- the partitions made ahead skip a month whose rows already sit in the default partition (a replica
-- up for longer than MONTHS_AHEAD, or one whose clock is ahead, wrote them there): creating that
-- month's partition would fail, and with it every start. They are also made by the lifecycle's runs.
--
-- The retention period is recorded in the store, by the owner (storage/lifecycle.py's pg_run records
-- the one it runs with when it may; `python -m collector retain` as the owner does it at once), and
-- collector_lifecycle takes no horizon later than it allows: the writer role may call the function,
-- and passing it the present as the horizon removed every acknowledged event, though retention was
-- off. Retired ids leave no earlier than the server's month says either.
ALTER TABLE lifecycle ADD COLUMN retention_days integer NOT NULL DEFAULT 0 CHECK (retention_days >= 0);

CREATE OR REPLACE FUNCTION collector_lifecycle(new_horizon timestamptz, cull_before_ms bigint, this_month text)
RETURNS TABLE (events bigint, bad_rows bigint, devices bigint, retired bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    h timestamptz;
    days integer;
    part record;
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('collector_lifecycle'));  -- one replica at a time
    events := 0; bad_rows := 0;
    -- the caller's horizon goes no further than the recorded retention allows: none while it is 0
    SELECT l.retention_days INTO days FROM lifecycle l WHERE id = 1;
    IF new_horizon IS NOT NULL AND days > 0 THEN
        UPDATE lifecycle
        SET horizon = greatest(horizon, least(new_horizon, now() - make_interval(days => days)))
        WHERE id = 1;
    END IF;
    this_month := least(this_month, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM'));
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
    -- a retired (closed) device stays while its events may: its signed id does not expire, and a
    -- replayed cookie would otherwise bring it back as a live device, joined to its history
    DELETE FROM device_state d WHERE d.last_ms < cull_before_ms AND d.session_index > 0
        AND (d.closed = 0 OR d.last_ms < (extract(epoch FROM h) * 1000)::bigint);
    GET DIAGNOSTICS devices = ROW_COUNT;
    DELETE FROM retired_ids r WHERE r.expires < this_month;
    GET DIAGNOSTICS retired = ROW_COUNT;
    RETURN NEXT;
END $$;


CREATE OR REPLACE FUNCTION collector_ensure_partitions(ahead integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    m date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    t text;
    stamp text;
    part text;
    low timestamptz;
    high timestamptz;
    taken boolean;
BEGIN
    -- one at a time across replicas (transaction-scoped, released at commit)
    PERFORM pg_advisory_xact_lock(hashtext('collector_ensure_partitions'));
    FOR i IN 0..ahead LOOP
        FOREACH t IN ARRAY ARRAY['events', 'bad_rows'] LOOP
            part := format('%s_%s', t, to_char(m + make_interval(months => i), 'YYYYMM'));
            IF to_regclass(part) IS NULL THEN
                low := (m + make_interval(months => i))::timestamp AT TIME ZONE 'UTC';
                high := (m + make_interval(months => i + 1))::timestamp AT TIME ZONE 'UTC';
                stamp := CASE t WHEN 'events' THEN 'collector_tstamp' ELSE 'received_at' END;
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I >= $1 AND %I < $2)',
                               t || '_default', stamp, stamp)
                    INTO taken USING low, high;
                IF taken THEN
                    RAISE WARNING '% has rows in %_default: its partition is not made', part, t;
                    CONTINUE;
                END IF;
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               part, t, low, high);
                EXECUTE format(
                    'CREATE TRIGGER %I BEFORE TRUNCATE ON %I FOR EACH STATEMENT '
                    'EXECUTE FUNCTION collector_append_only()', part || '_no_truncate', part);
            END IF;
        END LOOP;
    END LOOP;
END $$;
