-- Guards on what the service's role may change in place: note versions move only
-- forward, a wrapped key's recorded version is the one in its ciphertext, and key
-- creation, rewrapping and re-sealing leave a record, whoever does them.

-- A note's current version only ever moves to the next one (an amend), and its status
-- only from current to entered-in-error: rolling a note back to an old version (say,
-- before an allergy was recorded) is refused.
CREATE FUNCTION sealednotes_note_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id OR NEW.patient_id <> OLD.patient_id
       OR NEW.created_by <> OLD.created_by OR NEW.created_at <> OLD.created_at THEN
        RAISE EXCEPTION 'a note keeps its identity' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.current_version NOT IN (OLD.current_version, OLD.current_version + 1) THEN
        RAISE EXCEPTION 'a note''s version only moves to the next one'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status <> OLD.status AND NOT (OLD.status = 'current'
                                         AND NEW.status = 'entered-in-error') THEN
        RAISE EXCEPTION 'a note can only be marked entered-in-error'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.current_version <> OLD.current_version AND OLD.status <> 'current' THEN
        RAISE EXCEPTION 'an entered-in-error note is not amended'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER notes_guard BEFORE UPDATE ON notes
    FOR EACH ROW EXECUTE FUNCTION sealednotes_note_guard();

-- A wrapped key's key_version is the version its Transit ciphertext names
-- ("vault:v7:..."): a false one would hide it from rotation, and its notes would be
-- lost when old versions are retired.
CREATE FUNCTION sealednotes_key_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.wrapped_key !~ ('^vault:v' || NEW.key_version || ':') THEN
        RAISE EXCEPTION 'key_version must match the wrapped key' USING ERRCODE = 'check_violation';
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.patient_id <> OLD.patient_id OR NEW.tenant_id <> OLD.tenant_id) THEN
        RAISE EXCEPTION 'a wrapped key stays with its patient' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER patient_keys_guard BEFORE INSERT OR UPDATE ON patient_keys
    FOR EACH ROW EXECUTE FUNCTION sealednotes_key_guard();

-- A patient's first data key: recorded (attributed like the rights changes), so
-- that `audit reconcile` can match each Transit data-key creation in Vault's log.
CREATE FUNCTION sealednotes_audit_key_created() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM sealednotes_audit_change(NEW.tenant_id, NEW.patient_id, 'key.create',
        'key_version=' || NEW.key_version);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION sealednotes_audit_key_created() FROM PUBLIC;
CREATE TRIGGER patient_keys_created AFTER INSERT ON patient_keys
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_key_created();

-- Rewrapping (rotation, thousands of rows a statement) and re-sealing (re-key):
-- one record per statement, with its row count.
CREATE FUNCTION sealednotes_audit_bulk_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    n bigint;
    v_tenant uuid;
BEGIN
    SELECT count(*) INTO n FROM changed;
    IF TG_TABLE_NAME = 'patient_keys' THEN
        SELECT tenant_id INTO v_tenant FROM changed LIMIT 1;
    ELSE
        SELECT nt.tenant_id INTO v_tenant FROM changed c JOIN notes nt ON nt.id = c.note_id LIMIT 1;
    END IF;
    IF n > 0 THEN
        PERFORM sealednotes_audit_change(v_tenant, NULL,
            CASE TG_TABLE_NAME WHEN 'patient_keys' THEN 'keys.rewrap' ELSE 'notes.reseal' END,
            'rows=' || n);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION sealednotes_audit_bulk_change() FROM PUBLIC;
CREATE TRIGGER patient_keys_rewrapped AFTER UPDATE ON patient_keys
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION sealednotes_audit_bulk_change();
CREATE TRIGGER note_versions_resealed AFTER UPDATE ON note_versions
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION sealednotes_audit_bulk_change();

-- Versions are written once (re-sealing under a new key aside): never deleted.
CREATE TRIGGER note_versions_no_delete BEFORE DELETE ON note_versions
    FOR EACH ROW EXECUTE FUNCTION sealednotes_ledger_append_only();
