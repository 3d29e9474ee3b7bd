"""What the API workers do with Transit: new data keys, one unwrap per request, the
blind index, audit-checkpoint signatures."""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import quote

from crypto import DecryptionError, NewDataKey, WrappedKey
from service.adapters.vault.client import VaultClient
from service.adapters.vault.names import (
    AUDIT_SIGNING_KEY,
    _b64,
    dek_key_name,
    index_key_name,
    parse_key_version,
)

log = logging.getLogger(__name__)


class TransitOperations(VaultClient):
    def new_data_key(self, *, tenant_id: str, context: bytes) -> NewDataKey:
        # Not sent twice: a second data key would be a creation Vault logs and the
        # database never records (audit reconcile would report it).
        data = self._transit(
            "datakey/plaintext",
            dek_key_name(tenant_id),
            {"context": _b64(context), "bits": 256},
            idempotent=False,
        )
        ciphertext = data["ciphertext"]
        return NewDataKey(
            plaintext=base64.b64decode(data["plaintext"]),
            wrapped=WrappedKey(ciphertext, parse_key_version(ciphertext)),
        )

    def unwrap(self, wrapped: WrappedKey, *, tenant_id: str, context: bytes) -> bytes:
        data = self._transit(
            "decrypt",
            dek_key_name(tenant_id),
            {"ciphertext": wrapped.ciphertext, "context": _b64(context)},
        )
        return base64.b64decode(data["plaintext"])

    def blind_index(self, *, tenant_id: str, value: str) -> str:
        # Transit HMACs with a per-version HMAC key; version 1 always, so lookups stay
        # stable (the index key is never rotated).
        data = self._transit(
            "hmac",
            index_key_name(tenant_id),
            {"input": _b64(value.encode("utf-8")), "key_version": 1, "algorithm": "sha2-256"},
        )
        return str(data["hmac"])

    def sign(self, message: bytes) -> str:
        """Sign with the audit ed25519 key; returns the Transit signature string."""
        data = self._transit("sign", AUDIT_SIGNING_KEY, {"input": _b64(message)})
        return str(data["signature"])

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            data = self._transit(
                "verify", AUDIT_SIGNING_KEY, {"input": _b64(message), "signature": signature}
            )
        except DecryptionError:  # malformed signature string: not valid
            return False
        return bool(data["valid"])

    def _transit(
        self, operation: str, key: str, payload: dict[str, Any], *, idempotent: bool = True
    ) -> dict[str, Any]:
        path = f"/v1/{quote(self.mount)}/{operation}/{quote(key, safe='')}"
        return dict(self._post(path, payload, idempotent=idempotent)["data"])
