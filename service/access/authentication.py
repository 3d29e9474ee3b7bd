"""Bearer tokens: 256-bit random secrets, stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets

from service.clock import Clock
from service.errors import Unauthorized
from service.models import Principal
from service.ports import Database

TOKEN_PREFIX = "snt_"
MAX_TOKEN_LENGTH = 200


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("An Authorization: Bearer token is required")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        raise Unauthorized("The Authorization header must be 'Bearer <token>'")
    return token


def authenticate(store: Database, clock: Clock, header: str | None) -> Principal:
    token = parse_bearer(header)
    with store.autocommit() as tx:
        principal = tx.principals.principal_by_token(hash_token(token), clock.now())
    if principal is None:
        raise Unauthorized("The token is invalid, expired or revoked")
    return principal
