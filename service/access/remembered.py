"""Callers remembered between requests, to spare a warm read its authentication
round trip.

Authenticating an opaque token is one database round trip of the three a warm
read makes. A worker remembers which principal (as it was then) a token's digest
authenticated; the read then sends the token's digest along with its one statement,
which reads the principal and the token as they are now (KeyReleaseGate.release_note).
Unless both are exactly as remembered (token live, not revoked, not expired; the
account not suspended, its budgets and role unchanged), nothing is decided or
written and the request starts again with a full authentication. So a remembered
caller never gets anything a fresh authentication would not: it saves a round trip,
it grants nothing. JWTs are not remembered (their signature and claims are checked
on every request).
"""

from __future__ import annotations

import threading

from service.access.authentication import TOKEN_PREFIX, hash_token, parse_bearer
from service.access.caller import Caller
from service.errors import Unauthorized
from service.models import Principal

CAPACITY = 10_000  # tokens per worker; past it the oldest is forgotten


def opaque_token_digest(header: str | None) -> bytes | None:
    """The SHA-256 of the header's opaque `snt_` token, or None for anything else."""
    try:
        token = parse_bearer(header)
    except Unauthorized:
        return None
    return hash_token(token) if token.startswith(TOKEN_PREFIX) else None


class RememberedCallers:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._principals: dict[bytes, Principal] = {}

    def remember(self, token_digest: bytes, principal: Principal) -> None:
        with self._lock:
            self._principals.pop(token_digest, None)
            while len(self._principals) >= self._capacity:
                del self._principals[next(iter(self._principals))]
            self._principals[token_digest] = principal

    def forget(self, token_digest: bytes) -> None:
        with self._lock:
            self._principals.pop(token_digest, None)

    def caller(
        self, header: str | None, request_id: str | None, client_addr: str | None
    ) -> tuple[Caller, bytes] | None:
        """The remembered caller of this Authorization header and the token digest the
        read must confirm, or None (authenticate as usual)."""
        digest = opaque_token_digest(header)
        if digest is None:
            return None
        principal = self._principals.get(digest)
        if principal is None:
            return None
        return Caller(principal, request_id, client_addr), digest

    def __len__(self) -> int:
        return len(self._principals)
