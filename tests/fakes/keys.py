"""Transit stand-in."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from crypto import DecryptionError, NewDataKey, WrappedKey


class FakeKeys:
    """Transit stand-in: wraps a data key under a secret bound to its context."""

    mount = "transit"

    def __init__(self) -> None:
        self._secret = os.urandom(32)
        self._wrapped: dict[str, tuple[bytes, bytes]] = {}
        self.unwraps = 0
        self.throttle = False

    def new_data_key(self, *, tenant_id: str, context: bytes) -> NewDataKey:
        key = os.urandom(32)
        ct = "vault:v1:" + hashlib.sha256(key + context).hexdigest()
        self._wrapped[ct] = (key, context)
        return NewDataKey(plaintext=key, wrapped=WrappedKey(ct, 1))

    def unwrap(self, wrapped: WrappedKey, *, tenant_id: str, context: bytes) -> bytes:
        if self.throttle:
            from service.errors import KeyServiceThrottled

            raise KeyServiceThrottled()
        self.unwraps += 1
        key, ctx = self._wrapped.get(wrapped.ciphertext, (b"", b""))
        if ctx != context:
            raise DecryptionError()
        return key

    def blind_index(self, *, tenant_id: str, value: str) -> str:
        return hmac.new(self._secret, f"{tenant_id}:{value}".encode(), "sha256").hexdigest()

    def sign(self, message: bytes) -> str:
        return hmac.new(self._secret, message, "sha256").hexdigest()

    def verify(self, message: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(message), signature)

    def health(self) -> dict[str, Any]:
        return {"ok": True, "sealed": False}
