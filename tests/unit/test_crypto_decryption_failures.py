"""Unit tests for the pure crypto package: every decryption failure (wrong key, wrong AAD,
any flipped bit, truncation, unknown version, trailing bytes, wrong type) is the same opaque
DecryptionError, with a fixed message and no plaintext.

No network, no database, no Vault. Hypothesis is not installed in the venv, so
edge cases are enumerated with parametrize and exhaustive loops instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from crypto import CryptoError, DecryptionError, InvalidKey, key_context, note_aad, open_sealed
from crypto.aead import HEADER_SIZE, MIN_ENVELOPE_SIZE, TAG_SIZE
from tests.unit.crypto_helpers import (
    AAD,
    AAD_FIELDS,
    EXPECTED_MESSAGE,
    KEY,
    OTHER_KEY,
    _assert_opaque_failure,
    _envelope,
    _flip,
    _open_fails,
)


def test_wrong_key_fails() -> None:
    _open_fails(OTHER_KEY, _envelope(), AAD)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenant_id", "tenant-2"),
        ("patient_id", "patient-2"),
        ("note_id", "note-2"),
        ("version", 2),
    ],
)
def test_wrong_aad_field_fails(field: str, value: Any) -> None:
    changed = {**AAD_FIELDS, field: value}
    other_aad = note_aad(**changed)
    assert other_aad != AAD
    _open_fails(KEY, _envelope(), other_aad)


def test_aad_with_extra_byte_fails() -> None:
    _open_fails(KEY, _envelope(), AAD + b"\x00")


def test_key_context_is_not_a_valid_note_aad() -> None:
    context = key_context(tenant_id="tenant-1", patient_id="patient-1")
    _open_fails(KEY, _envelope(), context)


REGIONS: dict[str, Callable[[int], range]] = {
    "version": lambda n: range(0, 1),
    "nonce": lambda n: range(1, HEADER_SIZE),
    "ciphertext": lambda n: range(HEADER_SIZE, n - TAG_SIZE),
    "tag": lambda n: range(n - TAG_SIZE, n),
}


@pytest.mark.parametrize("region", list(REGIONS))
def test_flipped_bit_in_each_region_fails(region: str) -> None:
    envelope = _envelope()
    positions = REGIONS[region](len(envelope))
    assert len(positions) > 0
    for index, bit in itertools.product(positions, range(8)):
        tampered = _flip(envelope, index, bit)
        with pytest.raises(DecryptionError) as info:
            open_sealed(KEY, tampered, aad=AAD)
        _assert_opaque_failure(info.value)


def test_regions_cover_the_whole_envelope() -> None:
    envelope = _envelope()
    covered = sorted(i for r in REGIONS.values() for i in r(len(envelope)))
    assert covered == list(range(len(envelope)))


@pytest.mark.parametrize("length", range(MIN_ENVELOPE_SIZE + 1))
def test_truncated_envelope_up_to_minimum_size_fails(length: int) -> None:
    envelope = _envelope()
    assert length < len(envelope)
    _open_fails(KEY, envelope[:length], AAD)


def test_every_truncation_of_a_valid_envelope_fails() -> None:
    envelope = _envelope()
    for length in range(len(envelope)):
        _open_fails(KEY, envelope[:length], AAD)
        _open_fails(KEY, envelope[len(envelope) - length :], AAD)


@pytest.mark.parametrize("version", [0x00, 0x02, 0x7F, 0x80, 0xFF])
def test_unknown_version_byte_fails(version: int) -> None:
    envelope = _envelope()
    _open_fails(KEY, bytes([version]) + envelope[1:], AAD)


@pytest.mark.parametrize("extra", [b"\x00", b"\x01", b"\x00" * 16, b"trailing garbage"])
def test_appended_bytes_fail(extra: bytes) -> None:
    _open_fails(KEY, _envelope() + extra, AAD)


def test_non_bytes_envelope_fails_opaquely() -> None:
    envelope = _envelope()
    _open_fails(KEY, bytearray(envelope), AAD)  # type: ignore[arg-type]
    _open_fails(KEY, envelope.hex(), AAD)  # type: ignore[arg-type]


def test_all_failure_modes_raise_identical_errors() -> None:
    envelope = _envelope()
    cases = [
        (OTHER_KEY, envelope, AAD),
        (KEY, envelope, note_aad(**{**AAD_FIELDS, "patient_id": "patient-2"})),
        (KEY, _flip(envelope, 0, 0), AAD),
        (KEY, _flip(envelope, 5, 3), AAD),
        (KEY, _flip(envelope, HEADER_SIZE, 0), AAD),
        (KEY, _flip(envelope, len(envelope) - 1, 7), AAD),
        (KEY, envelope[:10], AAD),
        (KEY, envelope + b"\x00", AAD),
        (KEY, b"\x02" + envelope[1:], AAD),
    ]
    errors = [_open_fails(*case) for case in cases]
    assert {(type(e), str(e), e.args) for e in errors} == {
        (DecryptionError, EXPECTED_MESSAGE, (EXPECTED_MESSAGE,))
    }


def test_decryption_error_is_a_crypto_error_not_a_value_error() -> None:
    assert issubclass(DecryptionError, CryptoError)
    assert not issubclass(DecryptionError, ValueError)
    assert issubclass(InvalidKey, CryptoError)
