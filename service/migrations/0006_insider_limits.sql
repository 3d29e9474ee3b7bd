-- Abuse beyond one clinician: two admins for actions that weaken protection,
-- limits on every role, budgets on writes, break-glass inside the tenant's cap,
-- shredding with a grace period.

-- -- two-person approvals ------------------------------------------------------------------

-- An admin's weakening action (budget raise, decoy clear, unlock after a decoy or a
-- second unlock in a day, shred, shred cancel, care-team grants past the hourly
-- threshold) waits here until another admin of the same tenant approves it.
CREATE TABLE approvals (
    id                   uuid PRIMARY KEY,
    tenant_id            uuid NOT NULL REFERENCES tenants(id),
    kind                 text NOT NULL CHECK (kind IN ('budget-raise', 'decoy-clear', 'unlock',
                             'shred', 'shred-cancel', 'care-team-grant')),
    target_principal_id  uuid REFERENCES principals(id),
    target_patient_id    uuid REFERENCES patients(id),
    params               jsonb NOT NULL DEFAULT '{}'::jsonb,
    requested_by         uuid NOT NULL REFERENCES principals(id),
    requested_at         timestamptz NOT NULL,
    expires_at           timestamptz NOT NULL,
    status               text NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'approved', 'rejected')),
    decided_by           uuid REFERENCES principals(id),
    decided_at           timestamptz,
    -- The database itself refuses a requester deciding its own request.
    CHECK (decided_by IS NULL OR decided_by <> requested_by),
    CHECK ((status = 'pending') = (decided_by IS NULL))
);
CREATE INDEX approvals_tenant ON approvals (tenant_id, status, requested_at);

-- A decision is final, and only a pending, unexpired request can be decided, by an
-- admin of the same tenant (whoever writes the row).
CREATE FUNCTION sealednotes_approval_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' THEN
            RAISE EXCEPTION 'an approval starts pending' USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'this approval was already decided' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id OR NEW.kind <> OLD.kind
       OR NEW.params <> OLD.params OR NEW.requested_by <> OLD.requested_by
       OR NEW.requested_at <> OLD.requested_at OR NEW.expires_at <> OLD.expires_at
       OR NEW.target_principal_id IS DISTINCT FROM OLD.target_principal_id
       OR NEW.target_patient_id IS DISTINCT FROM OLD.target_patient_id THEN
        RAISE EXCEPTION 'an approval request cannot be changed' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.status = 'approved' AND clock_timestamp() > OLD.expires_at THEN
        RAISE EXCEPTION 'this approval request has expired' USING ERRCODE = 'check_violation';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM principals WHERE id = NEW.decided_by
                   AND tenant_id = NEW.tenant_id AND role = 'admin' AND suspended_at IS NULL) THEN
        RAISE EXCEPTION 'only another admin of the tenant decides' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER approvals_guard BEFORE INSERT OR UPDATE ON approvals
    FOR EACH ROW EXECUTE FUNCTION sealednotes_approval_guard();
CREATE TRIGGER approvals_no_delete BEFORE DELETE ON approvals
    FOR EACH ROW EXECUTE FUNCTION sealednotes_ledger_append_only();

-- Requests and decisions are in the log, whoever writes them.
CREATE FUNCTION sealednotes_audit_approval() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v_what text := NEW.kind || ' approval=' || NEW.id
        || coalesce(' target=' || NEW.target_principal_id, '')
        || CASE WHEN NEW.params = '{}'::jsonb THEN '' ELSE ' params=' || NEW.params::text END;
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM sealednotes_audit_change(NEW.tenant_id, NEW.target_patient_id,
            'approval.request', v_what || ' requested_by=' || NEW.requested_by);
    ELSIF NEW.status <> OLD.status THEN
        PERFORM sealednotes_audit_change(NEW.tenant_id, NEW.target_patient_id,
            'approval.' || CASE WHEN NEW.status = 'approved' THEN 'approve' ELSE 'reject' END,
            v_what || ' requested_by=' || NEW.requested_by || ' decided_by=' || NEW.decided_by);
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION sealednotes_audit_approval() FROM PUBLIC;
CREATE TRIGGER approvals_audit AFTER INSERT OR UPDATE ON approvals
    FOR EACH ROW EXECUTE FUNCTION sealednotes_audit_approval();

-- -- limits on every role ------------------------------------------------------------------

-- One row per limited action (admin actions, care-team grants, lookups and
-- registrations, note writes with their patient), counted per principal per hour.
-- Append-only for the service, like the other ledgers.
CREATE TABLE principal_actions (
    principal_id  uuid NOT NULL REFERENCES principals(id),
    kind          text NOT NULL CHECK (kind IN ('admin', 'care-team', 'lookup', 'write')),
    patient_id    uuid REFERENCES patients(id),
    at            timestamptz NOT NULL
);
CREATE INDEX principal_actions_window ON principal_actions (principal_id, kind, at);
CREATE TRIGGER principal_actions_append_only BEFORE UPDATE OR DELETE ON principal_actions
    FOR EACH ROW EXECUTE FUNCTION sealednotes_ledger_append_only();

-- -- break-glass inside the tenant's cap -------------------------------------------------------

-- A release under break-glass counts against the tenant's hourly cap like any other,
-- but not against the clinician's own budget (break-glass has its own).
ALTER TABLE key_releases ADD COLUMN via text NOT NULL DEFAULT 'care-team'
    CHECK (via IN ('care-team', 'break-glass'));

-- -- shredding with a grace period ------------------------------------------------------------

-- A shredded patient answers 410 at once; its wrapped key is destroyed only when
-- shred_due_at has passed, by `sealednotes maintenance run` (the maintenance role),
-- and two admins can cancel the shred before then.
ALTER TABLE patients ADD COLUMN shred_due_at timestamptz;
ALTER TABLE patients ADD COLUMN key_destroyed_at timestamptz;
UPDATE patients SET key_destroyed_at = shredded_at WHERE shredded_at IS NOT NULL;

CREATE FUNCTION sealednotes_destroy_due_keys() RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    v record;
    n bigint := 0;
BEGIN
    FOR v IN SELECT id, tenant_id FROM patients
             WHERE shredded_at IS NOT NULL AND key_destroyed_at IS NULL
               AND shred_due_at <= clock_timestamp()
             FOR UPDATE
    LOOP
        DELETE FROM patient_keys WHERE patient_id = v.id;
        UPDATE patients SET key_destroyed_at = clock_timestamp() WHERE id = v.id;
        PERFORM sealednotes_audit_append(pg_backend_pid(), v.tenant_id, NULL, 'maintenance',
            v.id, NULL, 'patient.key-destroyed', 'granted', 'db_user=' || session_user, NULL, NULL);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION sealednotes_destroy_due_keys() FROM PUBLIC;

-- Nobody but that function removes a wrapped key, and a shred is only cancelled while
-- the key still exists.
CREATE FUNCTION sealednotes_shred_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.key_destroyed_at IS NOT NULL AND NEW.shredded_at IS NULL THEN
        RAISE EXCEPTION 'the key is destroyed: the shred cannot be cancelled'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.key_destroyed_at IS DISTINCT FROM OLD.key_destroyed_at
       AND current_user <> (SELECT tableowner FROM pg_tables WHERE tablename = 'patients'
                            AND schemaname = 'public') THEN
        RAISE EXCEPTION 'only maintenance destroys keys' USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER patients_shred_guard BEFORE UPDATE ON patients
    FOR EACH ROW EXECUTE FUNCTION sealednotes_shred_guard();
