-- Several records in one call, for group commit (service/adapters/postgres/groupcommit.py):
-- the records of concurrent requests are appended together, in one statement and one
-- commit, each request answering only once the statement has committed. The same
-- rules as sealednotes_audit_append: the function picks and locks the shard, dates
-- every record by the database clock (never earlier than the shard's last record),
-- and chains each to the one before it:
--     hash = sha256(prev_hash || int4(shard) || int8(seq) || canonical)
CREATE FUNCTION sealednotes_audit_append_batch(
    p_shard integer, p_tenant_id uuid[], p_principal_id uuid[], p_role text[],
    p_patient_id uuid[], p_note_id uuid[], p_action text[], p_outcome text[],
    p_reason text[], p_request_id text[], p_client_addr text[]
) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    c_lock_class constant integer := 23969;  -- 0x5EA1, service/adapters/postgres/ AUDIT_LOCK_CLASS
    c_shards constant integer := 16;         -- service/audit/chain.py SHARDS
    c_max_batch constant integer := 1000;
    n integer := coalesce(cardinality(p_action), 0);
    v_pref integer := ((coalesce(p_shard, 0) % c_shards) + c_shards) % c_shards;
    v_held text := current_setting('sealednotes.audit_shard', true);
    v_shard integer;
    v_seq bigint;
    v_prev bytea;
    v_prev_at timestamptz;
    v_at timestamptz;
    v_seqs bigint[] := '{}';
    v_prevs bytea[] := '{}';
    v_hashes bytea[] := '{}';
    v_ats timestamptz[] := '{}';
    i integer;
BEGIN
    IF n = 0 THEN
        RETURN 0;
    END IF;
    IF n > c_max_batch
       OR coalesce(cardinality(p_tenant_id), -1) <> n
       OR coalesce(cardinality(p_principal_id), -1) <> n
       OR coalesce(cardinality(p_role), -1) <> n
       OR coalesce(cardinality(p_patient_id), -1) <> n
       OR coalesce(cardinality(p_note_id), -1) <> n
       OR coalesce(cardinality(p_outcome), -1) <> n
       OR coalesce(cardinality(p_reason), -1) <> n
       OR coalesce(cardinality(p_request_id), -1) <> n
       OR coalesce(cardinality(p_client_addr), -1) <> n THEN
        RAISE EXCEPTION 'a batch is 1 to % records, every field one entry per record',
            c_max_batch USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The shard: as sealednotes_audit_append (the setting is only a hint).
    IF v_held ~ '^[0-9]{1,2}$' AND v_held::integer < c_shards
       AND pg_try_advisory_xact_lock(c_lock_class, v_held::integer) THEN
        v_shard := v_held::integer;
    ELSE
        FOR i IN 0..c_shards - 1 LOOP
            IF pg_try_advisory_xact_lock(c_lock_class, (v_pref + i) % c_shards) THEN
                v_shard := (v_pref + i) % c_shards;
                EXIT;
            END IF;
        END LOOP;
        IF v_shard IS NULL THEN
            PERFORM pg_advisory_xact_lock(c_lock_class, v_pref);
            v_shard := v_pref;
        END IF;
        PERFORM set_config('sealednotes.audit_shard', v_shard::text, true);
    END IF;
    SELECT seq, hash, at INTO v_seq, v_prev, v_prev_at FROM audit_events
        WHERE shard = v_shard ORDER BY seq DESC LIMIT 1;
    v_seq := coalesce(v_seq, 0);
    v_prev := coalesce(v_prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    FOR i IN 1..n LOOP
        v_seq := v_seq + 1;
        v_at := greatest(clock_timestamp(), v_prev_at);
        v_seqs := v_seqs || v_seq;
        v_prevs := v_prevs || v_prev;
        v_ats := v_ats || v_at;
        v_prev := sha256(v_prev || int4send(v_shard) || int8send(v_seq) ||
                         sealednotes_audit_canonical(v_at, p_tenant_id[i], p_principal_id[i],
                             p_role[i], p_patient_id[i], p_note_id[i], p_action[i],
                             p_outcome[i], p_reason[i], p_request_id[i], p_client_addr[i]));
        v_hashes := v_hashes || v_prev;
        v_prev_at := v_at;
    END LOOP;
    INSERT INTO audit_events (shard, seq, prev_hash, hash, at, tenant_id, principal_id, role,
                              patient_id, note_id, action, outcome, reason, request_id,
                              client_addr)
    SELECT v_shard, u.seq, u.prev, u.hash, u.at, u.tenant_id, u.principal_id, u.role,
           u.patient_id, u.note_id, u.action, u.outcome, u.reason, u.request_id, u.client_addr
    FROM unnest(v_seqs, v_prevs, v_hashes, v_ats, p_tenant_id, p_principal_id, p_role,
                p_patient_id, p_note_id, p_action, p_outcome, p_reason, p_request_id,
                p_client_addr)
         AS u(seq, prev, hash, at, tenant_id, principal_id, role, patient_id, note_id,
              action, outcome, reason, request_id, client_addr)
    ORDER BY u.seq;
    RETURN v_seq;
END
$$;
REVOKE ALL ON FUNCTION sealednotes_audit_append_batch(
    integer, uuid[], uuid[], text[], uuid[], uuid[], text[], text[], text[], text[], text[])
    FROM PUBLIC;
