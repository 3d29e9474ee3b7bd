"""Unit tests for bearer-token parsing, hashing and generation (no database)."""

from __future__ import annotations

import hashlib
import re

import pytest

from service.access.authentication import (
    MAX_TOKEN_LENGTH,
    TOKEN_PREFIX,
    hash_token,
    new_token,
    parse_bearer,
)
from service.errors import Unauthorized

# -- parse_bearer ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_parse_bearer_accepts_bearer_scheme_case_insensitively(scheme: str) -> None:
    assert parse_bearer(f"{scheme} snt_abc123") == "snt_abc123"


def test_parse_bearer_strips_surrounding_whitespace_from_the_token() -> None:
    assert parse_bearer("Bearer   snt_abc  ") == "snt_abc"


def test_parse_bearer_accepts_a_token_of_the_maximum_length() -> None:
    token = "t" * MAX_TOKEN_LENGTH
    assert parse_bearer(f"Bearer {token}") == token


def test_parse_bearer_accepts_a_freshly_issued_token() -> None:
    token = new_token()
    assert parse_bearer(f"Bearer {token}") == token


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "snt_abc123",
        "Bearersnt_abc123",
        "Basic dXNlcjpwYXNz",
        "Token snt_abc123",
        "Digest snt_abc123",
        " Bearer snt_abc123",
        "Bearer\tsnt_abc123",
        "Bearer " + "t" * (MAX_TOKEN_LENGTH + 1),
        "Bearer " + "t" * 10_000,
    ],
    ids=lambda h: "none" if h is None else repr(h)[:40],
)
def test_parse_bearer_rejects_malformed_headers(header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        parse_bearer(header)
    assert info.value.status == 401
    assert "WWW-Authenticate" in info.value.headers


def test_rejection_does_not_echo_the_presented_token() -> None:
    secret = "snt_DO-NOT-ECHO-" + "x" * MAX_TOKEN_LENGTH
    with pytest.raises(Unauthorized) as info:
        parse_bearer(f"Bearer {secret}")
    assert "DO-NOT-ECHO" not in str(info.value)
    assert "DO-NOT-ECHO" not in info.value.detail
    with pytest.raises(Unauthorized) as info:
        parse_bearer("Basic DO-NOT-ECHO")
    assert "DO-NOT-ECHO" not in str(info.value)


# -- hash_token ---------------------------------------------------------------------------------


def test_hash_token_is_sha256_known_answer() -> None:
    # FIPS 180-2 test vector for SHA-256("abc")
    assert hash_token("abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_hash_token_is_sha256_of_utf8() -> None:
    token = "snt_\u00e9t\u00e9"
    digest = hash_token(token)
    assert digest == hashlib.sha256(token.encode("utf-8")).digest()
    assert isinstance(digest, bytes)
    assert len(digest) == 32


def test_hash_token_differs_between_tokens_and_does_not_contain_the_token() -> None:
    a, b = new_token(), new_token()
    assert hash_token(a) != hash_token(b)
    assert a.encode() not in hash_token(a)
    assert hash_token(a) == hash_token(a)


# -- new_token ----------------------------------------------------------------------------------


def test_new_token_is_prefixed() -> None:
    assert TOKEN_PREFIX == "snt_"
    assert new_token().startswith("snt_")


def test_new_token_carries_at_least_256_bits_of_urlsafe_randomness() -> None:
    token = new_token()
    body = token[len(TOKEN_PREFIX) :]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", body)
    # 32 random bytes in unpadded base64url are 43 characters
    assert len(body) >= 43
    assert len(token) <= MAX_TOKEN_LENGTH


def test_new_tokens_are_unique() -> None:
    tokens = [new_token() for _ in range(2000)]
    assert len(set(tokens)) == len(tokens)
    assert len({hash_token(t) for t in tokens}) == len(tokens)
