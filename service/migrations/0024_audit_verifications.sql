-- Incremental verification: each verification that finds the log intact up to a
-- signed checkpoint is recorded, signed with the same Vault key as the checkpoints
-- (service/audit/verify.py), and the next verification starts from the newest such
-- record whose signature holds, scanning only the records after that checkpoint.
-- A row without a valid signature is ignored: the database cannot vouch for itself.
CREATE TABLE audit_verifications (
    id             bigserial PRIMARY KEY,
    checkpoint_id  bigint NOT NULL REFERENCES audit_checkpoints (id),
    verified_at    timestamptz NOT NULL,
    checked        bigint NOT NULL,
    payload        text NOT NULL,
    signature      text NOT NULL
);
CREATE TRIGGER audit_verifications_append_only BEFORE UPDATE OR DELETE ON audit_verifications
    FOR EACH ROW EXECUTE FUNCTION sealednotes_append_only();
CREATE TRIGGER audit_verifications_no_truncate BEFORE TRUNCATE ON audit_verifications
    FOR EACH STATEMENT EXECUTE FUNCTION sealednotes_append_only();
