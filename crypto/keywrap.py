"""The key-wrapper boundary: something (Vault Transit) that makes and unwraps data keys.

There is deliberately no local implementation in this package: a wrapped key is
useless without the key service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key encrypted by the key service, and the key version that wrapped it."""

    ciphertext: str
    key_version: int


@dataclass(frozen=True, slots=True)
class NewDataKey:
    plaintext: bytes
    wrapped: WrappedKey

    def __repr__(self) -> str:  # never print key material
        return f"NewDataKey(wrapped={self.wrapped!r})"


class KeyWrapper(Protocol):
    def new_data_key(self, *, tenant_id: str, context: bytes) -> NewDataKey: ...

    def unwrap(self, wrapped: WrappedKey, *, tenant_id: str, context: bytes) -> bytes: ...
