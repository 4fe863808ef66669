-- The SECURITY DEFINER functions against their caller, the writer role (found by review):
--
-- * They found the partitions by name (`pg_class.relname IN ('events', 'bad_rows')`, any schema) and
--   dropped them by a bare name. The writer may create temporary tables: a temporary `events` with a
--   child named `events_<this month>` (or `events_default`) bounded in 1970 made the lifecycle count
--   and drop the real one (public comes first on the functions' search_path), with every
--   acknowledged event in it and no ledger entry. They now go by OID, public's tables only.
-- * A month's DROP locks the parent `events` exclusively until the run commits. Behind an analyst's
--   open read it waited, every writer queued behind it, until the statement timeout cancelled the
--   run; once taken it was held through the run's DELETEs (event_ids' among them, a scan of every
--   claim). The DROPs now come last, each waiting at most 100 ms for its lock (as the partitions
--   ahead do, storage/pg_schema.py); a month whose lock is busy loses its rows one by one instead,
--   which takes no lock a reader holds, and its emptied table is dropped by a later run.
-- * The writer may renew a retired id's expiry (its upsert), and could as well move it back, after
--   which the lifecycle forgot the id at once: an expiry now only moves forward.
-- * The writer deletes the placeholder device states it wrote, and could as well delete a retired
--   (closed) device's, which stays while its events may (storage/lifecycle.py says why): such a
--   DELETE now skips the row, but inside an erasure or past the horizon, as SQLite's 0015 does.

