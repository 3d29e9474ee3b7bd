-- The database keeps the gate's books, even against the role that writes them.
--
-- The service's own role (SQL injection, a leaked password, a compromised worker)
-- must not be able to reset budgets, grant itself access or forge the log unseen:
--   * the ledgers (key_releases, release_denials, break_glass) are append-only for
--     it (grants, service/adapters/postgres/ `_grant_app_role`); a release row carries the
--     database's time and is refused past the tenant's hourly cap, whoever inserts it;
--   * every change of access rights (tokens, care teams, principals, decoy flags,
--     shredding, break-glass, tenants) is written to the audit log by a trigger,
--     in the same transaction, whoever makes it;
--   * the log takes records only through `sealednotes_audit_append`, which assigns
--     the time from the database clock (never backwards within a shard) and a
--     shard within the known range, and computes the canonical encoding itself.
-- The functions are SECURITY DEFINER, owned by the schema owner, with a fixed
-- search_path that names pg_temp LAST: otherwise a session's temporary table
-- called audit_events or key_releases would be found first and swallow the
-- function's writes (PostgreSQL searches pg_temp first unless told where). The
-- service role may only EXECUTE the append function.

-- -- the release ledger: database time, tenant cap ------------------------------------

ALTER TABLE key_releases ADD COLUMN recorded_at timestamptz;
UPDATE key_releases SET recorded_at = released_at;
ALTER TABLE key_releases ALTER COLUMN recorded_at SET NOT NULL;
ALTER TABLE key_releases ALTER COLUMN recorded_at SET DEFAULT clock_timestamp();
CREATE INDEX key_releases_tenant_recorded ON key_releases (tenant_id, recorded_at);

-- Unlocking no longer deletes denials (the ledger is append-only): denials before
-- this time do not count towards a new suspension.
ALTER TABLE principals ADD COLUMN denials_since timestamptz;

CREATE FUNCTION sealednotes_release_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_tenant uuid;
    v_cap integer;
    v_used bigint;
BEGIN
    -- The count below must see every committed release: a REPEATABLE READ (or
    -- SERIALIZABLE) snapshot taken before other sessions' inserts would not, and N
    -- such sessions would each book a whole cap. The service always reads committed.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'releases are booked at READ COMMITTED only' USING ERRCODE = 'SN409';
    END IF;
    -- The row's tenant is the patient's, and the principal must belong to it:
    -- a release cannot be booked against another tenant's cap.
    SELECT pt.tenant_id INTO v_tenant FROM patients pt
        JOIN principals pr ON pr.tenant_id = pt.tenant_id
        WHERE pt.id = NEW.patient_id AND pr.id = NEW.principal_id;
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'release of a patient outside the principal''s tenant'
            USING ERRCODE = 'SN403';
    END IF;
    NEW.tenant_id := v_tenant;
    NEW.recorded_at := clock_timestamp();
    -- A release dated far ahead would keep a patient "already released" for ever.
    NEW.released_at := least(NEW.released_at, NEW.recorded_at + interval '5 minutes');
    -- The same lock the gate takes (service/adapters/postgres/ lock_tenant_budget).
    PERFORM pg_advisory_xact_lock(
        hashtextextended('sealednotes-tenant-budget:' || v_tenant::text, 0));
    SELECT release_per_hour INTO v_cap FROM tenants WHERE id = v_tenant;
    SELECT count(*) INTO v_used FROM key_releases
        WHERE tenant_id = v_tenant AND recorded_at > clock_timestamp() - interval '1 hour';
    IF v_used >= coalesce(v_cap, 1000) THEN
        RAISE EXCEPTION 'the tenant''s hourly key-release cap is reached'
            USING ERRCODE = 'SN429';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER key_releases_guard BEFORE INSERT ON key_releases
    FOR EACH ROW EXECUTE FUNCTION sealednotes_release_guard();

-- Append-only, for everyone but a superuser who disables triggers (the service
-- role also lacks the grants; the maintenance prune below runs as the owner).
CREATE FUNCTION sealednotes_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('sealednotes.pruning', true) = 'on' AND TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER key_releases_append_only BEFORE UPDATE OR DELETE ON key_releases
    FOR EACH ROW EXECUTE FUNCTION sealednotes_ledger_append_only();
CREATE TRIGGER release_denials_append_only BEFORE UPDATE OR DELETE ON release_denials
    FOR EACH ROW EXECUTE FUNCTION sealednotes_ledger_append_only();
