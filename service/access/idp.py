"""Bearer tokens from the tenants' identity providers (OpenID Connect / OAuth 2 JWTs).

How a request's bearer token is recognised:

* `snt_...` (or anything that is not a JWT): an opaque token of this service
  (service/access/authentication.py), looked up by its SHA-256 digest;
* a JWT (three base64url parts): the tenant is the one whose configured issuer equals the
  token's `iss`; the signature is checked against that issuer's published keys
  (service/access/jwtverify.py), then `iss`, `aud`, `exp` and `nbf` against the service clock;
  the subject (the tenant's principal claim, `sub` by default) is mapped to a principals
  row through `principal_identities`, created on first use when the tenant allows it.

Both kinds of token resolve to the same `Principal`, so budget, suspension and audit follow
the principal whatever it authenticates with. A refused JWT answers 401 and is audited
(`auth.token`, `denied`, reason `jwt:<class>`); the token itself is never kept.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from service.access.authentication import authenticate
from service.access.caller import OPERATOR, Caller
from service.access.jwtverify import (
    JwksCache,
    KeysUnavailable,
    TokenRejected,
    check_algorithm,
    check_claims,
    claim_at,
    looks_like_jwt,
    peek,
    verify_signature,
)
from service.access.remembered import RememberedCallers, opaque_token_digest
from service.audit.service import AuditLog
from service.clock import Clock
from service.config import IdpSettings
from service.errors import (
    AccountSuspended,
    Conflict,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from service.models import AuditEvent, Principal, Role, TenantIdp
from service.ports import Database, UnitOfWork

log = logging.getLogger(__name__)

SUBJECT_RE = re.compile(r"^[\x21-\x7e]{1,190}$")  # printable ASCII: OIDC `sub` is ASCII
CLAIM_PATH_RE = re.compile(r"^[A-Za-z0-9_:/.-]{1,200}$")
ROLE_VALUE_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")


class IdentityProviderUnavailable(ServiceUnavailable):
    slug = "identity-provider-unavailable"
    title = "The identity provider's signing keys could not be fetched; retry later"


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str | None = None
    client_addr: str | None = None


def bearer_token(header: str | None) -> str | None:
    """The token of a `Bearer` header when it is a JWT (else None: the opaque path)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or token.startswith("snt_") or not looks_like_jwt(token):
        return None
    return token


def _validate_idp(idp: TenantIdp) -> None:
    errors: dict[str, list[str]] = {}
    if not 0 < len(idp.issuer) <= 500 or any(c.isspace() for c in idp.issuer):
        errors["issuer"] = ["1 to 500 characters, no spaces (the tokens' `iss`, verbatim)."]
    if not re.match(r"^https?://[^\s]{1,1990}$", idp.jwks_url):
        errors["jwks_url"] = ["An http(s) URL."]
    if not 0 < len(idp.audience) <= 500:
        errors["audience"] = ["1 to 500 characters."]
    if not CLAIM_PATH_RE.match(idp.principal_claim):
        errors["principal_claim"] = ["A claim name or dotted path."]
    if idp.role_claim is not None and not CLAIM_PATH_RE.match(idp.role_claim):
        errors["role_claim"] = ["A claim name or dotted path."]
    for role, values in idp.role_map.items():
        if role not in {r.value for r in Role}:
            errors.setdefault("role_map", []).append(f"Unknown role {role!r}.")
        elif not values or not all(ROLE_VALUE_RE.match(v) for v in values):
            errors.setdefault("role_map", []).append(f"Claim values for {role} are invalid.")
    if idp.role_map and idp.role_claim is None:
        errors.setdefault("role_claim", []).append("Required with a role map.")
    if idp.allow_create and not idp.role_map:
        errors.setdefault("role_map", []).append("Creating principals needs a role map.")
    if errors:
        raise ValidationFailed(errors)


def _roles_from(idp: TenantIdp, claims: dict[str, Any]) -> set[Role]:
    if idp.role_claim is None:
        return set()
    raw = claim_at(claims, idp.role_claim)
    values: set[str] = set()
    if isinstance(raw, str):
        values = {raw}
    elif isinstance(raw, list):
        values = {v for v in raw if isinstance(v, str)}
    return {Role(role) for role, mapped in idp.role_map.items() if values & set(mapped)}


