"""Unit tests for the pure crypto package, sealing and opening: XChaCha20-Poly1305 sizes,
the envelope (version, nonce, ciphertext, tag) round trip with fresh nonces, an AAD that is
required, keyword-only and non-empty, and keys of exactly 32 bytes that never show in errors.

No network, no database, no Vault. Hypothesis is not installed in the venv, so
edge cases are enumerated with parametrize and exhaustive loops instead.
"""

from __future__ import annotations

from typing import Any

import pytest

from crypto import KEY_SIZE, InvalidKey, open_sealed, seal
from crypto.aead import HEADER_SIZE, MIN_ENVELOPE_SIZE, NONCE_SIZE, TAG_SIZE
from tests.unit.crypto_helpers import AAD, KEY, PLAINTEXT, _envelope

# -- sizes and constants --------------------------------------------------------------


def test_constants_match_xchacha20poly1305() -> None:
    assert KEY_SIZE == 32
    assert NONCE_SIZE == 24
    assert TAG_SIZE == 16
    assert HEADER_SIZE == 1 + 24
    assert MIN_ENVELOPE_SIZE == 1 + 24 + 16


# -- round trip -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 2048, 65_536])
def test_round_trip(size: int) -> None:
    plaintext = bytes((i * 7 + 3) % 256 for i in range(size))
    envelope = seal(KEY, plaintext, aad=AAD)
    assert open_sealed(KEY, envelope, aad=AAD) == plaintext


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 2048, 65_536])
def test_envelope_length_is_version_nonce_ciphertext_tag(size: int) -> None:
    envelope = seal(KEY, b"x" * size, aad=AAD)
    assert len(envelope) == 1 + 24 + size + 16


def test_envelope_starts_with_version_one() -> None:
    assert _envelope()[0] == 0x01


def test_empty_plaintext_envelope_has_exactly_the_minimum_size_and_opens() -> None:
    envelope = seal(KEY, b"", aad=AAD)
    assert len(envelope) == MIN_ENVELOPE_SIZE
    assert open_sealed(KEY, envelope, aad=AAD) == b""


def test_ciphertext_does_not_contain_plaintext() -> None:
    envelope = _envelope()
    assert PLAINTEXT not in envelope
    assert b"CANARY" not in envelope


def test_nonces_differ_between_two_seals_of_the_same_plaintext() -> None:
    first = _envelope()
    second = _envelope()
    assert first[1:HEADER_SIZE] != second[1:HEADER_SIZE]
    assert first != second
    # both still open to the same plaintext
    assert open_sealed(KEY, first, aad=AAD) == open_sealed(KEY, second, aad=AAD) == PLAINTEXT


def test_nonces_are_unique_over_many_seals() -> None:
    nonces = {seal(KEY, PLAINTEXT, aad=AAD)[1:HEADER_SIZE] for _ in range(500)}
    assert len(nonces) == 500


# -- AAD is required, keyword-only and non-empty ---------------------------------------


def test_seal_without_aad_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        seal(KEY, PLAINTEXT)  # type: ignore[call-arg]


def test_open_sealed_without_aad_is_a_type_error() -> None:
    envelope = _envelope()
    with pytest.raises(TypeError):
        open_sealed(KEY, envelope)  # type: ignore[call-arg]


def test_seal_aad_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        seal(KEY, PLAINTEXT, AAD)  # type: ignore[call-arg]


def test_open_sealed_aad_is_keyword_only() -> None:
    envelope = _envelope()
    with pytest.raises(TypeError):
        open_sealed(KEY, envelope, AAD)  # type: ignore[call-arg]


@pytest.mark.parametrize("bad_aad", [b"", None, "tenant-1"], ids=["empty", "none", "str"])
def test_seal_rejects_empty_or_non_bytes_aad(bad_aad: Any) -> None:
    with pytest.raises(ValueError):
        seal(KEY, PLAINTEXT, aad=bad_aad)


@pytest.mark.parametrize("bad_aad", [b"", None, "tenant-1"], ids=["empty", "none", "str"])
def test_open_sealed_rejects_empty_or_non_bytes_aad(bad_aad: Any) -> None:
    envelope = _envelope()
    with pytest.raises(ValueError):
        open_sealed(KEY, envelope, aad=bad_aad)


# -- key length ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 16, 31, 33, 64])
def test_seal_rejects_wrong_key_length(length: int) -> None:
    with pytest.raises(InvalidKey):
        seal(b"k" * length, PLAINTEXT, aad=AAD)


@pytest.mark.parametrize("length", [0, 1, 16, 31, 33, 64])
def test_open_sealed_rejects_wrong_key_length(length: int) -> None:
    envelope = _envelope()
    with pytest.raises(InvalidKey):
        open_sealed(b"k" * length, envelope, aad=AAD)


@pytest.mark.parametrize("key", [bytearray(KEY), KEY.hex()[:32], None], ids=repr)
def test_rejects_non_bytes_key(key: Any) -> None:
    with pytest.raises(InvalidKey):
        seal(key, PLAINTEXT, aad=AAD)
    with pytest.raises(InvalidKey):
        open_sealed(key, _envelope(), aad=AAD)


def test_invalid_key_message_does_not_contain_key() -> None:
    bad_key = b"S3CRETKEY" * 3
    with pytest.raises(InvalidKey) as info:
        seal(bad_key, PLAINTEXT, aad=AAD)
    assert "S3CRETKEY" not in str(info.value)
    assert "S3CRETKEY" not in repr(info.value)