CREATE TRIGGER break_glass_append_only BEFORE UPDATE OR DELETE ON break_glass
    FOR EACH ROW EXECUTE FUNCTION sealednotes_ledger_append_only();

-- -- the audit log: one way in ------------------------------------------------------------

-- Known shards only. NOT VALID: a log that already holds forged rows elsewhere
-- still migrates, and `audit verify` reports them.
ALTER TABLE audit_events ADD CONSTRAINT audit_events_known_shard
    CHECK (shard BETWEEN 0 AND 15) NOT VALID;

-- The canonical encoding of a record, byte for byte what service/audit/chain.py
-- `canonical` produces: a compact JSON array of the time (UTC, microseconds) and
-- the fields as strings or null.
CREATE FUNCTION sealednotes_audit_canonical(
    p_at timestamptz, p_tenant_id uuid, p_principal_id uuid, p_role text, p_patient_id uuid,
    p_note_id uuid, p_action text, p_outcome text, p_reason text, p_request_id text,
    p_client_addr text
) RETURNS bytea LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT convert_to(
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
        ) || ']', 'UTF8')
$$;

DROP FUNCTION sealednotes_audit_append(
    integer, integer, bytea, timestamptz, uuid, uuid, text, uuid, uuid, text, text, text, text, text);

-- Append a record in one round trip. Shard choice: the shard this transaction
-- already holds, else the first free one from the caller's preference, else wait
-- for the preferred one; a transaction holds at most one shard lock and never
-- waits while holding one, so writers cannot deadlock. The time is the database
-- clock, never earlier than the shard's last record.
--     hash = sha256(prev_hash || int4(shard) || int8(seq) || canonical)
CREATE FUNCTION sealednotes_audit_append(
    p_shard integer, p_tenant_id uuid, p_principal_id uuid, p_role text, p_patient_id uuid,
    p_note_id uuid, p_action text, p_outcome text, p_reason text, p_request_id text,
    p_client_addr text
) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    c_lock_class constant integer := 23969;  -- 0x5EA1, service/adapters/postgres/ AUDIT_LOCK_CLASS
    c_shards constant integer := 16;         -- service/audit/chain.py SHARDS
    v_pref integer := ((coalesce(p_shard, 0) % c_shards) + c_shards) % c_shards;
    v_held text := current_setting('sealednotes.audit_shard', true);
    v_shard integer;
    v_seq bigint;
    v_prev bytea;
    v_prev_at timestamptz;
    v_at timestamptz;
    i integer;
