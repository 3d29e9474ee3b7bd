"""SMART Backend Services (client credentials with a signed JWT assertion).

An integration principal registers a client: an id and its public keys (an inline JWKS, or
the URL where it publishes them). Its backend then calls `POST /oauth2/token` with
`grant_type=client_credentials`, `client_assertion_type=urn:ietf:params:oauth:client-
assertion-type:jwt-bearer` and a `client_assertion` JWT (iss = sub = client id, aud = the
token endpoint's URL, exp at most 5 minutes ahead, a unique jti) signed with one of those
keys. The answer is a short-lived opaque `snt_` token of the principal, stored hashed like
every other token. A jti is accepted once; the `jku` header is ignored (keys come only from
the registration).

Scopes are echoed when well formed (`system/...`): authorisation is the principal's role,
exactly as with any other token.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from service.access.authentication import hash_token, new_token
from service.access.caller import OPERATOR
from service.access.jwtverify import (
    JwksCache,
    KeysUnavailable,
    TokenRejected,
    check_algorithm,
    check_claims,
    peek,
    usable_keys,
    verify_signature,
)
from service.audit.service import AuditLog
from service.clock import Clock
from service.config import IdpSettings
from service.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed
from service.models import AuditEvent, OAuthClient, Role
from service.ports import Database

log = logging.getLogger(__name__)

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
SCOPE_RE = re.compile(r"^system/[A-Za-z*]{1,64}\.(?:read|write|\*|[cruds]{1,5})$")
MAX_ASSERTION_SECONDS = 300  # SMART: exp no more than five minutes in the future
PRIVATE_JWK_FIELDS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class OAuthError(Exception):
    """An RFC 6749 error answer: `error`, a fixed description, and an HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    access_token: str
    expires_in: int
    scope: str

    def __repr__(self) -> str:
        return f"IssuedAccessToken(expires_in={self.expires_in}, token=<hidden>)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        }


