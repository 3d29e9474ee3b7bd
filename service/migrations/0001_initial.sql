-- Sealed Notes initial schema.
-- Note content, titles and patient external identifiers never appear in clear:
-- content lives only in note_versions.sealed (XChaCha20-Poly1305 envelopes) and
-- external ids only as a Vault Transit HMAC (patients.external_id_index).

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE principals (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL REFERENCES tenants(id),
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    role              text NOT NULL CHECK (role IN ('clinician', 'auditor', 'admin', 'integration')),
    suspended_at      timestamptz,
    suspended_reason  text,
    release_per_hour  integer CHECK (release_per_hour > 0),
    release_per_day   integer CHECK (release_per_day > 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

-- Bearer tokens are stored as SHA-256 of a 256-bit random secret.
CREATE TABLE tokens (
    token_hash    bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    principal_id  uuid NOT NULL REFERENCES principals(id),
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz
);
CREATE INDEX tokens_principal ON tokens (principal_id);

CREATE TABLE patients (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants(id),
    external_id_index  text NOT NULL,
    is_decoy           boolean NOT NULL DEFAULT false,
    shredded_at        timestamptz,
    created_at         timestamptz NOT NULL,
    UNIQUE (tenant_id, external_id_index),
    UNIQUE (tenant_id, id)
);

-- One wrapped data key per patient (Vault Transit ciphertext, derivation
-- context = tenant + patient).
CREATE TABLE patient_keys (
    patient_id   uuid PRIMARY KEY REFERENCES patients(id),
    tenant_id    uuid NOT NULL REFERENCES tenants(id),
    wrapped_key  text NOT NULL,
    key_version  integer NOT NULL CHECK (key_version >= 1),
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX patient_keys_version ON patient_keys (tenant_id, key_version);

CREATE TABLE notes (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants(id),
    patient_id       uuid NOT NULL REFERENCES patients(id),
    kind             text NOT NULL,
    status           text NOT NULL DEFAULT 'current'
                     CHECK (status IN ('current', 'entered-in-error')),
    current_version  integer NOT NULL CHECK (current_version >= 1),
    encounter_at     timestamptz,
    created_by       uuid NOT NULL REFERENCES principals(id),
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX notes_patient ON notes (patient_id, created_at, id);

-- Every version is kept; the envelope's AAD binds tenant, patient, note and version.
CREATE TABLE note_versions (
    note_id     uuid NOT NULL REFERENCES notes(id),
    version     integer NOT NULL CHECK (version >= 1),
    sealed      bytea NOT NULL,
    author_id   uuid NOT NULL REFERENCES principals(id),
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (note_id, version)
);

CREATE TABLE care_team (
    patient_id    uuid NOT NULL REFERENCES patients(id),
    principal_id  uuid NOT NULL REFERENCES principals(id),
    until         timestamptz,
    added_at      timestamptz NOT NULL,
    PRIMARY KEY (patient_id, principal_id)
);
CREATE INDEX care_team_principal ON care_team (principal_id);

CREATE TABLE break_glass (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants(id),
    principal_id  uuid NOT NULL REFERENCES principals(id),
    patient_id    uuid NOT NULL REFERENCES patients(id),
    reason        text NOT NULL,
    opened_at     timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX break_glass_lookup ON break_glass (principal_id, patient_id, expires_at);
CREATE INDEX break_glass_opened ON break_glass (principal_id, opened_at);

-- The key-release ledger: one row each time a principal is granted a patient
-- that it had not been granted within the last hour. Budgets count distinct
-- patients here, so they are shared by every worker and replica.
CREATE TABLE key_releases (
    principal_id  uuid NOT NULL REFERENCES principals(id),
    tenant_id     uuid NOT NULL REFERENCES tenants(id),
    patient_id    uuid NOT NULL REFERENCES patients(id),
    released_at   timestamptz NOT NULL
);
CREATE INDEX key_releases_principal ON key_releases (principal_id, released_at);
CREATE INDEX key_releases_principal_patient ON key_releases (principal_id, patient_id, released_at);
CREATE INDEX key_releases_tenant ON key_releases (tenant_id, released_at);

CREATE TABLE release_denials (
    principal_id  uuid NOT NULL REFERENCES principals(id),
    denied_at     timestamptz NOT NULL,
    scope         text NOT NULL
);
CREATE INDEX release_denials_principal ON release_denials (principal_id, denied_at);

-- Access records. No note content and no external identifiers, by construction.
-- Tamper evidence (see service/audit/chain.py): each record is in one of 16 hash
-- chains (shard), numbered without gaps (seq), and hashes its predecessor.
CREATE TABLE audit_events (
    id            bigserial PRIMARY KEY,
    shard         smallint NOT NULL CHECK (shard >= 0),
    seq           bigint NOT NULL CHECK (seq >= 1),
    prev_hash     bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash          bytea NOT NULL CHECK (length(hash) = 32),
    at            timestamptz NOT NULL,
    tenant_id     uuid,
    principal_id  uuid,
    role          text,
    patient_id    uuid,
    note_id       uuid,
    action        text NOT NULL,
    outcome       text NOT NULL,
    reason        text,
    request_id    text,
    client_addr   text,
    UNIQUE (shard, seq)
);
CREATE INDEX audit_events_patient ON audit_events (patient_id, id);
CREATE INDEX audit_events_principal ON audit_events (principal_id, id);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, id);
CREATE INDEX audit_events_at ON audit_events (at);

-- Signed heads of every chain (Vault Transit ed25519).
CREATE TABLE audit_checkpoints (
    id          bigserial PRIMARY KEY,
    created_at  timestamptz NOT NULL,
    total       bigint NOT NULL,
    payload     text NOT NULL,
    signature   text NOT NULL
);

-- Append-only for everyone but a superuser who disables triggers; the
-- application role additionally lacks UPDATE/DELETE/TRUNCATE grants.
CREATE FUNCTION sealednotes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION sealednotes_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION sealednotes_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION sealednotes_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION sealednotes_append_only();
