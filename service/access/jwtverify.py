"""JWT signature and claim checks shared by the identity-provider path (service/access/idp.py) and
SMART Backend Services client assertions (service/access/smart.py).

Only asymmetric algorithms are accepted (RSA, RSA-PSS, ECDSA, EdDSA): `none` and every HMAC
algorithm are refused before any key is looked up, and the key used is always a public key
object of the family the algorithm names, so HMAC-with-the-public-key confusion cannot occur.
Keys come from JWKS documents cached here: an unknown `kid` refetches the issuer's keys (key
rotation) at most once per `min_refresh` seconds, so forged `kid`s cannot hammer the issuer.

Failures raise `TokenRejected` with a short class name (`expired`, `signature`, ...) that
goes into the audit log; no token content is kept in an exception, a log line or a record.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

log = logging.getLogger(__name__)

# A JWS compact serialisation: three base64url parts (the last empty for alg=none).
JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
MAX_JWT_LENGTH = 16 * 1024

_FAMILIES: dict[str, tuple[type, ...]] = {
    "RS": (rsa.RSAPublicKey,),
    "PS": (rsa.RSAPublicKey,),
    "ES": (ec.EllipticCurvePublicKey,),
    "Ed": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class TokenRejected(Exception):
    """A token failed a check. `reason` is a fixed class name, safe to audit."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(Exception):
    """The keys could not be fetched (network, HTTP error, not a JWKS)."""


def looks_like_jwt(token: str) -> bool:
    return len(token) <= MAX_JWT_LENGTH and JWT_RE.match(token) is not None


def _b64json(part: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        raise TokenRejected("malformed") from None
    if not isinstance(value, dict):
        raise TokenRejected("malformed")
    return value


@dataclass(frozen=True, slots=True)
class Unverified:
    """Header and claims as written in the token: for routing only, trusted for nothing."""

    header: dict[str, Any]
    claims: dict[str, Any]


def peek(token: str) -> Unverified:
    if not looks_like_jwt(token):
        raise TokenRejected("malformed")
    head, body, _sig = token.split(".")
    return Unverified(_b64json(head), _b64json(body))


def check_algorithm(header: dict[str, Any]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
        raise TokenRejected("algorithm")  # none, HS*, or anything unknown
    if "crit" in header:
        raise TokenRejected("algorithm")  # no critical extensions are understood
    return alg


def _public(key: Any) -> Any:
    # A JWKS that wrongly publishes private keys still verifies only with the public half.
    return key.public_key() if hasattr(key, "public_key") else key


def _key_fits(alg: str, jwk: jwt.PyJWK) -> bool:
    declared = jwk._jwk_data.get("alg")
    if declared is not None and declared != alg:
        return False
    if jwk.public_key_use not in (None, "sig"):
        return False
    return isinstance(_public(jwk.key), _FAMILIES[alg[:2]])


def verify_signature(token: str, alg: str, jwk: jwt.PyJWK) -> dict[str, Any]:
    """Check the signature with this public key (claims are checked by `check_claims`)."""
    if not _key_fits(alg, jwk):
        raise TokenRejected("unknown-key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key=_public(jwk.key),
            algorithms=[alg],
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise TokenRejected("signature") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise TokenRejected("malformed") from None
    return claims


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRejected("malformed")
    return float(value)


def check_claims(
    claims: dict[str, Any],
    *,
    issuer: str,
    audiences: Iterable[str],
    now: datetime,
    leeway: float,
    max_lifetime: float | None = None,
) -> None:
    """iss, aud, exp (required), nbf and iat against the service clock, with leeway."""
    if claims.get("iss") != issuer:
        raise TokenRejected("issuer")
    aud = claims.get("aud")
    presented = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if not presented or not set(audiences) & {a for a in presented if isinstance(a, str)}:
        raise TokenRejected("audience")
    t = now.timestamp()
    exp = _number(claims, "exp")
    if exp is None:
        raise TokenRejected("missing-claim")
    if exp <= t - leeway:
        raise TokenRejected("expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and nbf > t + leeway:
        raise TokenRejected("not-yet-valid")
    iat = _number(claims, "iat")
    if iat is not None and iat > t + leeway:
        raise TokenRejected("not-yet-valid")
    if max_lifetime is not None and exp > t + max_lifetime + leeway:
        raise TokenRejected("lifetime")


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """A claim by dotted path (`realm_access.roles`); None when absent."""
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


# -- keys -----------------------------------------------------------------------------------


def usable_keys(document: Any) -> dict[str, jwt.PyJWK]:
    """kid -> key for every asymmetric signing key of a JWKS document."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeysUnavailable()
    keys = [k for k in document["keys"] if isinstance(k, dict) and k.get("kty") != "oct"]
    try:
        parsed = jwt.PyJWKSet(keys)
    except jwt.PyJWTError:
        raise KeysUnavailable() from None
    return {k.key_id: k for k in parsed.keys if isinstance(k.key_id, str)}


Fetcher = Callable[[str, float], Any]


def fetch_jwks(url: str, timeout: float) -> Any:
    """The JWKS document at `url` (PyJWT's client: no redirects, a timeout)."""
    try:
        return jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout).fetch_data()
    except jwt.PyJWTError:
        raise KeysUnavailable() from None


@dataclass
class _Entry:
    keys: dict[str, jwt.PyJWK]
    fetched: float


class JwksCache:
    """Issuers' published keys, per URL, shared by the threads of a worker."""

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        min_refresh: float = 30.0,
        timeout: float = 2.0,
        fetch: Fetcher = fetch_jwks,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._timeout = timeout
        self._fetch = fetch
        self._now = monotonic
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def _load(self, url: str) -> _Entry:
        self.fetches += 1
        try:
            entry = _Entry(usable_keys(self._fetch(url, self._timeout)), self._now())
        except KeysUnavailable:
            log.warning("could not fetch the signing keys of an identity provider")
            raise
        self._entries[url] = entry
        return entry

    def key(self, url: str, kid: Any) -> jwt.PyJWK:
        if not isinstance(kid, str) or not 0 < len(kid) <= 200:
            raise TokenRejected("unknown-key")
        with self._lock:
            entry = self._entries.get(url)
            if entry is None or self._now() - entry.fetched >= self._ttl:
                try:
                    entry = self._load(url)
                except KeysUnavailable:
                    if entry is None:
                        raise
                    # Keep serving the keys we had while the issuer is unreachable.
            key = entry.keys.get(kid)
            if key is None and self._now() - entry.fetched >= self._min_refresh:
                # Perhaps the issuer rotated its keys: look again, at most this often.
                key = self._load(url).keys.get(kid)
        if key is None:
            raise TokenRejected("unknown-key")
        return key

    def static(self, document: Any, kid: Any) -> jwt.PyJWK:
        """A key of an inline JWKS (registered with a client)."""
        try:
            keys = usable_keys(document)
        except KeysUnavailable:
            raise TokenRejected("unknown-key") from None
        key = keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenRejected("unknown-key")
        return key

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
