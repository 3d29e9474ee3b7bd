-- Idempotency-Key for POST /v1/patients/{id}/notes: a client retry after a timeout
-- returns the note created by the first attempt instead of a duplicate.
-- request_digest is an HMAC of the request under the patient's own data key, so it
-- cannot be used to guess note content.
CREATE TABLE idempotency_keys (
    principal_id    uuid NOT NULL REFERENCES principals(id),
    key             text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    request_digest  bytea NOT NULL,
    note_id         uuid NOT NULL REFERENCES notes(id) DEFERRABLE INITIALLY DEFERRED,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (principal_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
