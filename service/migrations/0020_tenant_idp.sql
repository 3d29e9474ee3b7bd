-- Identity providers and SMART Backend Services clients (service/access/idp.py, service/access/smart.py).
--
-- A tenant may trust one OpenID Connect / OAuth 2 issuer: JWT access tokens it signs are
-- accepted as bearer tokens, and the subject they name is mapped to a principals row, so a
-- clinician keeps one budget, one suspension state and one audit trail whatever token it
-- presents. Nothing here is secret: issuers, audiences, JWKS URLs and public keys only.

CREATE TABLE tenant_idps (
    tenant_id        uuid PRIMARY KEY REFERENCES tenants(id),
    -- `iss` of the tokens, exactly as the issuer writes it: a token's tenant is found by it.
    issuer           text NOT NULL UNIQUE CHECK (length(issuer) BETWEEN 1 AND 500),
    jwks_url         text NOT NULL CHECK (jwks_url ~ '^https?://' AND length(jwks_url) <= 2000),
    audience         text NOT NULL CHECK (length(audience) BETWEEN 1 AND 500),
    -- Claim naming the principal (dotted path into the claims, e.g. `sub`).
    principal_claim  text NOT NULL DEFAULT 'sub' CHECK (length(principal_claim) BETWEEN 1 AND 200),
    -- Claim carrying the user's roles at the issuer (string or array of strings), and the
    -- mapping role -> claim values, e.g. {"clinician": ["doctor", "nurse"]}.
    role_claim       text CHECK (length(role_claim) BETWEEN 1 AND 200),
    role_map         jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(role_map) = 'object'),
    -- Create a principal the first time an unknown subject presents a valid token
    -- (with the role its claims map to; a subject whose claims map to no role is refused).
    allow_create     boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);

-- (tenant, subject at the tenant's issuer) -> principal. One principal may also hold opaque
-- tokens: both kinds of token then share its budget.
CREATE TABLE principal_identities (
    tenant_id     uuid NOT NULL REFERENCES tenants(id),
    subject       text NOT NULL CHECK (length(subject) BETWEEN 1 AND 255),
    principal_id  uuid NOT NULL REFERENCES principals(id),
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, subject)
);
CREATE INDEX principal_identities_principal ON principal_identities (principal_id);

-- SMART Backend Services: an integration principal authenticates at POST /oauth2/token with a
-- JWT signed by a key of its registered JWKS (inline public keys or a URL).
CREATE TABLE oauth_clients (
    client_id     text PRIMARY KEY CHECK (client_id ~ '^[A-Za-z0-9._:-]{1,200}$'),
    principal_id  uuid NOT NULL UNIQUE REFERENCES principals(id),
    jwks          jsonb CHECK (jwks IS NULL OR jsonb_typeof(jwks) = 'object'),
    jwks_url      text CHECK (jwks_url IS NULL OR (jwks_url ~ '^https?://' AND length(jwks_url) <= 2000)),
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CHECK ((jwks IS NULL) <> (jwks_url IS NULL))
);

-- Client assertions already used (their `jti`), kept until they expire: a replay is refused.
CREATE TABLE oauth_assertion_jtis (
    client_id   text NOT NULL REFERENCES oauth_clients(client_id) ON DELETE CASCADE,
    jti         text NOT NULL CHECK (length(jti) BETWEEN 1 AND 255),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX oauth_assertion_jtis_expiry ON oauth_assertion_jtis (client_id, expires_at);
