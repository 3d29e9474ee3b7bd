-- Every function of the schema runs with a fixed search_path that names pg_temp last.
-- The guards below run as the caller (not SECURITY DEFINER); one of them reads a
-- catalog view, and by default PostgreSQL looks in the session's temporary schema
-- first for relations, so a session could shadow it with a temporary view of its own.
-- The grants already keep the service's role from what these guards refuse; this
-- closes the door for any role that may write.
ALTER FUNCTION sealednotes_shred_guard() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION sealednotes_append_only() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION sealednotes_ledger_append_only() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION sealednotes_note_guard() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION sealednotes_key_guard() SET search_path = pg_catalog, public, pg_temp;