CREATE OR REPLACE FUNCTION collector_lifecycle(new_horizon timestamptz, cull_before_ms bigint, this_month text)
RETURNS TABLE (events bigint, bad_rows bigint, devices bigint, retired bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    h timestamptz;
    days integer;
    part record;
    n bigint;
    stamp text;
    high_bound timestamptz;
    low_bound timestamptz;
    wait text;
    drop_rel regclass[] := '{}';
    drop_events boolean[] := '{}';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('collector_lifecycle'));  -- one replica at a time
    events := 0; bad_rows := 0;
    -- the caller's horizon goes no further than the recorded retention allows: none while it is 0
    SELECT l.retention_days INTO days FROM public.lifecycle l WHERE id = 1;
    IF new_horizon IS NOT NULL AND days > 0 THEN
        UPDATE public.lifecycle
        SET horizon = greatest(horizon, least(new_horizon, now() - make_interval(days => days)))
        WHERE id = 1;
    END IF;
    this_month := least(this_month, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM'));
    SELECT l.horizon INTO h FROM public.lifecycle l WHERE id = 1;
    IF h > '1970-01-01 00:00:00+00' THEN
        -- the partitions of public's two tables, by OID: never a table of the caller's that has a name
        FOR part IN
            SELECT i.inhrelid::regclass AS rel, i.inhparent = 'public.events'::regclass AS is_events,
                   pg_get_expr(c.relpartbound, c.oid) AS bound
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent IN ('public.events'::regclass, 'public.bad_rows'::regclass)
        LOOP
            stamp := CASE WHEN part.is_events THEN 'collector_tstamp' ELSE 'received_at' END;
            high_bound := CASE WHEN part.bound = 'DEFAULT' THEN NULL
                          ELSE (regexp_match(part.bound, 'TO \(''([^'']+)''\)'))[1]::timestamptz END;
            low_bound := CASE WHEN part.bound = 'DEFAULT' THEN NULL
                          ELSE (regexp_match(part.bound, 'FROM \(''([^'']+)''\)'))[1]::timestamptz END;
            IF high_bound IS NOT NULL AND high_bound <= h THEN  -- wholly older: dropped below, last
                drop_rel := drop_rel || part.rel;
                drop_events := drop_events || part.is_events;
            ELSIF low_bound IS NULL OR low_bound < h THEN  -- the default partition, the month the horizon is in
                EXECUTE format('DELETE FROM %s WHERE %I < $1', part.rel, stamp) USING h;
                GET DIAGNOSTICS n = ROW_COUNT;
                IF part.is_events THEN events := events + n; ELSE bad_rows := bad_rows + n; END IF;
            END IF;
        END LOOP;
        DELETE FROM public.event_ids WHERE first_seen < h;
    END IF;
    -- a retired (closed) device stays while its events may: its signed id does not expire, and a
    -- replayed cookie would otherwise bring it back as a live device, joined to its history
    DELETE FROM public.device_state d WHERE d.last_ms < cull_before_ms AND d.session_index > 0
        AND (d.closed = 0 OR d.last_ms < (extract(epoch FROM h) * 1000)::bigint);
    GET DIAGNOSTICS devices = ROW_COUNT;
    DELETE FROM public.retired_ids r WHERE r.expires < this_month;
    GET DIAGNOSTICS retired = ROW_COUNT;
    -- Last, so that the parent's exclusive lock a DROP takes is held only until the commit.
    wait := current_setting('lock_timeout');
    FOR i IN 1 .. coalesce(array_length(drop_rel, 1), 0) LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '100ms', true);
            EXECUTE format('SELECT count(*) FROM %s', drop_rel[i]) INTO n;
            EXECUTE format('DROP TABLE %s', drop_rel[i]);
            PERFORM set_config('lock_timeout', wait, true);
        EXCEPTION WHEN lock_not_available THEN
            -- the lock_timeout set in this block is undone with it
            RAISE WARNING '% is being read: its rows go one by one, the table at a later run', drop_rel[i];
            stamp := CASE WHEN drop_events[i] THEN 'collector_tstamp' ELSE 'received_at' END;
            EXECUTE format('DELETE FROM %s WHERE %I < $1', drop_rel[i], stamp) USING h;
            GET DIAGNOSTICS n = ROW_COUNT;
        END;
        IF drop_events[i] THEN events := events + n; ELSE bad_rows := bad_rows + n; END IF;
    END LOOP;
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
            -- public's, by its schema: a temporary table of the caller's of that name is not it
            IF to_regclass(format('public.%I', part)) IS NULL THEN
                low := (m + make_interval(months => i))::timestamp AT TIME ZONE 'UTC';
                high := (m + make_interval(months => i + 1))::timestamp AT TIME ZONE 'UTC';
                stamp := CASE t WHEN 'events' THEN 'collector_tstamp' ELSE 'received_at' END;
                EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I WHERE %I >= $1 AND %I < $2)',
                               t || '_default', stamp, stamp)
                    INTO taken USING low, high;
                IF taken THEN
                    RAISE WARNING '% has rows in %_default: its partition is not made', part, t;
                    CONTINUE;
                END IF;
                EXECUTE format('CREATE TABLE public.%I PARTITION OF public.%I FOR VALUES FROM (%L) TO (%L)',
                               part, t, low, high);
                EXECUTE format(
                    'CREATE TRIGGER %I BEFORE TRUNCATE ON public.%I FOR EACH STATEMENT '
                    'EXECUTE FUNCTION collector_append_only()', part || '_no_truncate', part);
            END IF;
        END LOOP;
    END LOOP;
END $$;


CREATE FUNCTION collector_retired_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.value IS DISTINCT FROM OLD.value OR NEW.expires < OLD.expires THEN
        RAISE EXCEPTION 'a retired id is kept until its expiry, which only moves forward'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER retired_ids_kept BEFORE UPDATE ON retired_ids
    FOR EACH ROW EXECUTE FUNCTION collector_retired_kept();

CREATE FUNCTION collector_retired_device_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.closed = 1
       AND OLD.last_ms >= (extract(epoch FROM (SELECT horizon FROM public.lifecycle)) * 1000)::bigint
       AND NOT EXISTS (SELECT 1 FROM public.erasures WHERE open) THEN
        RETURN NULL;  -- the row is skipped, the statement goes on
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER device_state_retired_kept BEFORE DELETE ON device_state
    FOR EACH ROW EXECUTE FUNCTION collector_retired_device_kept();
