"""Unit tests for the pure crypto package, key-wrapper value types: a new data key is frozen
and its repr never shows the key bytes, only the (not secret) wrapped key."""

from __future__ import annotations

import base64

import pytest

from crypto import NewDataKey, WrappedKey
from tests.unit.crypto_helpers import KEY, OTHER_KEY


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
