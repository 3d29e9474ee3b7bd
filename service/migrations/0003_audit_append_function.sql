-- Append an audit record in one round trip: pick a shard, take its lock, read its
-- head, chain and insert, all server-side. The caller supplies the canonical
-- encoding of the record's fields (service/audit/chain.py); the function binds it
-- to the chain:
--     hash = sha256(prev_hash || int4(shard) || int8(seq) || canonical)
-- Shard choice: the shard this transaction already holds, else the first free one
-- starting from the caller's preference, else wait for the preferred one. A
-- transaction therefore holds at most one shard lock and never waits while
-- holding one, so audit writers cannot deadlock each other.
-- Each statement of a VOLATILE plpgsql function takes a fresh snapshot, so the
-- head is read after the lock is granted.
CREATE FUNCTION sealednotes_audit_append(
    p_lock_class integer, p_shard integer, p_canonical bytea, p_at timestamptz,
    p_tenant_id uuid, p_principal_id uuid, p_role text, p_patient_id uuid, p_note_id uuid,
    p_action text, p_outcome text, p_reason text, p_request_id text, p_client_addr text
) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_shard integer;
    v_held text;
    v_seq bigint;
    v_prev bytea;
    i integer;
BEGIN
    v_held := current_setting('sealednotes.audit_shard', true);
    IF v_held IS NOT NULL AND v_held <> '' THEN
        v_shard := v_held::integer;
    ELSE
        FOR i IN 0..15 LOOP
            IF pg_try_advisory_xact_lock(p_lock_class, (p_shard + i) % 16) THEN
                v_shard := (p_shard + i) % 16;
                EXIT;
            END IF;
        END LOOP;
        IF v_shard IS NULL THEN
            PERFORM pg_advisory_xact_lock(p_lock_class, p_shard);
            v_shard := p_shard;
        END IF;
        PERFORM set_config('sealednotes.audit_shard', v_shard::text, true);
    END IF;
    SELECT seq, hash INTO v_seq, v_prev FROM audit_events
        WHERE shard = v_shard ORDER BY seq DESC LIMIT 1;
    v_seq := coalesce(v_seq, 0) + 1;
    v_prev := coalesce(v_prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    INSERT INTO audit_events (shard, seq, prev_hash, hash, at, tenant_id, principal_id, role,
                              patient_id, note_id, action, outcome, reason, request_id,
                              client_addr)
    VALUES (v_shard, v_seq, v_prev,
            sha256(v_prev || int4send(v_shard) || int8send(v_seq) || p_canonical), p_at,
            p_tenant_id, p_principal_id, p_role, p_patient_id, p_note_id, p_action, p_outcome,
            p_reason, p_request_id, p_client_addr);
    RETURN v_seq;
END
$$;
