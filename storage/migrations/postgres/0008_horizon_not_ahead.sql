-- The retention horizon cannot pass the present (the database server's clock, one for every replica):
-- once it had, every DELETE would pass as retention, and a lifecycle run from a host whose clock is
-- ahead would take events acknowledged after it, for as long as real time stays behind the horizon.
CREATE OR REPLACE FUNCTION collector_lifecycle_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'lifecycle' THEN
        IF TG_OP = 'UPDATE' AND NEW.horizon > now() THEN
            RAISE EXCEPTION 'the retention horizon cannot pass the present'
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF TG_OP = 'UPDATE' AND NEW.horizon >= OLD.horizon THEN RETURN NEW; END IF;
        RAISE EXCEPTION 'the retention horizon only moves forward' USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.open THEN RETURN NEW; END IF;  -- closing an erasure with its counts
    RAISE EXCEPTION 'the erasure ledger is append-only' USING ERRCODE = 'insufficient_privilege';
END $$;
