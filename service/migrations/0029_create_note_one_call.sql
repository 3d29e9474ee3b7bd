-- A note created in one call, when the service already holds the patient's data key
-- (its key cache): the write limit's charge, the key's share lock, the note with its
-- first version and its audit record (`note.create granted`), as one statement that
-- runs on its own (one round trip, its own commit; was BEGIN, four statements and
-- COMMIT). All or nothing: nothing is written unless all of it is.
--
-- It adds no right: SECURITY INVOKER, so the application role's own grants apply to
-- every statement (it could make each of these calls itself), and the record goes
-- through sealednotes_audit_append like any other. What it fixes is the order the
-- service already followed: charged before written, the key the note was sealed with
-- still the patient's key (a concurrent re-key holds it FOR UPDATE), and the record
-- committed with the note or neither.
--
-- Outcomes: 'created' (with the note as stored); 'suspended' (the account is suspended or not in this tenant) or
-- 'limit' (the hourly write limit is reached): nothing written, the service takes its
-- ordinary path, which refuses and records the refusal. A key that changed since the
-- service read it raises SN412 after the charge, so the charge is rolled back with it.
CREATE FUNCTION sealednotes_create_note(
    p_tenant_id uuid, p_principal_id uuid, p_patient_id uuid, p_note_id uuid, p_kind text,
    p_encounter_at timestamptz, p_now timestamptz, p_sealed bytea,
    p_wrapped_key text, p_key_version integer,
    p_since timestamptz, p_horizon timestamptz, p_write_limit integer,
    -- the record, as sealednotes_audit_append takes it
    p_shard integer, p_rec_tenant_id uuid, p_rec_principal_id uuid, p_role text,
    p_rec_patient_id uuid, p_rec_note_id uuid, p_action text, p_outcome text, p_reason text,
    p_request_id text, p_client_addr text,
    -- the outcome, and the note as stored (null unless created), under the notes
    -- table's own column names
    OUT outcome text, OUT id uuid, OUT tenant_id uuid, OUT patient_id uuid, OUT kind text,
    OUT status text, OUT current_version integer, OUT encounter_at timestamptz,
    OUT created_by uuid, OUT created_at timestamptz, OUT updated_at timestamptz
) RETURNS record
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp AS $$
#variable_conflict use_column
DECLARE
    c record;
BEGIN
    -- Lock and count first (principal row, then key row: the order of the service's
    -- ordinary path). Refuses to run outside READ COMMITTED.
    SELECT * INTO c FROM sealednotes_charge_action(
        p_tenant_id, ARRAY[p_principal_id], p_principal_id, 'write', p_patient_id,
        p_now, p_since, p_horizon, p_write_limit);
    IF c.suspended IS NOT FALSE THEN
        outcome := 'suspended';
        RETURN;
    END IF;
    IF c.charged IS NOT TRUE THEN
        outcome := 'limit';
        RETURN;
    END IF;
    PERFORM 1 FROM patient_keys k
    WHERE k.patient_id = p_patient_id AND k.tenant_id = p_tenant_id
      AND k.wrapped_key = p_wrapped_key AND k.key_version = p_key_version
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the patient''s key changed' USING ERRCODE = 'SN412';
    END IF;
    WITH n AS (
        INSERT INTO notes (id, tenant_id, patient_id, kind, current_version, encounter_at,
                           created_by, created_at, updated_at)
        VALUES (p_note_id, p_tenant_id, p_patient_id, p_kind, 1, p_encounter_at,
                p_principal_id, p_now, p_now)
        RETURNING *
    ), v AS (
        INSERT INTO note_versions (note_id, version, sealed, author_id, created_at)
        SELECT n.id, 1, p_sealed, p_principal_id, p_now FROM n
    )
    SELECT n.id, n.tenant_id, n.patient_id, n.kind, n.status, n.current_version,
           n.encounter_at, n.created_by, n.created_at, n.updated_at
    INTO id, tenant_id, patient_id, kind, status, current_version,
         encounter_at, created_by, created_at, updated_at
    FROM n;
    PERFORM sealednotes_audit_append(
        p_shard, p_rec_tenant_id, p_rec_principal_id, p_role, p_rec_patient_id, p_rec_note_id,
        p_action, p_outcome, p_reason, p_request_id, p_client_addr);
    outcome := 'created';
END
$$;
REVOKE ALL ON FUNCTION sealednotes_create_note(
    uuid, uuid, uuid, uuid, text, timestamptz, timestamptz, bytea, text, integer,
    timestamptz, timestamptz, integer,
    integer, uuid, uuid, text, uuid, uuid, text, text, text, text, text) FROM PUBLIC;