BEGIN
    -- The setting is only a hint (anyone may set it): trust it only if it names a
    -- known shard whose lock this transaction can hold (re-entrant if it already does).
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
    v_seq := coalesce(v_seq, 0) + 1;
    v_prev := coalesce(v_prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    v_at := greatest(clock_timestamp(), v_prev_at);
    INSERT INTO audit_events (shard, seq, prev_hash, hash, at, tenant_id, principal_id, role,
                              patient_id, note_id, action, outcome, reason, request_id,
                              client_addr)
    VALUES (v_shard, v_seq, v_prev,
            sha256(v_prev || int4send(v_shard) || int8send(v_seq) ||
                   sealednotes_audit_canonical(v_at, p_tenant_id, p_principal_id, p_role,
                       p_patient_id, p_note_id, p_action, p_outcome, p_reason, p_request_id,
                       p_client_addr)),
            v_at, p_tenant_id, p_principal_id, p_role, p_patient_id, p_note_id, p_action,
            p_outcome, p_reason, p_request_id, p_client_addr);
    RETURN v_seq;
END
$$;
REVOKE ALL ON FUNCTION sealednotes_audit_append(
    integer, uuid, uuid, text, uuid, uuid, text, text, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION sealednotes_audit_canonical(
    timestamptz, uuid, uuid, text, uuid, uuid, text, text, text, text, text) FROM PUBLIC;

-- -- rights changes, audited by the database itself -------------------------------------

-- Who made a change: the service names the acting principal for the transaction
-- (service/adapters/postgres/ `set_actor`); a change made without it (direct SQL) is still
-- recorded, as unattributed, with the database user.
CREATE FUNCTION sealednotes_audit_change(
    p_tenant uuid, p_patient uuid, p_action text, p_reason text
) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_actor text := nullif(current_setting('sealednotes.actor_id', true), '');
    v_role text := nullif(current_setting('sealednotes.actor_role', true), '');
    -- The service may add a note to its own changes (a shred's reason, `via=idp`).
    v_reason text := concat_ws(' ', p_reason,
                               nullif(current_setting('sealednotes.reason', true), ''));
BEGIN
    IF v_actor IS NOT NULL AND v_actor !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        v_actor := NULL;
    END IF;
    IF v_role IS NULL THEN
        v_reason := concat_ws(' ', v_reason, 'via=sql', 'db_user=' || session_user);
    END IF;
    IF v_reason = '' THEN
        v_reason := NULL;
    END IF;
    PERFORM sealednotes_audit_append(
        pg_backend_pid(), p_tenant, v_actor::uuid, v_role, p_patient, NULL, p_action, 'granted',
        v_reason, nullif(current_setting('sealednotes.request_id', true), ''),
        nullif(current_setting('sealednotes.client_addr', true), ''));
END
$$;
REVOKE ALL ON FUNCTION sealednotes_audit_change(uuid, uuid, text, text) FROM PUBLIC;

CREATE FUNCTION sealednotes_audit_rights() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_tenant uuid;
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        IF TG_OP = 'INSERT' THEN
            PERFORM sealednotes_audit_change(NEW.id, NULL, 'tenant.create',
                'release_per_hour=' || coalesce(NEW.release_per_hour::text, 'default'));
        ELSIF NEW.release_per_hour IS DISTINCT FROM OLD.release_per_hour THEN
            PERFORM sealednotes_audit_change(NEW.id, NULL, 'tenant.cap',
                'release_per_hour=' || coalesce(OLD.release_per_hour::text, 'default') || '->'
                || coalesce(NEW.release_per_hour::text, 'default'));
        END IF;
    ELSIF TG_TABLE_NAME = 'principals' THEN
        IF TG_OP = 'INSERT' THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NULL, 'principal.create',
                'target=' || NEW.id || ' role=' || NEW.role);
            RETURN NULL;
        END IF;
        IF NEW.role IS DISTINCT FROM OLD.role OR NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NULL, 'principal.role',
                'target=' || NEW.id || ' role=' || OLD.role || '->' || NEW.role);
        END IF;
        IF OLD.suspended_at IS NULL AND NEW.suspended_at IS NOT NULL THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NULL, 'principal.suspend',
                'target=' || NEW.id || ' cause=' || coalesce(NEW.suspended_reason, ''));
        ELSIF OLD.suspended_at IS NOT NULL AND NEW.suspended_at IS NULL THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NULL, 'principal.unlock',
                'target=' || NEW.id || ' was=' || coalesce(OLD.suspended_reason, ''));
        ELSIF NEW.denials_since IS DISTINCT FROM OLD.denials_since THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NULL, 'principal.denials-reset',
                'target=' || NEW.id);
        END IF;
        IF NEW.release_per_hour IS DISTINCT FROM OLD.release_per_hour
           OR NEW.release_per_day IS DISTINCT FROM OLD.release_per_day THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NULL, 'principal.budget',
                'target=' || NEW.id
                || ' per_hour=' || coalesce(OLD.release_per_hour::text, 'default') || '->'
                || coalesce(NEW.release_per_hour::text, 'default')
                || ' per_day=' || coalesce(OLD.release_per_day::text, 'default') || '->'
                || coalesce(NEW.release_per_day::text, 'default'));
        END IF;
    ELSIF TG_TABLE_NAME = 'tokens' THEN
        SELECT tenant_id INTO v_tenant FROM principals
            WHERE id = coalesce(NEW.principal_id, OLD.principal_id);
        IF TG_OP = 'INSERT' THEN
            PERFORM sealednotes_audit_change(v_tenant, NULL, 'token.issue',
                'target=' || NEW.principal_id || ' expires_at='
                || to_char(NEW.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
        ELSIF TG_OP = 'UPDATE' AND OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL THEN
            PERFORM sealednotes_audit_change(v_tenant, NULL, 'token.revoke',
                'target=' || NEW.principal_id);
        ELSIF TG_OP = 'UPDATE' AND (NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
                OR NEW.expires_at IS DISTINCT FROM OLD.expires_at) THEN
            PERFORM sealednotes_audit_change(v_tenant, NULL, 'token.change',
                'target=' || NEW.principal_id);
        END IF;
    ELSIF TG_TABLE_NAME = 'care_team' THEN
        SELECT tenant_id INTO v_tenant FROM patients
            WHERE id = coalesce(NEW.patient_id, OLD.patient_id);
        IF TG_OP = 'INSERT' THEN
            PERFORM sealednotes_audit_change(v_tenant, NEW.patient_id, 'care-team.add',
                concat_ws(' ', 'member=' || NEW.principal_id,
                    'until=' || to_char(NEW.until AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')));
        ELSIF TG_OP = 'UPDATE' THEN
            IF NEW.until IS DISTINCT FROM OLD.until OR NEW.principal_id <> OLD.principal_id
               OR NEW.patient_id <> OLD.patient_id THEN
                PERFORM sealednotes_audit_change(v_tenant, NEW.patient_id, 'care-team.change',
                    concat_ws(' ', 'member=' || NEW.principal_id,
                        'until=' || coalesce(to_char(NEW.until AT TIME ZONE 'UTC',
                            'YYYY-MM-DD"T"HH24:MI:SS"Z"'), 'none')));
            END IF;
        ELSE
            PERFORM sealednotes_audit_change(v_tenant, OLD.patient_id, 'care-team.remove',
                'member=' || OLD.principal_id);
        END IF;
    ELSIF TG_TABLE_NAME = 'patients' THEN
        IF NEW.is_decoy IS DISTINCT FROM OLD.is_decoy THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NEW.id, 'patient.decoy',
                CASE WHEN NEW.is_decoy THEN 'set' ELSE 'cleared' END);
        END IF;
        IF OLD.shredded_at IS NULL AND NEW.shredded_at IS NOT NULL THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NEW.id, 'patient.shred', NULL);
        ELSIF OLD.shredded_at IS NOT NULL AND NEW.shredded_at IS NULL THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NEW.id, 'patient.shred-cancel', NULL);
        END IF;
        IF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id
           OR NEW.external_id_index IS DISTINCT FROM OLD.external_id_index THEN
            PERFORM sealednotes_audit_change(NEW.tenant_id, NEW.id, 'patient.identity', NULL);
        END IF;
    ELSIF TG_TABLE_NAME = 'break_glass' THEN
        PERFORM sealednotes_audit_change(NEW.tenant_id, NEW.patient_id, 'break-glass', NEW.reason);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION sealednotes_audit_rights() FROM PUBLIC;

CREATE TRIGGER tenants_audit AFTER INSERT OR UPDATE ON tenants
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_rights();
CREATE TRIGGER principals_audit AFTER INSERT OR UPDATE ON principals
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_rights();
CREATE TRIGGER tokens_audit AFTER INSERT OR UPDATE ON tokens
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_rights();
CREATE TRIGGER care_team_audit AFTER INSERT OR UPDATE OR DELETE ON care_team
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_rights();
CREATE TRIGGER patients_audit AFTER UPDATE ON patients
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_rights();
CREATE TRIGGER break_glass_audit AFTER INSERT ON break_glass
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_rights();

-- -- pruning old ledger rows: a maintenance role, never the service -----------------------

-- Deletes ledger rows older than the given age (never younger than two days, so no
-- budget window is touched) and records what it did in the audit log.
CREATE FUNCTION sealednotes_prune(p_older_than interval) RETURNS TABLE (ledger text, deleted bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_cutoff timestamptz := clock_timestamp() - greatest(p_older_than, interval '2 days');
    n_releases bigint;
    n_denials bigint;
    n_glass bigint;
BEGIN
    PERFORM set_config('sealednotes.pruning', 'on', true);
    DELETE FROM key_releases WHERE recorded_at < v_cutoff;
    GET DIAGNOSTICS n_releases = ROW_COUNT;
    DELETE FROM release_denials WHERE denied_at < v_cutoff;
    GET DIAGNOSTICS n_denials = ROW_COUNT;
    DELETE FROM break_glass WHERE expires_at < v_cutoff;
    GET DIAGNOSTICS n_glass = ROW_COUNT;
    PERFORM set_config('sealednotes.pruning', 'off', true);
    PERFORM sealednotes_audit_append(pg_backend_pid(), NULL, NULL, 'maintenance', NULL, NULL,
        'maintenance.prune', 'granted',
        'before=' || to_char(v_cutoff AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        || ' key_releases=' || n_releases || ' release_denials=' || n_denials
        || ' break_glass=' || n_glass || ' db_user=' || session_user,
        NULL, NULL);
    RETURN QUERY VALUES ('key_releases', n_releases), ('release_denials', n_denials),
                        ('break_glass', n_glass);
END
$$;
REVOKE ALL ON FUNCTION sealednotes_prune(interval) FROM PUBLIC;
