"""The service's own errors. Adapters translate foreign errors into these.

Each error knows its HTTP status and its RFC 9457 problem type. Messages are
fixed strings chosen here: no exception message may carry note content, an
external identifier, a token or key material.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://sealednotes.dev/problems/"


class ServiceError(Exception):
    status = 500
    slug = "internal-error"
    title = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra or {}

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.slug


class BadRequest(ServiceError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class ValidationFailed(ServiceError):
    status = 422
    slug = "validation-failed"
    title = "The request body or parameters are invalid"

    def __init__(self, errors: dict[str, Any], detail: str | None = None) -> None:
        super().__init__(detail or "One or more fields are invalid", extra={"errors": errors})


class Unauthorized(ServiceError):
    status = 401
    slug = "unauthorized"
    title = "Missing, invalid, expired or revoked bearer token"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="sealednotes"'})


class Forbidden(ServiceError):
    status = 403
    slug = "forbidden"
    title = "Your role may not do this"


class AccountSuspended(ServiceError):
    status = 403
    slug = "account-suspended"
    title = "This account is suspended; an administrator must unlock it"


class NotFound(ServiceError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ServiceError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class Gone(ServiceError):
    status = 410
    slug = "gone"
    title = "This patient's notes were destroyed (crypto-shredded)"


class PreconditionFailed(ServiceError):
    status = 412
    slug = "precondition-failed"
    title = "If-Match does not match the note's current version"


class PreconditionRequired(ServiceError):
    status = 428
    slug = "precondition-required"
    title = "If-Match is required to amend a note"


class BudgetExceeded(ServiceError):
    status = 429
    slug = "key-release-budget-exceeded"
    title = "Key release budget exhausted"

    def __init__(self, detail: str, *, retry_after: int, scope: str) -> None:
        super().__init__(
            detail,
            headers={"Retry-After": str(max(1, retry_after))},
            extra={"scope": scope, "retry_after": max(1, retry_after)},
        )


class CallerChanged(Exception):
    """A remembered caller no longer matches the database (token revoked or expired,
    account changed): nothing was done; authenticate afresh and start again."""


class TenantCapReached(Exception):
    """The database refused a release past the tenant's hourly cap (its own check)."""


class ServiceUnavailable(ServiceError):
    status = 503
    slug = "service-unavailable"
    title = "Temporarily unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = 2) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class VerificationBacklog(ServiceUnavailable):
    slug = "audit-verification-backlog"
    title = "Too many records since the last verified checkpoint to verify in a request"


class Overloaded(ServiceUnavailable):
    slug = "overloaded"
    title = "The service is at capacity; retry after a short pause"

    def __init__(self) -> None:
        super().__init__(retry_after=1)


class KeyServiceUnavailable(ServiceUnavailable):
    slug = "key-service-unavailable"
    title = "The key service (Vault) is unavailable, sealed or too slow; nothing was decrypted"


class KeyServiceThrottled(KeyServiceUnavailable):
    """Vault's own unwrap budget for the tenant (a rate-limit quota) is spent."""

    slug = "key-service-throttled"
    title = "The key service refused more key releases for now; nothing was decrypted"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, retry_after=300)


class DatabaseUnavailable(ServiceUnavailable):
    slug = "database-unavailable"
    title = "The database is unavailable"


class AuditUnavailable(ServiceUnavailable):
    slug = "audit-unavailable"
    title = "The access could not be audited, so it was refused"


class GateDisagreement(ServiceError):
    """The warm read's statement recorded a grant the gate, on the same snapshot, would
    not make: a defect, never a client's doing. Nothing is returned."""

    status = 500
    slug = "gate-disagreement"
    title = "The access rules disagreed; no content was returned"


class IntegrityFailure(ServiceError):
    status = 500
    slug = "integrity-failure"
    title = "Stored ciphertext failed authentication; no content was returned"
