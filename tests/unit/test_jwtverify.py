"""Unit tests for JWT checks and the JWKS cache (no network: keys are made here)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest

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
from tests.oidc import ec_key, public_jwks, rsa_key, signed, unsigned

NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def claims(**over: Any) -> dict[str, Any]:
    base = {"iss": "https://idp", "aud": "notes", "sub": "u1", "exp": NOW.timestamp() + 60}
    return {**base, **over}


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "None", "", None, "RS1", "ES256K"])
def test_only_asymmetric_algorithms(alg: Any) -> None:
    with pytest.raises(TokenRejected) as e:
        check_algorithm({"alg": alg})
    assert e.value.reason == "algorithm"


def test_critical_headers_are_refused() -> None:
    with pytest.raises(TokenRejected):
        check_algorithm({"alg": "RS256", "crit": ["b64"]})


def test_peek_and_shape() -> None:
    token = unsigned(claims())
    assert looks_like_jwt(token) and peek(token).claims["sub"] == "u1"
    for bad in ("snt_abc", "a.b", "a.b.c.d", "x" * 20000, "e30.!!.x"):
        assert not looks_like_jwt(bad)
        with pytest.raises(TokenRejected):
            peek(bad)
    with pytest.raises(TokenRejected):
        peek("WyJ4Il0.e30.")  # header is a list, not an object


def test_signature_with_the_right_key_family_only() -> None:
    key = rsa_key()
    jwk = jwt.PyJWK(public_jwks(key, "k", "RS256")["keys"][0])
    token = signed(claims(), key, "RS256", "k")
    assert verify_signature(token, "RS256", jwk)["sub"] == "u1"
    with pytest.raises(TokenRejected) as e:
        verify_signature(signed(claims(), rsa_key(), "RS256", "k"), "RS256", jwk)
    assert e.value.reason == "signature"
    with pytest.raises(TokenRejected) as e:  # an ES token against an RSA key
        verify_signature(signed(claims(), ec_key(), "ES384", "k"), "ES384", jwk)
    assert e.value.reason == "unknown-key"


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"iss": "https://other"}, "issuer"),
        ({"aud": "another-app"}, "audience"),
        ({"aud": ["a", "b"]}, "audience"),
        ({"aud": None}, "audience"),
        ({"exp": None}, "missing-claim"),
        ({"exp": "tomorrow"}, "malformed"),
        ({"exp": True}, "malformed"),
        ({"exp": NOW.timestamp() - 31}, "expired"),
        ({"nbf": NOW.timestamp() + 31}, "not-yet-valid"),
        ({"iat": NOW.timestamp() + 31}, "not-yet-valid"),
    ],
)
def test_claims(over: dict[str, Any], reason: str) -> None:
    with pytest.raises(TokenRejected) as e:
        check_claims(claims(**over), issuer="https://idp", audiences=["notes"], now=NOW, leeway=30)
    assert e.value.reason == reason


def test_claims_within_leeway_and_audience_lists() -> None:
    ok = claims(exp=NOW.timestamp() - 29, nbf=NOW.timestamp() + 29, aud=["x", "notes"])
    check_claims(ok, issuer="https://idp", audiences=["notes"], now=NOW, leeway=30)
    with pytest.raises(TokenRejected) as e:
        check_claims(
            claims(exp=NOW.timestamp() + 3600),
            issuer="https://idp",
            audiences=["notes"],
            now=NOW,
            leeway=30,
            max_lifetime=300,
        )
    assert e.value.reason == "lifetime"


def test_claim_paths() -> None:
    c = {"realm_access": {"roles": ["doctor"]}, "sub": "x"}
    assert claim_at(c, "realm_access.roles") == ["doctor"]
    assert claim_at(c, "sub.deeper") is None and claim_at(c, "missing") is None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_jwks_cache_refetches_unknown_kids_at_most_every_interval() -> None:
    documents = [public_jwks(rsa_key(), "k1", "RS256")]
    calls: list[str] = []

    def fetch(url: str, timeout: float) -> Any:
        calls.append(url)
        return json.loads(json.dumps(documents[-1]))

    clock = Clock()
    cache = JwksCache(ttl=300, min_refresh=30, fetch=fetch, monotonic=clock)
    assert cache.key("u", "k1").key_id == "k1"
    assert cache.key("u", "k1") and len(calls) == 1  # cached
    documents.append(public_jwks(rsa_key(), "k2", "RS256"))  # the issuer rotates
    for _ in range(5):
        with pytest.raises(TokenRejected):
            cache.key("u", "k2")  # within 30 s of the last fetch: no refetch
    assert len(calls) == 1
    clock.t += 31
    assert cache.key("u", "k2").key_id == "k2" and len(calls) == 2
    clock.t += 301  # expired: refetched; an unreachable issuer keeps the old keys
    documents.append("not a jwks")  # type: ignore[arg-type]
    assert cache.key("u", "k2").key_id == "k2"
    fresh = JwksCache(fetch=fetch, monotonic=clock)
    with pytest.raises(KeysUnavailable):
        fresh.key("u", "k2")


def test_jwks_without_usable_keys_and_symmetric_keys() -> None:
    cache = JwksCache(fetch=lambda url, timeout: {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})
    with pytest.raises(KeysUnavailable):
        cache.key("u", "k")
    with pytest.raises(TokenRejected):
        cache.static({"keys": []}, "k")
