-- PostgreSQL grants EXECUTE on a new function to PUBLIC. The two SECURITY DEFINER functions run as
-- the owner: through them any role that may connect (the analysts' collector_reader among them)
-- could cull every device state with a cutoff of its choosing (an opt-out then found nothing to
-- retire) and make partitions. Only the writer is granted them (storage/pg_schema.py WRITER_GRANTS).
REVOKE EXECUTE ON FUNCTION collector_lifecycle(timestamptz, bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION collector_ensure_partitions(integer) FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
-- and every function a later migration creates: as the role that migrates, and as the schema's
-- owner (collector_owner, `pg-roles`), should a superuser run this one
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
DO $$
BEGIN
    EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %s REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC',
                   (SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'public'));
END $$;
