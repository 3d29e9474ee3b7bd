-- The canonical encoding of an audit record, unchanged byte for byte, now in PL/pgSQL.
-- As a SQL function with a pinned search_path it could not be inlined, and PostgreSQL
-- parsed and planned its body again in every transaction that appended a record: a
-- quarter of the append's database time when a warm read's record commits alone.
-- PL/pgSQL keeps the prepared expression for the session.
CREATE OR REPLACE FUNCTION sealednotes_audit_canonical(
    p_at timestamptz, p_tenant_id uuid, p_principal_id uuid, p_role text, p_patient_id uuid,
    p_note_id uuid, p_action text, p_outcome text, p_reason text, p_request_id text,
    p_client_addr text
) RETURNS bytea LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN convert_to(
        '[' || concat_ws(',',
            to_json(to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') || '+00:00')::text,
            coalesce(to_json(p_tenant_id::text)::text, 'null'),
            coalesce(to_json(p_principal_id::text)::text, 'null'),
            coalesce(to_json(p_role)::text, 'null'),
            coalesce(to_json(p_patient_id::text)::text, 'null'),
            coalesce(to_json(p_note_id::text)::text, 'null'),
            coalesce(to_json(p_action)::text, 'null'),
            coalesce(to_json(p_outcome)::text, 'null'),
            coalesce(to_json(p_reason)::text, 'null'),
            coalesce(to_json(p_request_id)::text, 'null'),
            coalesce(to_json(p_client_addr)::text, 'null')
        ) || ']', 'UTF8');
END
$$;