def validate_public_jwks(document: Any) -> dict[str, Any]:
    """A JWKS of public signing keys, each with a `kid`; private key material is refused."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValidationFailed({"jwks": ["A JSON object with a `keys` array."]})
    for key in document["keys"]:
        if not isinstance(key, dict) or PRIVATE_JWK_FIELDS & set(key):
            raise ValidationFailed({"jwks": ["Public keys only (no private or symmetric keys)."]})
        if not isinstance(key.get("kid"), str) or not key["kid"]:
            raise ValidationFailed({"jwks": ["Every key needs a `kid`."]})
    try:
        keys = usable_keys(document)
    except KeysUnavailable:
        raise ValidationFailed({"jwks": ["No usable RSA, EC or OKP signing key."]}) from None
    if not keys:
        raise ValidationFailed({"jwks": ["No usable RSA, EC or OKP signing key."]})
    return {"keys": document["keys"]}


def granted_scope(requested: str | None) -> str:
    scopes = (requested or "").split()
    if len(scopes) > 20 or not all(SCOPE_RE.match(s) for s in scopes):
        raise OAuthError("invalid_scope", "Scopes must be SMART system scopes (system/...)")
    return " ".join(scopes) or "system/*.read"


class SmartService:
    def __init__(
        self,
        *,
        store: Database,
        audit: AuditLog,
        clock: Clock,
        settings: IdpSettings,
        jwks: JwksCache,
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._jwks = jwks

    # -- registration (CLI) -------------------------------------------------------------

    def register_client(
        self,
        principal_id: str,
        *,
        client_id: str | None = None,
        jwks: Any = None,
        jwks_url: str | None = None,
    ) -> str:
        client_id = client_id or principal_id
        if not CLIENT_ID_RE.match(client_id):
            raise ValidationFailed({"client_id": ["1 to 200 of A-Z a-z 0-9 . _ : -"]})
        if (jwks is None) == (jwks_url is None):
            raise ValidationFailed({"jwks": ["Give exactly one of an inline JWKS or a URL."]})
        if jwks_url is not None and not re.match(r"^https?://\S{1,1990}$", jwks_url):
            raise ValidationFailed({"jwks_url": ["An http(s) URL."]})
        document = validate_public_jwks(jwks) if jwks is not None else None
        with self._store.transaction() as tx:
            principal = tx.principals.principal(principal_id)
            if principal is None:
                raise NotFound("No such principal")
            if principal.role is not Role.INTEGRATION:
                raise Conflict("Only integration principals use SMART Backend Services")
            owner = tx.idp.oauth_client_owner(client_id)
            if owner is not None and owner != principal.id:
                raise Conflict("This client id belongs to another principal")
            self._audit.attribute(tx, OPERATOR)  # the database records the registration
            tx.idp.upsert_oauth_client(
                client_id, principal.id, document, jwks_url, self._clock.now()
            )
        return client_id

    # -- the token endpoint -----------------------------------------------------------------

    def token(
        self,
        form: dict[str, str],
        *,
        token_urls: list[str],
        request_id: str | None,
        client_addr: str | None,
    ) -> IssuedAccessToken:
        if form.get("grant_type") != GRANT_TYPE:
            raise OAuthError(
                "unsupported_grant_type" if form.get("grant_type") else "invalid_request",
                "grant_type must be client_credentials",
            )
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", "client_assertion_type must be jwt-bearer")
        assertion = form.get("client_assertion") or ""
        scope = granted_scope(form.get("scope"))
        client: OAuthClient | None = None
        try:
            seen = peek(assertion)
            iss = seen.claims.get("iss")
            if not isinstance(iss, str) or not CLIENT_ID_RE.match(iss):
                raise TokenRejected("unknown-client")
            if seen.claims.get("sub") != iss:
                raise TokenRejected("subject")
            with self._store.autocommit() as tx:
                client = tx.idp.oauth_client(iss)
            if client is None:
                raise TokenRejected("unknown-client")
            alg = check_algorithm(seen.header)
            kid = seen.header.get("kid")
            if client.jwks is not None:
                key = self._jwks.static(client.jwks, kid)
            else:
                assert client.jwks_url is not None
                try:
                    key = self._jwks.key(client.jwks_url, kid)
                except KeysUnavailable:
                    raise ServiceUnavailable("The client's keys could not be fetched") from None
            claims = verify_signature(assertion, alg, key)
            now = self._clock.now()
            check_claims(
                claims,
                issuer=client.client_id,
                audiences=token_urls,
                now=now,
                leeway=self._settings.jwt_leeway_seconds,
                max_lifetime=MAX_ASSERTION_SECONDS,
            )
            jti = claims.get("jti")
            if not isinstance(jti, str) or not 0 < len(jti) <= 255:
                raise TokenRejected("missing-claim")
            if client.principal.suspended:
                raise TokenRejected("account-suspended")
            exp = datetime.fromtimestamp(float(claims["exp"]), UTC) + timedelta(
                seconds=self._settings.jwt_leeway_seconds
            )
            return self._issue(client, jti, exp, scope, now, request_id, client_addr)
        except TokenRejected as e:
            self._deny(e.reason, client, request_id, client_addr)
            raise OAuthError(
                "invalid_client", "The client assertion was not accepted", status=401
            ) from None

    def _issue(
        self,
        client: OAuthClient,
        jti: str,
        assertion_expires: datetime,
        scope: str,
        now: datetime,
        request_id: str | None,
        client_addr: str | None,
    ) -> IssuedAccessToken:
        ttl = self._settings.smart_token_ttl_seconds
        token = new_token()
        with self._store.transaction() as tx:
            if not tx.idp.claim_assertion_jti(client.client_id, jti, assertion_expires, now):
                raise TokenRejected("replayed")
            # The database records the token (a trigger on tokens), for this client.
            tx.audit.set_actor(
                principal_id=client.principal.id,
                role=client.principal.role.value,
                request_id=request_id,
                client_addr=client_addr,
                reason=f"smart-backend client_id={client.client_id} ttl={ttl}",
            )
            tx.principals.insert_token(
                hash_token(token), client.principal.id, now, now + timedelta(seconds=ttl)
            )
        return IssuedAccessToken(token, ttl, scope)

    def _deny(
        self,
        reason: str,
        client: OAuthClient | None,
        request_id: str | None,
        client_addr: str | None,
    ) -> None:
        log.info("client assertion refused: %s", reason)
        with self._store.transaction() as tx:
            tx.audit.insert_audit_event(
                AuditEvent(
                    action="auth.client-assertion",
                    outcome="denied",
                    tenant_id=client.principal.tenant_id if client else None,
                    principal_id=client.principal.id if client else None,
                    role=client.principal.role.value if client else None,
                    reason=reason,
                    request_id=request_id,
                    client_addr=client_addr,
                ),
            )
