"""Unit tests for service.adapters.vault.parse_key_version (pure string parsing, no Vault)."""

from __future__ import annotations

import pytest

from crypto import DecryptionError
from service.adapters.vault import parse_key_version


@pytest.mark.parametrize(
    ("ciphertext", "expected"),
    [
        ("vault:v1:abc", 1),
        ("vault:v3:abc", 3),
        ("vault:v12:QUJDRA==", 12),
        ("vault:v4:with:colons:in:body", 4),
    ],
)
def test_parse_key_version(ciphertext: str, expected: int) -> None:
    assert parse_key_version(ciphertext) == expected


@pytest.mark.parametrize(
    "ciphertext",
    [
        "",
        "vault",
        "vault:",
        "vault:v3",
        "vault::abc",
        "vault:v:abc",
        "vault:3:abc",
        "vault:vx:abc",
        "vault:v3.0:abc",
        "Vault:v3:abc",
        "bao:v3:abc",
        "abc",
        ":v3:abc",
    ],
)
def test_malformed_ciphertext_raises_decryption_error(ciphertext: str) -> None:
    with pytest.raises(DecryptionError) as info:
        parse_key_version(ciphertext)
    assert type(info.value) is DecryptionError
    assert str(info.value) == "decryption failed"


@pytest.mark.parametrize(
    "ciphertext",
    [
        "vault:v0:abc",  # Transit key versions start at 1
        "vault:v-1:abc",
        "vault:v+3:abc",
        "vault:v 3:abc",
        "vault:v3 :abc",
        "vault:v3_0:abc",  # int() accepts digit-group underscores: parsed as 30
        "vault:v\u0663:abc",  # ARABIC-INDIC DIGIT THREE: int() parses it as 3
        "vault:v3:",  # no ciphertext body
    ],
)
def test_non_canonical_version_raises_decryption_error(ciphertext: str) -> None:
    # Vault only ever emits "vault:v<N>:<base64>" with N >= 1 in ASCII digits; anything
    # else is malformed and must not be silently coerced into a key version.
    with pytest.raises(DecryptionError):
        parse_key_version(ciphertext)
