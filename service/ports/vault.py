"""Vault's side of the ports: Transit for the API workers, administration for ops.
The Vault adapter (service/adapters/vault/) implements them; tests/fakes/ the first."""

from __future__ import annotations

from typing import Any, Protocol

from crypto import NewDataKey, WrappedKey


class TransitKeys(Protocol):
    """What the API workers do with Transit (crypto.KeyWrapper and more)."""

    @property
    def mount(self) -> str: ...

    def new_data_key(self, *, tenant_id: str, context: bytes) -> NewDataKey: ...

    def unwrap(self, wrapped: WrappedKey, *, tenant_id: str, context: bytes) -> bytes: ...

    def blind_index(self, *, tenant_id: str, value: str) -> str: ...

    def sign(self, message: bytes) -> str: ...

    def verify(self, message: bytes, signature: str) -> bool: ...

    def health(self) -> dict[str, Any]: ...


class KeyAdministration(Protocol):
    """What operators do in Vault for tenants and rotation (never key material)."""

    @property
    def mount(self) -> str: ...

    def ensure_tenant_keys(self, tenant_id: str) -> None: ...

    def ensure_unwrap_quota(self, tenant_id: str, *, rate: int, interval: str) -> None: ...

    def dek_key_info(self, tenant_id: str) -> dict[str, Any]: ...

    def rotate_dek(self, tenant_id: str) -> int: ...

    def set_min_decryption_version(self, tenant_id: str, version: int) -> None: ...

    def rewrap_batch(
        self, tenant_id: str, items: list[tuple[str, bytes]]
    ) -> list[WrappedKey | None]: ...


class KeyService(TransitKeys, KeyAdministration, Protocol):
    """Both: the Vault adapter (service/adapters/vault/) is one object."""
