-- A limited action's lock and charge in one call (one round trip, was two).
-- The lock cannot share one SQL statement with the count: a statement counts on the
-- snapshot it started with, before it waited for the lock, and would miss the action
-- of the transaction that held it. In a VOLATILE PL/pgSQL function each statement
-- takes a fresh snapshot, so the count below sees everything committed before the
-- lock was granted, as the two statements sent one after the other did.
-- One call is one statement for statement_timeout: the lock's wait and the count share
-- its 2 s (lock_timeout, also 2 s, still ends a long wait for the lock).
-- SECURITY INVOKER: the application role's own rights, nothing more.
CREATE FUNCTION sealednotes_charge_action(
    p_tenant_id uuid, p_lock uuid[], p_principal_id uuid, p_kind text, p_patient_id uuid,
    p_now timestamptz, p_since timestamptz, p_horizon timestamptz, p_limit integer
) RETURNS TABLE (suspended boolean, charged boolean, oldest timestamptz)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    r record;
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
    FOR r IN
        SELECT p.id, p.suspended_at FROM principals p
        WHERE p.id = ANY(p_lock) AND p.tenant_id = p_tenant_id
        ORDER BY p.id FOR NO KEY UPDATE
    LOOP
        IF r.id = p_principal_id THEN
            v_suspended := r.suspended_at IS NOT NULL;
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
REVOKE ALL ON FUNCTION sealednotes_charge_action(
    uuid, uuid[], uuid, text, uuid, timestamptz, timestamptz, timestamptz, integer) FROM PUBLIC;
