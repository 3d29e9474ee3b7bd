"""Unit tests for the pure crypto package: envelope, AAD, errors, key-wrapper types.

No network, no database, no Vault. Hypothesis is not installed in the venv, so
edge cases are enumerated with parametrize and exhaustive loops instead.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from crypto import (
    KEY_SIZE,
    CryptoError,
    DecryptionError,
    InvalidKey,
    NewDataKey,
    WrappedKey,
    key_context,
    note_aad,
    open_sealed,
    seal,
)
from crypto.aead import HEADER_SIZE, MIN_ENVELOPE_SIZE, NONCE_SIZE, TAG_SIZE

# A distinctive plaintext, so that any leak of it into an error is easy to spot.
PLAINTEXT = b"porteuse sida; serait homosexuelle d'apres sa mere. CANARY-7f3a9c"
KEY = bytes(range(KEY_SIZE))
OTHER_KEY = bytes(reversed(range(KEY_SIZE)))
AAD_FIELDS: dict[str, Any] = {
    "tenant_id": "tenant-1",
    "patient_id": "patient-1",
    "note_id": "note-1",
    "version": 1,
}
AAD = note_aad(**AAD_FIELDS)
EXPECTED_MESSAGE = "decryption failed"


def _envelope() -> bytes:
    return seal(KEY, PLAINTEXT, aad=AAD)


def _assert_opaque_failure(exc: BaseException) -> None:
    """The one and only failure shape: exact type, fixed message, no plaintext."""
    assert type(exc) is DecryptionError
    assert str(exc) == EXPECTED_MESSAGE
    assert exc.args == (EXPECTED_MESSAGE,)
    for text in (str(exc), repr(exc), str(exc.__cause__), repr(exc.__cause__)):
        assert PLAINTEXT.decode() not in text
        assert "CANARY" not in text


def _open_fails(key: bytes, envelope: bytes, aad: bytes) -> DecryptionError:
    with pytest.raises(DecryptionError) as info:
        open_sealed(key, envelope, aad=aad)
    _assert_opaque_failure(info.value)
    return info.value


def _flip(data: bytes, index: int, bit: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


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


# -- every decryption failure is the same opaque DecryptionError -----------------------


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


# -- AAD and key-context encodings ------------------------------------------------------


def test_note_aad_is_deterministic() -> None:
    assert note_aad(**AAD_FIELDS) == note_aad(**AAD_FIELDS)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        # tenant / patient boundary
        (("ab", "c", "n", 1), ("a", "bc", "n", 1)),
        # patient / note boundary
        (("t", "ab", "c", 1), ("t", "a", "bc", 1)),
        # note / version boundary: "n1" + "1" vs "n" + "11"
        (("t", "p", "n1", 1), ("t", "p", "n", 11)),
        # empty fields shifted around
        (("", "ab", "n", 1), ("ab", "", "n", 1)),
        (("t", "", "pn", 1), ("t", "pn", "", 1)),
        # a field that looks like a length prefix
        (("a\x00\x00\x00\x01b", "c", "n", 1), ("a", "b\x00\x00\x00\x01c", "n", 1)),
    ],
)
def test_note_aad_tricky_splits_differ(
    left: tuple[str, str, str, int], right: tuple[str, str, str, int]
) -> None:
    def aad(fields: tuple[str, str, str, int]) -> bytes:
        tenant, patient, note, version = fields
        return note_aad(tenant_id=tenant, patient_id=patient, note_id=note, version=version)

    assert aad(left) != aad(right)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("ab", "c"), ("a", "bc")),
        (("", "abc"), ("abc", "")),
        (("a\x00\x00\x00\x01b", "c"), ("a", "b\x00\x00\x00\x01c")),
    ],
)
def test_key_context_tricky_splits_differ(left: tuple[str, str], right: tuple[str, str]) -> None:
    assert key_context(tenant_id=left[0], patient_id=left[1]) != key_context(
        tenant_id=right[0], patient_id=right[1]
    )


def _splits(text: str, parts: int) -> list[tuple[str, ...]]:
    """Every way to cut `text` into `parts` consecutive (possibly empty) pieces."""
    out = []
    for cuts in itertools.combinations_with_replacement(range(len(text) + 1), parts - 1):
        bounds = (0, *cuts, len(text))
        out.append(tuple(text[bounds[i] : bounds[i + 1]] for i in range(parts)))
    return out


SPLIT_SOURCES = ["abc1", "a\x00\x00\x00\x01b", "x:y|z", "\u00e9\u00e91"]


def test_note_aad_is_injective_over_every_split() -> None:
    seen: dict[bytes, tuple[str, str, str, int]] = {}
    for text in SPLIT_SOURCES:
        for tenant, patient, note in _splits(text, 3):
            for version in (1, 2, 11, 12, 112):
                fields = (tenant, patient, note, version)
                encoded = note_aad(
                    tenant_id=tenant, patient_id=patient, note_id=note, version=version
                )
                assert seen.setdefault(encoded, fields) == fields, (fields, seen[encoded])
    assert len(seen) > 100


def test_key_context_is_injective_over_every_split() -> None:
    seen: dict[bytes, tuple[str, str]] = {}
    for text in SPLIT_SOURCES:
        for tenant, patient in _splits(text, 2):
            encoded = key_context(tenant_id=tenant, patient_id=patient)
            assert seen.setdefault(encoded, (tenant, patient)) == (tenant, patient)
    assert len(seen) > 10


@pytest.mark.parametrize("version", [0, -1])
def test_note_aad_rejects_versions_below_one(version: int) -> None:
    with pytest.raises(ValueError):
        note_aad(tenant_id="t", patient_id="p", note_id="n", version=version)


def test_note_aad_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        note_aad("t", "p", "n", 1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        key_context("t", "p")  # type: ignore[call-arg]


# -- key-wrapper value types --------------------------------------------------------------


def test_new_data_key_repr_does_not_contain_key_bytes() -> None:
    key = b"K" * 16 + bytes(range(200, 216))
    wrapped = WrappedKey(ciphertext="vault:v1:d3JhcHBlZA==", key_version=1)
    dk = NewDataKey(plaintext=key, wrapped=wrapped)
    for text in (repr(dk), str(dk), f"{dk}", f"{dk!r}"):
        assert "KKKKKKKK" not in text
        assert repr(key) not in text
        assert repr(key)[2:-1] not in text
        assert key.hex() not in text
        assert base64.b64encode(key).decode() not in text
        assert "plaintext" not in text
        # the repr still identifies the wrapped key, which is not secret
        assert "vault:v1:d3JhcHBlZA==" in text


def test_new_data_key_is_frozen() -> None:
    dk = NewDataKey(plaintext=KEY, wrapped=WrappedKey("vault:v1:x", 1))
    with pytest.raises(AttributeError):
        dk.plaintext = OTHER_KEY  # type: ignore[misc]
