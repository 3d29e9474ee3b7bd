"""Shared samples and checks of the crypto unit tests (test_crypto_*.py): a canary plaintext,
keys, a note AAD, and the one opaque shape every decryption failure must have."""

from __future__ import annotations

from typing import Any

import pytest

from crypto import KEY_SIZE, DecryptionError, note_aad, open_sealed, seal

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
