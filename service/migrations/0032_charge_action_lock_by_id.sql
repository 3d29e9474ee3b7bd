-- The charge of a limited action (every create, every patient lookup by an integration)
-- planned its lock statement again on every call: `p.id = ANY(p_lock)` is costed for an
-- array of unknown length in a generic plan and of one or two elements in a custom one,
-- so PL/pgSQL's plan cache judged the generic plan dearer (a scan of the tenant's
-- principals) and kept planning: 66 µs of a create's ~680 µs of database time
-- (pg_stat_statements with track_planning: 500 plans in 500 calls). The rows are now
-- locked one id at a time, in the same order (ascending id, each id once), by a lookup
-- whose plan is the primary key's whatever the id. Everything else is unchanged.
CREATE OR REPLACE FUNCTION sealednotes_charge_action(
    p_tenant_id uuid, p_lock uuid[], p_principal_id uuid, p_kind text, p_patient_id uuid,
    p_now timestamptz, p_since timestamptz, p_horizon timestamptz, p_limit integer
) RETURNS TABLE (suspended boolean, charged boolean, oldest timestamptz)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_id uuid;
    v_suspended_at timestamptz;
    v_suspended boolean := true;  -- until the caller's row is found, active, in its tenant
BEGIN
    -- The count must see every action committed before the lock was granted: a
    -- REPEATABLE READ (or SERIALIZABLE) snapshot, taken before the wait, would not, and
    -- concurrent calls would pass the limit. The service always reads committed.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'limited actions are charged at READ COMMITTED only' USING ERRCODE = 'SN409';
    END IF;
    -- The caller's row and any target's, in id order (one order for every caller: an
    -- admin acting on another admin who acts back cannot deadlock), in its tenant only.
    -- One row at a time: a lookup by one id has one plan for any value, where a
    -- lookup by an array of ids was planned again on every call.
    FOR v_id IN SELECT DISTINCT l.id FROM unnest(p_lock) AS l(id) ORDER BY l.id LOOP
        SELECT p.suspended_at INTO v_suspended_at FROM principals p
        WHERE p.id = v_id AND p.tenant_id = p_tenant_id FOR NO KEY UPDATE;
        IF FOUND AND v_id = p_principal_id THEN
            v_suspended := v_suspended_at IS NOT NULL;
        END IF;
    END LOOP;
    IF v_suspended THEN
        RETURN QUERY SELECT true, false, NULL::timestamptz;
        RETURN;
    END IF;
    -- A repeat (this patient already in the window) is answered from an index and never
    -- counts the window; only a new patient, or an action without one, does.
    RETURN QUERY
    WITH w AS (
        SELECT p_patient_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM principal_actions a
            WHERE a.principal_id = p_principal_id AND a.kind = p_kind
              AND a.patient_id = p_patient_id AND a.at > p_since AND a.at <= p_horizon
        ) AS repeat
    ), s AS (
        SELECT w.repeat,
            CASE WHEN w.repeat THEN 0
                 WHEN p_patient_id IS NULL THEN (
                     SELECT count(*) FROM principal_actions a
                     WHERE a.principal_id = p_principal_id AND a.kind = p_kind
                       AND a.at > p_since AND a.at <= p_horizon)
                 ELSE (
                     SELECT count(DISTINCT a.patient_id) FROM principal_actions a
                     WHERE a.principal_id = p_principal_id AND a.kind = p_kind
                       AND a.at > p_since AND a.at <= p_horizon)
            END AS used,
            (SELECT min(a.at) FROM principal_actions a
             WHERE a.principal_id = p_principal_id AND a.kind = p_kind
               AND a.at > p_since AND a.at <= p_horizon) AS oldest
        FROM w
    ), ins AS (
        INSERT INTO principal_actions (principal_id, kind, patient_id, at)
        SELECT p_principal_id, p_kind, p_patient_id, p_now FROM s
        WHERE s.repeat OR s.used < p_limit
        RETURNING 1
    )
    SELECT false, (SELECT count(*) FROM ins) > 0, s.oldest FROM s;
END
$$;