class IdentityService:
    """Tenant identity-provider configuration, subject links, and JWT authentication."""

    def __init__(
        self,
        *,
        store: Database,
        audit: AuditLog,
        clock: Clock,
        settings: IdpSettings,
        jwks: JwksCache | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._clock = clock
        self._settings = settings
        # Opaque tokens this worker authenticated: a warm read confirms one in its own
        # statement instead of authenticating it again (service/access/remembered.py).
        self.remembered = RememberedCallers()
        self.jwks = jwks or JwksCache(
            ttl=settings.jwks_cache_seconds,
            min_refresh=settings.jwks_min_refresh_seconds,
            timeout=settings.jwks_timeout,
        )

    # -- configuration (CLI) ------------------------------------------------------------

    def set_idp(
        self,
        tenant_name: str,
        *,
        issuer: str,
        jwks_url: str,
        audience: str,
        principal_claim: str = "sub",
        role_claim: str | None = None,
        role_map: dict[str, list[str]] | None = None,
        allow_create: bool = False,
    ) -> TenantIdp:
        with self._store.transaction() as tx:
            tenant = tx.tenants.tenant_by_name(tenant_name)
            if tenant is None:
                raise NotFound(f"No tenant named {tenant_name!r}")
            idp = TenantIdp(
                tenant_id=tenant.id,
                issuer=issuer,
                jwks_url=jwks_url,
                audience=audience,
                principal_claim=principal_claim,
                role_claim=role_claim,
                role_map=dict(role_map or {}),
                allow_create=allow_create,
            )
            _validate_idp(idp)
            other = tx.idp.tenant_using_issuer(issuer)
            if other is not None and other != tenant.id:
                raise Conflict("Another tenant already trusts this issuer")
            self._audit.attribute(tx, OPERATOR)  # the database records the change
            tx.idp.upsert_tenant_idp(idp, self._clock.now())
        self.jwks.clear()
        return idp

    def show_idp(self, tenant_name: str) -> TenantIdp | None:
        with self._store.transaction() as tx:
            tenant = tx.tenants.tenant_by_name(tenant_name)
            if tenant is None:
                raise NotFound(f"No tenant named {tenant_name!r}")
            return tx.idp.tenant_idp(tenant.id)

    def remove_idp(self, tenant_name: str) -> bool:
        with self._store.transaction() as tx:
            tenant = tx.tenants.tenant_by_name(tenant_name)
            if tenant is None:
                raise NotFound(f"No tenant named {tenant_name!r}")
            self._audit.attribute(tx, OPERATOR)  # the database records the change
            return tx.idp.delete_tenant_idp(tenant.id)

    def link_subject(self, principal_id: str, subject: str) -> None:
        """Map a subject of the tenant's issuer to an existing principal (e.g. one that
        already has opaque tokens: both then share its budget)."""
        if not SUBJECT_RE.match(subject):
            raise ValidationFailed({"subject": ["1 to 190 printable ASCII characters."]})
        with self._store.transaction() as tx:
            principal = tx.principals.principal(principal_id)
            if principal is None:
                raise NotFound("No such principal")
            self._audit.attribute(tx, OPERATOR)  # the database records the link
            now = self._clock.now()
            if not tx.idp.insert_identity(principal.tenant_id, subject, principal.id, now):
                owner = tx.idp.principal_by_subject(principal.tenant_id, subject)
                if owner is None or owner.id != principal.id:
                    raise Conflict("This subject is already linked to another principal")

    def subjects(self, principal_id: str) -> list[str]:
        with self._store.transaction() as tx:
            return tx.idp.subjects_of(principal_id)

    # -- authentication ------------------------------------------------------------------

    def caller_for(self, header: str | None, ctx: RequestContext, *, what: str) -> Caller:
        """The caller of a request, or refuse it. A suspended account's attempts are
        evidence: each is audited (`what` names the request) before the refusal."""
        principal = self.authenticate(header, ctx)
        found = Caller(principal, ctx.request_id, ctx.client_addr)
        if principal.suspended:
            with self._store.transaction() as tx:
                self._audit.record(
                    tx,
                    action="request",
                    outcome="denied",
                    caller=found,
                    reason=f"account-suspended {what}",
                )
            raise AccountSuspended()
        digest = opaque_token_digest(header)
        if digest is not None:
            self.remembered.remember(digest, principal)
        return found

    def authenticate(self, header: str | None, ctx: RequestContext) -> Principal:
        """Any bearer token: a JWT of a tenant's issuer, or an opaque token."""
        token = bearer_token(header)
        if token is None:
            return authenticate(self._store, self._clock, header)
        return self.authenticate_jwt(token, ctx)

    def authenticate_jwt(self, token: str, ctx: RequestContext) -> Principal:
        tenant_id: str | None = None
        principal_id: str | None = None
        try:
            seen = peek(token)
            issuer = seen.claims.get("iss")
            if not isinstance(issuer, str) or not 0 < len(issuer) <= 500:
                raise TokenRejected("unknown-issuer")
            with self._store.autocommit() as tx:
                idp = tx.idp.tenant_idp_by_issuer(issuer)
            if idp is None:
                raise TokenRejected("unknown-issuer")
            tenant_id = idp.tenant_id
            alg = check_algorithm(seen.header)
            try:
                key = self.jwks.key(idp.jwks_url, seen.header.get("kid"))
            except KeysUnavailable:
                raise IdentityProviderUnavailable() from None
            claims = verify_signature(token, alg, key)
            subject = claim_at(claims, idp.principal_claim)
            known: Principal | None = None
            if isinstance(subject, str) and SUBJECT_RE.match(subject):
                # Genuine signature: a refusal below names whose token it was.
                with self._store.autocommit() as tx:
                    known = tx.idp.principal_by_subject(idp.tenant_id, subject)
                principal_id = known.id if known else None
            check_claims(
                claims,
                issuer=idp.issuer,
                audiences=[idp.audience],
                now=self._clock.now(),
                leeway=self._settings.jwt_leeway_seconds,
            )
            if not isinstance(subject, str) or not SUBJECT_RE.match(subject):
                raise TokenRejected("missing-claim")
            return self._principal_for(idp, subject, claims, known, ctx)
        except TokenRejected as e:
            self._deny(e.reason, tenant_id, principal_id, ctx)
            raise Unauthorized("The token is invalid, expired or not accepted here") from None

    def _principal_for(
        self,
        idp: TenantIdp,
        subject: str,
        claims: dict[str, Any],
        known: Principal | None,
        ctx: RequestContext,
    ) -> Principal:
        roles = _roles_from(idp, claims)
        if known is not None:
            # When the issuer states roles, they must still include the principal's:
            # a clinician whose role was withdrawn at the issuer is refused.
            if idp.role_claim is not None and known.role not in roles:
                raise TokenRejected("role-mismatch")
            return known
        with self._store.transaction() as tx:
            if not idp.allow_create:
                raise TokenRejected("unknown-principal")
            if len(roles) != 1:
                raise TokenRejected("unmapped-role" if not roles else "ambiguous-role")
            return self._create(tx, idp, subject, roles.pop(), ctx)

    def _create(
        self, tx: UnitOfWork, idp: TenantIdp, subject: str, role: Role, ctx: RequestContext
    ) -> Principal:
        now = self._clock.now()
        principal_id = str(uuid.uuid4())
        # The database records the new principal and its link (triggers), as created on
        # first use by the identity provider's token, on behalf of that request.
        tx.audit.set_actor(
            principal_id=principal_id,
            role=role.value,
            request_id=ctx.request_id,
            client_addr=ctx.client_addr,
            reason="via=idp",
        )
        if not tx.principals.insert_principal(
            principal_id, idp.tenant_id, f"idp:{subject}", role, now
        ):
            # A concurrent first request created it (the insert waited for its commit),
            # or an operator took the name.
            raced = tx.idp.principal_by_subject(idp.tenant_id, subject)
            if raced is None or raced.role is not role:
                raise TokenRejected("principal-name-taken")
            return raced
        if not tx.idp.insert_identity(idp.tenant_id, subject, principal_id, now):
            raise TokenRejected("unknown-principal")
        created = tx.principals.principal(principal_id)
        assert created is not None
        return created

    def _deny(
        self,
        reason: str,
        tenant_id: str | None,
        principal_id: str | None,
        ctx: RequestContext,
    ) -> None:
        log.info("bearer JWT refused: %s", reason)
        with self._store.transaction() as tx:
            tx.audit.insert_audit_event(
                AuditEvent(
                    action="auth.token",
                    outcome="denied",
                    tenant_id=tenant_id,
                    principal_id=principal_id,
                    reason=f"jwt:{reason}",
                    request_id=ctx.request_id,
                    client_addr=ctx.client_addr,
                ),
            )


def parse_role_map(items: Iterable[str]) -> dict[str, list[str]]:
    """`clinician=doctor,nurse` (repeatable) -> {"clinician": ["doctor", "nurse"]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        role, sep, values = item.partition("=")
        parsed = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not role.strip() or not parsed:
            raise ValidationFailed({"role_map": ["Use ROLE=VALUE[,VALUE...]."]})
        out.setdefault(role.strip(), []).extend(parsed)
    return out
